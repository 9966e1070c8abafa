"""Hugging Face conventions on a real loopback hub: owner/repo:QUANT, hf.co/ prefixes, revisions,
split files, the token from HF_TOKEN or the token file."""

from __future__ import annotations

import doctest
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import COMMIT, FakeHub, make_gguf

from llcuda import config
from llcuda.cli.models import cache_summary
from llcuda.errors import ModelNotFoundError, OfflineModeError
from llcuda.models import cache, cached_path, hub, resolve_model
from llcuda.models.hub import HubFile, HubQuery, match_file, parse_hf, quant_label

REPO = "org/Qwen3-0.6B-GGUF"
FILES = ["Qwen3-0.6B-Q4_K_M.gguf", "Qwen3-0.6B-Q8_0.gguf", "Qwen3-0.6B-BF16.gguf"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "LLCUDA_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the machine's user
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture
def server(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def _publish(
    server: FakeHub, tmp_path: Path, repo: str = REPO, files: list[str] = FILES, **kw: object
) -> dict[str, bytes]:
    """Distinct small GGUFs under ``files`` (plus a README and a projector); returns name -> bytes."""
    made = {}
    for i, name in enumerate(files):
        data = make_gguf(tmp_path / f"src-{i}.gguf", tensor_bytes=32 << 10, seed=i).read_bytes()
        server.add_file(repo, name, data, **kw)
        made[name] = data
    server.add_file(repo, "README.md", b"# model card", lfs=False, **kw)
    server.add_file(repo, "mmproj-Qwen3-Q4_K_M.gguf", b"not the model", **kw)
    return made


def _api_calls(server: FakeHub) -> list[str]:
    return [p for m, p, _ in server.log if p.startswith("/api/")]


def test_spec_forms() -> None:
    assert parse_hf("owner/repo:Q4_K_M") == HubQuery("owner/repo", "Q4_K_M")
    assert parse_hf("owner/repo@v2:q8_0") == HubQuery("owner/repo", "q8_0", "v2")
    assert parse_hf("owner/repo") == HubQuery("owner/repo")
    assert parse_hf("owner/repo@v2") == HubQuery("owner/repo", None, "v2")
    assert parse_hf("owner/repo:sub/m-Q4_K_M.gguf") == HubFile("owner/repo", "sub/m-Q4_K_M.gguf")
    assert parse_hf("owner/repo/m.gguf") == HubFile("owner/repo", "m.gguf")
    assert hub.strip_prefix("hf.co/owner/repo:Q4_K_M") == "owner/repo:Q4_K_M"
    assert hub.strip_prefix("HF://owner/repo") == "owner/repo"
    assert hub.strip_prefix("huggingface.co/owner/repo") == "owner/repo"
    assert hub.strip_prefix("owner/repo") is None
    assert HubQuery("owner/repo", "Q4_K_M", "v2").spec == "hf://owner/repo@v2:Q4_K_M"
    with pytest.raises(ModelNotFoundError, match="not a .gguf file.*owner/repo:Q4_K_M"):
        parse_hf("owner/repo/Q4_K_M")
    with pytest.raises(ModelNotFoundError, match="neither a .gguf file nor a quantization"):
        parse_hf("owner/repo:Q4 K M")
    failures, _ = doctest.testmod(hub)
    assert failures == 0


def test_quantization_matching_rules() -> None:
    names = [
        "m-Q4_K_M.gguf",
        "m-Q4_K_S.gguf",
        "m-Q4_K.gguf",
        "m-IQ4_XS.gguf",
        "sub/m-Q8_0.gguf",
        "mmproj-m-F16.gguf",
        "m-f16.gguf",
    ]
    assert match_file(names, "q4_k") == "m-Q4_K.gguf"  # not m-Q4_K_M / m-Q4_K_S
    assert match_file(names, "Q4_K_M") == "m-Q4_K_M.gguf"
    assert match_file(names, "XS") is None  # a part of a quantization name is not one
    assert match_file(names, "Q4_XS") is None
    assert match_file(names, "F16") == "m-f16.gguf"  # the projector is never the model
    assert match_file(names, "q8_0") == "sub/m-Q8_0.gguf"
    assert match_file(["a/m-Q8_0.gguf", "m-Q8_0.gguf"], "Q8_0") == "m-Q8_0.gguf"  # top level first
    assert match_file(["m-Q8_0-imat.gguf", "m-Q8_0.gguf"], "Q8_0") == "m-Q8_0.gguf"  # ends with it first
    split = ["Q4_K_M/m-00002-of-00002.gguf", "Q4_K_M/m-00001-of-00002.gguf"]
    assert match_file(split, "Q4_K_M") == "Q4_K_M/m-00001-of-00002.gguf"
    labels = ("a/Qwen3-0.6B-q4_k_m.gguf", "UD-Q4_K_XL/m-UD-Q4_K_XL-00001-of-00002.gguf", "m-BF16.gguf", "model.gguf")
    assert [quant_label(n) for n in labels] == ["Q4_K_M", "Q4_K_XL", "BF16", "model.gguf"]


def test_quantization_from_the_file_list(server: FakeHub, home: Path, tmp_path: Path) -> None:
    made = _publish(server, tmp_path)
    model = resolve_model(f"{REPO}:q4_k_m")
    assert model.path == home / "hf" / "org" / "Qwen3-0.6B-GGUF" / "Qwen3-0.6B-Q4_K_M.gguf"
    assert model.path.read_bytes() == made["Qwen3-0.6B-Q4_K_M.gguf"]
    assert model.downloaded and model.origin == f"hf://{REPO}/Qwen3-0.6B-Q4_K_M.gguf"
    assert _api_calls(server) == [f"/api/models/{REPO}/revision/main"]
    assert not server.requests_for("mmproj") and not server.requests_for("README")
    seen = len(server.log)
    again = resolve_model(f"hf.co/{REPO}:Q4_K_M")  # cached: no request at all
    assert again.path == model.path and not again.downloaded and len(server.log) == seen
    assert resolve_model(REPO).path == model.path, "no quantization: Q4_K_M"
    assert resolve_model(f"hf://{REPO}").path == model.path and len(server.log) == seen
    q8 = resolve_model(f"hf.co/{REPO}:Q8_0")
    assert q8.path.name == "Qwen3-0.6B-Q8_0.gguf" and q8.path.read_bytes() == made["Qwen3-0.6B-Q8_0.gguf"]
    bf16 = resolve_model(f"huggingface.co/{REPO}:bf16")
    assert bf16.path.read_bytes() == made["Qwen3-0.6B-BF16.gguf"]
    assert resolve_model(f"{REPO}:Qwen3-0.6B-Q8_0.gguf").path == q8.path, "a tail ending in .gguf is a path"
    assert sorted(m.name for m in cache.cached_models()) == sorted(f"hf://{REPO}/{f}" for f in FILES)


def test_no_match_lists_the_quantizations_there(server: FakeHub, home: Path, tmp_path: Path) -> None:
    _publish(server, tmp_path)
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model(f"{REPO}:Q5_K_M")
    assert str(exc.value) == (
        f"{REPO} has no Q5_K_M file. Quantizations there: BF16, Q4_K_M, Q8_0. Name one, e.g. {REPO}:BF16."
    )
    with pytest.raises(ModelNotFoundError, match="has no Q4_K file"):
        resolve_model(f"{REPO}:Q4_K")  # Q4_K_M is another quantization
    _publish(server, tmp_path, "org/no-q4", ["m-Q8_0.gguf", "m-F16.gguf"])
    with pytest.raises(
        ModelNotFoundError,
        match=r"org/no-q4 has no Q4_K_M file \(the default\)\. Quantizations "
        r"there: F16, Q8_0\. Name one, e.g\. org/no-q4:F16",
    ):
        resolve_model("org/no-q4")
    _publish(server, tmp_path, "org/one", ["only-Q6_K.gguf"])
    assert resolve_model("hf.co/org/one").path.name == "only-Q6_K.gguf", "a repository's only model"
    server.add_file("org/safetensors", "model.safetensors", b"weights")
    with pytest.raises(ModelNotFoundError, match="org/safetensors holds no GGUF model file"):
        resolve_model("org/safetensors:Q4_K_M")
    downloaded = sorted(p.relative_to(home).as_posix() for p in home.rglob("*.gguf"))
    assert downloaded == ["hf/org/one/only-Q6_K.gguf"]


def test_split_quantization_downloads_every_part(server: FakeHub, home: Path, tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    first = make_gguf(tmp_path / "split" / "Big-Q4_K_M.gguf", split=True, n_tensors=3, tensor_bytes=96 << 10)
    parts = sorted(first.parent.iterdir())
    for part in parts:
        server.add_file("org/big", f"Q4_K_M/{part.name}", part.read_bytes())
    q8 = make_gguf(tmp_path / "q8.gguf", tensor_bytes=8192)
    server.add_file("org/big", "Big-Q8_0.gguf", q8.read_bytes())
    model = resolve_model("org/big:Q4_K_M")
    folder = home / "hf" / "org" / "big" / "Q4_K_M"
    assert model.path == folder / "Big-Q4_K_M-00001-of-00003.gguf"
    assert sorted(p.name for p in folder.glob("*.gguf")) == [p.name for p in parts]
    for part in parts:
        assert (folder / part.name).read_bytes() == part.read_bytes()
    seen = len(server.log)
    assert resolve_model("hf.co/org/big:q4_k_m").path == model.path and len(server.log) == seen
    [listed] = [m for m in cache.cached_models() if "Q4_K_M" in m.name]
    assert listed.size == sum(p.stat().st_size for p in parts)
    # a listing that lacks a part is refused before anything is fetched
    for part in parts[:2]:
        server.add_file("org/broken", part.name, part.read_bytes())
    with pytest.raises(ModelNotFoundError, match="part 1 of a 3-part model, but Big-Q4_K_M-00003-of-00003"):
        resolve_model("org/broken:Q4_K_M")
    assert not server.requests_for("/org/broken/resolve/")


def test_revisions(server: FakeHub, home: Path, tmp_path: Path) -> None:
    main = _publish(server, tmp_path, "org/rev", ["m-Q4_K_M.gguf"])
    old = make_gguf(tmp_path / "old.gguf", tensor_bytes=16384, seed=42).read_bytes()
    server.add_file("org/rev", "m-Q4_K_M.gguf", old, revision="v1")
    pinned = resolve_model("org/rev@v1:Q4_K_M")
    assert pinned.path == home / "hf" / "org" / "rev@v1" / "m-Q4_K_M.gguf" and pinned.path.read_bytes() == old
    assert pinned.origin == "hf://org/rev@v1/m-Q4_K_M.gguf"
    assert "/api/models/org/rev/revision/v1" in _api_calls(server)
    assert resolve_model("hf.co/org/rev:Q4_K_M").path.read_bytes() == main["m-Q4_K_M.gguf"]
    with pytest.raises(ModelNotFoundError, match="Revision 'v9' does not exist in org/rev"):
        resolve_model("org/rev@v9:Q4_K_M")
    server.rename_repo("org/old-name", "org/rev")  # the hub redirects a renamed repository's requests
    renamed = resolve_model("org/old-name:Q4_K_M")
    assert renamed.path.read_bytes() == main["m-Q4_K_M.gguf"] and renamed.path.parent.name == "old-name"


def test_unknown_repositories(server: FakeHub, home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="Repository nobody/nothing was not found.*set HF_TOKEN"):
        resolve_model("nobody/nothing:Q4_K_M")
    with pytest.raises(ModelNotFoundError, match="If nobody/nothing is a local file, it does not exist"):
        resolve_model("nobody/nothing")
    with pytest.raises(ModelNotFoundError, match="does not exist. Check the path"):
        resolve_model("nobody/nothing.gguf")


def test_offline_uses_cached_quantizations_only(
    server: FakeHub, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(server, tmp_path)
    assert cached_path(f"{REPO}:Q4_K_M") is None and server.log == []
    path = resolve_model(f"{REPO}:Q4_K_M").path
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    seen = len(server.log)
    assert resolve_model(f"hf.co/{REPO}:q4_k_m").path == path
    assert resolve_model(REPO).path == path
    assert cached_path(f"{REPO}:Q4_K_M") == path and cached_path(f"{REPO}:Q8_0") is None
    with pytest.raises(OfflineModeError, match="finding its file needs the network while offline mode is on"):
        resolve_model(f"{REPO}:Q8_0")
    assert len(server.log) == seen


# -- the token ------------------------------------------------------------------------------------
def test_token_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert config.hf_token_path() == tmp_path / "user" / ".cache" / "huggingface" / "token"
    assert config.hf_token() is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    token_file = tmp_path / "xdg" / "huggingface" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text("hf_from_file\n")
    assert config.hf_home() == tmp_path / "xdg" / "huggingface" and config.hf_token() == "hf_from_file"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert config.hf_token() is None
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "token").write_text("  \n")
    assert config.hf_token() is None, "an empty token file is no token"
    (tmp_path / "elsewhere" / "token").write_text("hf_home_token")
    assert config.hf_token() == "hf_home_token"
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert config.hf_token() == "hf_from_file"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert config.hf_token() == "hf_from_env", "the variable wins over the file"


def test_private_repository_with_the_token_file(
    server: FakeHub, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    made = _publish(server, tmp_path, "me/private", ["p-Q4_K_M.gguf"], private=True)
    with pytest.raises(ModelNotFoundError, match="me/private was not found.*private, set HF_TOKEN or log in"):
        resolve_model("me/private:Q4_K_M")
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(server.token + "\n")
    model = resolve_model("me/private:Q4_K_M")
    assert model.path.read_bytes() == made["p-Q4_K_M.gguf"]
    to_hub = [h for _, p, h in server.log if p.startswith(("/api/models/me/private", "/me/private/resolve/"))]
    assert to_hub and to_hub[-1]["Authorization"] == f"Bearer {server.token}"
    listings = [h.get("Authorization") for _, p, h in server.log if "/revision/" in p]
    assert listings[-1] == f"Bearer {server.token}"
    cdn = [h for _, p, h in server.log if p.startswith("/cdn/")]
    assert cdn and all("Authorization" not in h for h in cdn), "the token must not go to the CDN host"
    summary = cache_summary()
    assert summary["hf_token_set"] is True and server.token not in json.dumps(summary)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")  # the variable wins over the file
    with pytest.raises(ModelNotFoundError, match=r"The token \(HF_TOKEN or .*\) was not accepted") as exc:
        resolve_model("me/private:Q8_0")
    assert "hf_wrong" not in str(exc.value)
    assert server.token not in caplog.text and "hf_wrong" not in caplog.text


def test_the_chosen_file_and_commit_are_logged(
    server: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(server, tmp_path, "org/logged", ["l-Q4_K_M.gguf"])
    caplog.set_level(logging.INFO, logger="llcuda.models")
    resolve_model("org/logged:Q4_K_M")
    assert f"hf://org/logged:Q4_K_M is l-Q4_K_M.gguf (commit {COMMIT})" in caplog.text
