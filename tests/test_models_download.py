"""Downloads from a real loopback server that behaves like the Hugging Face hub, with faults."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub, make_gguf

from llcuda.errors import (
    ChecksumError,
    DownloadError,
    InvalidModelError,
    ModelNotFoundError,
    OfflineModeError,
)
from llcuda.models import cache, resolve_model
from llcuda.models.registry import ModelEntry, Source
from llcuda.models.resolve import pull, resolve_entry

REPO = "owner/model-GGUF"
FILE = "model-Q4_K_M.gguf"
SPEC = f"hf://{REPO}/{FILE}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "LLCUDA_OFFLINE",
        "HF_HUB_OFFLINE",
        "LLCUDA_PYPI_INDEX",
        "PIP_INDEX_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the machine's user
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def hub(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


@pytest.fixture
def model_bytes(tmp_path: Path) -> bytes:
    return make_gguf(tmp_path / "src.gguf", tensor_bytes=3 << 20).read_bytes()


def _leftovers(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and (p.suffix == ".incomplete" or p.name.endswith(".gguf"))]


def test_download_then_cache_hit(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    model = resolve_model(SPEC)
    assert model.downloaded and model.source == "hf" and model.sha256 == sha
    assert model.path == home / "models" / "hf" / "owner" / "model-GGUF" / FILE
    assert model.path.read_bytes() == model_bytes
    assert model.info.architecture == "llama" and model.name == "model-Q4_K_M"
    assert cache.read_meta(model.path)["origin"] == SPEC
    seen = len(hub.log)
    again = resolve_model(f"{REPO}:{FILE}")  # the same file, spelled the other way
    assert again.path == model.path and not again.downloaded and again.sha256 == sha
    assert len(hub.log) == seen, "a cached model must not touch the network"
    assert [p.name for p in home.rglob("*.incomplete")] == []


def test_resume_with_range_after_a_dropped_connection(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.fault(sha, "drop", after=1_300_000)
    hub.fault(sha, "drop", after=700_000)
    model = resolve_model(SPEC)
    assert model.path.read_bytes() == model_bytes
    gets = hub.requests_for(f"/cdn/{sha}", "GET")
    assert len(gets) == 3
    ranges = [h.get("Range") for _, _, h in gets]
    assert ranges[0] is None
    first, second = (int(r.split("=")[1].rstrip("-")) for r in ranges[1:])
    assert 0 < first <= 1_300_000 and first < second <= first + 700_000
    assert all("Authorization" not in h for _, _, h in gets)


def test_restart_when_the_server_ignores_range(hub: FakeHub, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.set_sticky(sha, "no_range")
    hub.fault(sha, "drop", after=1_000_000)
    model = resolve_model(SPEC)
    assert model.path.read_bytes() == model_bytes
    gets = hub.requests_for(f"/cdn/{sha}", "GET")
    assert len(gets) == 2 and gets[1][2].get("Range")  # asked to resume, got 200 and started over


def test_wrong_bytes_are_never_kept(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.fault(sha, "corrupt")
    with pytest.raises(ChecksumError, match=f"expected .* sha256 {sha}") as exc:
        resolve_model(SPEC)
    assert "deleted" in str(exc.value)
    assert _leftovers(home) == []


def test_corruption_after_a_resume_gets_one_clean_retry(hub: FakeHub, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.fault(sha, "drop", after=500_000)
    hub.fault(sha, "corrupt", at=10)  # the resumed tail is bad
    model = resolve_model(SPEC)
    assert model.path.read_bytes() == model_bytes
    assert [h.get("Range") for _, _, h in hub.requests_for(f"/cdn/{sha}", "GET")][-1] is None


@pytest.mark.parametrize("codes", [[429], [503, 502], [500, 504, 408]])
def test_transient_statuses_are_retried(hub: FakeHub, model_bytes: bytes, codes: list[int]) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    for code in codes:
        hub.fault(sha, "status", code=code, retry_after=0)
    assert resolve_model(SPEC).path.read_bytes() == model_bytes
    assert len(hub.requests_for(f"/cdn/{sha}", "GET")) == len(codes) + 1


def test_persistent_failure_keeps_the_partial_file_for_a_later_resume(
    hub: FakeHub, home: Path, model_bytes: bytes
) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.fault(sha, "drop", after=600_000)
    for _ in range(6):
        hub.fault(sha, "status", code=503, retry_after=0)
    with pytest.raises(DownloadError, match="failed after .* attempts .*HTTP 503.*kept: run again to resume"):
        resolve_model(SPEC)
    assert not (home / "models" / "hf" / "owner" / "model-GGUF" / FILE).exists()
    partial = list(home.rglob("*.incomplete"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept < len(model_bytes)
    model = resolve_model(SPEC)  # the next run resumes where the last one stopped
    assert model.path.read_bytes() == model_bytes
    assert hub.requests_for(f"/cdn/{sha}", "GET")[-1][2]["Range"] == f"bytes={kept}-"
    assert list(home.rglob("*.incomplete")) == []


def test_hub_errors_are_clear(hub: FakeHub, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_file(REPO, FILE, model_bytes)
    hub.add_file("org/gated", FILE, model_bytes, gated=True)
    with pytest.raises(ModelNotFoundError, match=f"File 'other.gguf' is not in {REPO}.*tree/main"):
        resolve_model(f"hf://{REPO}/other.gguf")
    with pytest.raises(ModelNotFoundError, match="Repository nobody/nothing was not found"):
        resolve_model("nobody/nothing:x.gguf")
    with pytest.raises(ModelNotFoundError, match="Revision 'v9' does not exist"):
        resolve_model(f"hf://{REPO}@v9/{FILE}")
    with pytest.raises(DownloadError, match="gated repository.*HF_TOKEN"):
        resolve_model(f"hf://org/gated/{FILE}")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(DownloadError, match="gated"):
        resolve_model(f"hf://org/gated/{FILE}")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    model = resolve_model(f"hf://org/gated/{FILE}")
    assert model.path.read_bytes() == model_bytes
    hub_requests = [h for m, p, h in hub.log if "/org/gated/resolve/" in p]
    cdn_requests = [h for m, p, h in hub.log if p.startswith("/cdn/")]
    assert hub_requests[-1]["Authorization"] == f"Bearer {hub.token}"
    assert cdn_requests and all("Authorization" not in h for h in cdn_requests), "token leaked to the CDN host"


def test_not_a_gguf_on_the_hub(hub: FakeHub, home: Path) -> None:
    hub.add_file(REPO, FILE, b"<html>this is not a model</html>" * 1000)
    with pytest.raises(InvalidModelError, match=f"{SPEC} is not a usable model.*not a GGUF file"):
        resolve_model(SPEC)
    assert _leftovers(home) == []


def test_small_non_lfs_file_and_renamed_repo(hub: FakeHub, tmp_path: Path) -> None:
    small = make_gguf(tmp_path / "s.gguf", tensor_bytes=4096).read_bytes()
    hub.add_file("new/name", "tiny.gguf", small, lfs=False)
    hub.rename_repo("old/name", "new/name")
    model = resolve_model("hf://old/name/tiny.gguf")
    assert model.path.read_bytes() == small and model.sha256 == hashlib.sha256(small).hexdigest()


def test_offline_mode(hub: FakeHub, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_file(REPO, FILE, model_bytes)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineModeError, match="not in the model cache.*offline mode is on"):
        resolve_model(SPEC)
    assert hub.log == []
    assert resolve_model(SPEC, offline=False).downloaded
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    count = len(hub.log)
    assert resolve_model(SPEC).path.read_bytes() == model_bytes  # cached: fine offline
    assert len(hub.log) == count
    with pytest.raises(OfflineModeError):
        resolve_model("gemma-3-1b-Q4_K_M")


def test_no_network_at_all_fails_clearly(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("llcuda.models.download.BACKOFF_BASE_S", 0.0)
    with pytest.raises(DownloadError, match="Could not reach 127.0.0.1.*connection.*LLCUDA_OFFLINE"):
        resolve_model(SPEC)


def test_unresolvable_host_fails_at_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # .invalid never resolves (RFC 2606)
    with pytest.raises(DownloadError, match="Could not reach hub.invalid .*cannot resolve the host name"):
        resolve_model(SPEC)
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    with pytest.raises(OfflineModeError, match="offline mode is on"):
        pull(SPEC)


def test_registry_entry_pins_are_enforced_before_downloading(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    good = ModelEntry("site-model", (Source("hf", REPO, FILE),), sha256=sha, size=len(model_bytes))
    model = resolve_entry(good)
    assert model.path == home / "models" / "site-model.gguf" and model.name == "site-model"
    stale = ModelEntry("stale-model", (Source("hf", REPO, FILE),), sha256="0" * 64)
    with pytest.raises(ChecksumError, match="upstream file changed"):
        resolve_entry(stale)
    wrong_size = ModelEntry("sized-model", (Source("hf", REPO, FILE),), size=len(model_bytes) + 1)
    with pytest.raises(ChecksumError, match="upstream file changed"):
        resolve_entry(wrong_size)
    assert len(hub.requests_for("/cdn/", "GET")) == 1, "pins must be checked before any bytes are fetched"


def test_sources_are_tried_in_order(hub: FakeHub, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    entry = ModelEntry("two-sources", (Source("hf", "gone/repo", FILE), Source("hf", REPO, FILE)), sha256=sha)
    assert resolve_entry(entry).origin == SPEC
    nowhere = ModelEntry("no-sources", (Source("hf", "gone/repo", FILE), Source("hf", "gone/other", FILE)))
    with pytest.raises(ModelNotFoundError, match=r"any of its sources:\n  - hf://gone/repo/.*\n  - hf://gone/other"):
        resolve_entry(nowhere)


def test_plain_urls(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    url = f"{hub.cdn}/{sha}"
    assert resolve_model(url).path.read_bytes() == model_bytes  # the ETag carries the sha256
    with pytest.raises(ChecksumError):
        resolve_model(f"{url}?again=1#sha256={'1' * 64}")
    assert _leftovers(home) == [resolve_model(url, offline=True).path]
    link = f"{hub.endpoint}/{REPO}/blob/main/{FILE}"  # a pasted web link is treated as the hub file
    assert resolve_model(link).origin == SPEC


def test_force_pull_replaces_atomically(hub: FakeHub, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    first = pull(SPEC)
    hub.fault(sha, "corrupt")
    with pytest.raises(ChecksumError):
        pull(SPEC, force=True)
    assert first.path.read_bytes() == model_bytes, "a failed re-download must leave the good copy alone"
    assert pull(SPEC, force=True).downloaded


def test_progress_bar_only_when_asked_or_on_a_terminal(
    hub: FakeHub, model_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_file(REPO, FILE, model_bytes)
    hub.add_file(REPO, "two.gguf", model_bytes)
    resolve_model(SPEC)  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    resolve_model(f"hf://{REPO}/two.gguf", progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and "two.gguf" in err and err.endswith("\n")


def test_two_processes_never_download_the_same_file_twice(hub: FakeHub, home: Path, model_bytes: bytes) -> None:
    sha = hub.add_file(REPO, FILE, model_bytes)
    hub.set_sticky(sha, "slow")
    code = textwrap.dedent(f"""
        from llcuda.models import resolve_model
        m = resolve_model({SPEC!r})
        print(m.path, m.sha256, m.downloaded)
    """)
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    lines = [out.split() for out, _ in outputs]
    assert {line[0] for line in lines} == {str(home / "models" / "hf" / "owner" / "model-GGUF" / FILE)}
    assert {line[1] for line in lines} == {sha}
    assert sorted(line[2] for line in lines) == ["False", "False", "True"]
    assert len(hub.requests_for(f"/cdn/{sha}", "GET")) == 1
    assert Path(lines[0][0]).read_bytes() == model_bytes


def test_split_model_from_the_hub(hub: FakeHub, home: Path, tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    first = make_gguf(tmp_path / "split" / "big.gguf", split=True, n_tensors=3, tensor_bytes=1 << 20)
    for part in sorted(first.parent.iterdir()):
        hub.add_file(REPO, f"q4/{part.name}", part.read_bytes())
    with pytest.raises(ModelNotFoundError, match="one part of a split model; ask for the first part"):
        resolve_model(f"hf://{REPO}/q4/big-00002-of-00003.gguf")
    model = resolve_model(f"hf://{REPO}/q4/{first.name}")
    folder = home / "models" / "hf" / "owner" / "model-GGUF" / "q4"
    assert model.path == folder / first.name
    assert sorted(p.name for p in folder.glob("*.gguf")) == sorted(p.name for p in first.parent.iterdir())
    for part in first.parent.iterdir():
        assert (folder / part.name).read_bytes() == part.read_bytes()
    [listed] = cache.cached_models()
    assert listed.path == model.path and listed.size == sum(p.stat().st_size for p in first.parent.iterdir())
    cache.remove(model.path)
    assert not folder.exists()
