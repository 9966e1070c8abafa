"""recipe/patches: llcuda's changes to llama.cpp apply, are compiled in, and do what they say."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import requests

import llama_source
from llcuda.server import LlamaServer
from llcuda.types import ServerSettings

# Three prompts that share nothing but the BOS token, so prompt-similarity selection never applies.
PROMPTS = [
    "Quantum chromodynamics describes the strong interaction between quarks and gluons inside hadrons",
    "Seven hungry otters raced along the frozen riverbank looking for a warm place to sleep tonight",
    "The recipe calls for two cups of flour, a pinch of salt and three spoonfuls of honey in total",
]


def completion(url: str, prompt: str, n_predict: int = 4) -> dict:
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "ignore_eos": True, "cache_prompt": True}
    response = requests.post(f"{url}/completion", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def four_slot_server(binaries, tiny_model: Path, isolated_home: Path):
    server = LlamaServer(ServerSettings(model_path=tiny_model, ctx_size=2048, n_parallel=4, threads=1),
                         binaries=binaries)
    url = server.start()
    yield url
    server.stop()


def test_sequential_requests_reuse_the_lowest_idle_slot(four_slot_server: str) -> None:
    # Stock llama-server (least recently used) hands out slots 3, 2, 1 here; patched: always 0.
    slots = [completion(four_slot_server, prompt)["id_slot"] for prompt in PROMPTS]
    assert slots == [0, 0, 0]


def test_overlapping_requests_take_consecutive_slots(four_slot_server: str) -> None:
    results: dict[str, dict] = {}

    def long_request() -> None:
        results["long"] = completion(four_slot_server, PROMPTS[0], n_predict=400)

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        # Wait until the long request occupies a slot, then send a short one beside it.
        for _ in range(200):
            slots = requests.get(f"{four_slot_server}/slots", timeout=10).json()
            if any(slot.get("is_processing") for slot in slots):
                break
            threading.Event().wait(0.01)
        short = completion(four_slot_server, PROMPTS[1])
    finally:
        worker.join()
    assert results["long"]["id_slot"] == 0
    assert short["id_slot"] == 1, "a request beside a busy slot 0 takes slot 1, keeping busy ids consecutive"
    assert completion(four_slot_server, PROMPTS[2])["id_slot"] == 0, "once both are idle, slot 0 again"


def test_every_patch_applies_to_the_pinned_tree_and_is_in_the_build(llama_src: Path, tmp_path: Path) -> None:
    patches = llama_source.patch_files()
    assert patches and all(p.name[:4].isdigit() for p in patches), "patches are numbered NNNN-name.patch"
    # The cached tree carries them (its marker names the patch set) ...
    assert (llama_src / ".llcuda-source").read_text().strip().endswith(f"patches:{llama_source.patch_set_id()}")
    # ... and a pristine copy of the patched file takes them cleanly, once and only once.
    target = tmp_path / "tree" / "tools" / "server"
    target.mkdir(parents=True)
    patched = llama_src / "tools" / "server" / "server-context.cpp"
    assert "idle slot with the lowest id" in patched.read_text()
    original = tmp_path / "orig.cpp"
    reverse = llama_source.subprocess.run(
        ["patch", "-R", "-p2", "-o", str(original), "-i", str(patches[0]), str(patched)],
        cwd=llama_src, capture_output=True, text=True, check=False)
    if reverse.returncode != 0 or shutil.which("patch") is None:
        pytest.fail(f"cannot reverse {patches[0].name} on the cached tree: {reverse.stdout}{reverse.stderr}")
    shutil.copy(original, target / "server-context.cpp")
    llama_source.apply_patches(tmp_path / "tree", patches[:1])
    assert (target / "server-context.cpp").read_text() == patched.read_text()
    with pytest.raises(SystemExit, match="does not apply"):
        llama_source.apply_patches(tmp_path / "tree", patches[:1])  # already applied: refused, named


def test_patch_set_changes_the_build_key(tmp_path: Path) -> None:
    one = tmp_path / "0001-a.patch"
    one.write_text("--- a/x\n+++ b/x\n")
    first = llama_source.patch_set_id([one])
    one.write_text("--- a/x\n+++ b/x\n@@\n")
    assert llama_source.patch_set_id([one]) != first
    assert llama_source.patch_set_id([]) == "none"
