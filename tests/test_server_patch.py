"""recipe/patches: llcuda's changes to llama.cpp apply, are compiled in, and do what they say."""

from __future__ import annotations

import shutil
import subprocess
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


def touched_files(patch: Path) -> list[str]:
    """Paths a patch changes, inside the llama.cpp tree (its ``+++ b/llama.cpp/<path>`` lines)."""
    return [line.split("\t")[0][len("+++ b/llama.cpp/"):] for line in patch.read_text().splitlines()
            if line.startswith("+++ b/llama.cpp/")]


@pytest.mark.parametrize("patch", llama_source.patch_files(), ids=lambda p: p.name[:4])
def test_every_patch_applies_to_the_pinned_tree_once(llama_src: Path, tmp_path: Path, patch: Path) -> None:
    assert patch.name[:4].isdigit(), "patches are numbered NNNN-name.patch"
    # The cached tree carries the whole set (its marker names it) ...
    assert (llama_src / ".llcuda-source").read_text().strip().endswith(f"patches:{llama_source.patch_set_id()}")
    files = touched_files(patch)
    assert files, f"{patch.name} changes no file under llama.cpp/"
    # ... and a pristine copy of the files it touches (the patch reversed) takes it cleanly, once only.
    tree = tmp_path / "tree"
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(llama_src / name, tree / name)
    reverse = subprocess.run(["patch", "-R", "-p2", "--batch", "-d", str(tree), "-i", str(patch)],
                             capture_output=True, text=True, check=False)
    assert reverse.returncode == 0, f"cannot reverse {patch.name} on the cached tree: {reverse.stdout}{reverse.stderr}"
    assert all((tree / n).read_text() != (llama_src / n).read_text() for n in files)
    llama_source.apply_patches(tree, [patch])
    assert all((tree / n).read_text() == (llama_src / n).read_text() for n in files)
    with pytest.raises(SystemExit, match="does not apply"):
        llama_source.apply_patches(tree, [patch])  # already applied: refused, named


def test_patch_set_changes_the_build_key(tmp_path: Path) -> None:
    one = tmp_path / "0001-a.patch"
    one.write_text("--- a/x\n+++ b/x\n")
    first = llama_source.patch_set_id([one])
    one.write_text("--- a/x\n+++ b/x\n@@\n")
    assert llama_source.patch_set_id([one]) != first
    assert llama_source.patch_set_id([]) == "none"
