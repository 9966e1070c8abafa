"""Security: loopback by default, API keys end to end, no shell, no cache escape, HTTPS, no leaked secrets.

The servers are the real llama-server on 127.0.0.1; downloads go to the loopback fake hub of
``hub_server.py``. No test opens a port on a non-loopback address.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fault_server import FaultServer, Reply
from hub_server import FakeHub, make_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llcuda import ConfigError, InferenceError, LlcudaError
from llcuda.engine import InferenceEngine
from llcuda.models import cache, hub, resolve_model
from llcuda.processes import process as process_module
from llcuda.processes.llama_server import LlamaServer, ServerSettings

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = "llcuda-test-key-7f3a9c"
SECRET_TOKEN = "hf_llcudaTestToken9d2e71"


# -- servers bind 127.0.0.1 -------------------------------------------------------------------------
def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_servers_listen_on_loopback_only_by_default(tiny_engine):
    assert ServerSettings(model_path=Path("m.gguf")).host == "127.0.0.1"
    assert tiny_engine.server.settings.host == "127.0.0.1"
    assert _listeners(tiny_engine.server.port) == {"0100007F"}, "llama-server must listen on 127.0.0.1 only"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "gpu-box.example.com", ""])
def test_non_loopback_bind_without_a_key_is_refused(binaries, tmp_path, host):
    with pytest.raises(ConfigError, match="API key"):
        LlamaServer(ServerSettings(model_path=tmp_path / "m.gguf", host=host), binaries=binaries)
    # Explicitly allowed, or protected by a key: accepted (validated only; nothing is started).
    LlamaServer(ServerSettings(model_path=tmp_path / "m.gguf", host=host, api_key=SECRET_KEY), binaries=binaries)
    LlamaServer(
        ServerSettings(model_path=tmp_path / "m.gguf", host=host, allow_unauthenticated=True),
        binaries=binaries,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_key(binaries, tmp_path, host):
    LlamaServer(ServerSettings(model_path=tmp_path / "m.gguf", host=host), binaries=binaries)


def test_load_model_refuses_a_public_bind_before_starting_anything(binaries, tiny_model, isolated_home):
    engine = InferenceEngine(binaries=binaries)
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        engine.load_model(tiny_model, host="0.0.0.0")
    assert not engine.is_loaded and engine.server is None


def test_cli_serve_refuses_every_public_host_without_a_key(tiny_model, isolated_home):
    env = dict(os.environ, LLCUDA_HOME=str(isolated_home))
    env.pop("LLCUDA_API_KEY", None)
    for host in ("::", "192.168.1.20"):
        done = subprocess.run(
            [sys.executable, "-m", "llcuda", "serve", "-m", str(tiny_model), "--host", host],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1 and "--api-key" in done.stderr and "--allow-unauthenticated" in done.stderr


# -- API keys end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_engine(binaries, tiny_model, isolated_home):
    engine = InferenceEngine(api_key=SECRET_KEY, binaries=binaries)
    engine.load_model(tiny_model, ctx_size=512, n_parallel=1, threads=1)
    yield engine
    engine.unload()


def test_api_key_is_required_and_used(keyed_engine):
    url = keyed_engine.url
    body = {"prompt": "x", "n_predict": 1}
    with requests.Session() as raw:
        raw.trust_env = False
        assert raw.post(f"{url}/completion", json=body, timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert raw.post(f"{url}/completion", json=body, headers=wrong, timeout=30).status_code == 401
        assert raw.get(f"{url}/health", timeout=30).status_code == 200  # the readiness probe stays public
        right = {"Authorization": f"Bearer {SECRET_KEY}"}
        assert raw.post(f"{url}/completion", json=body, headers=right, timeout=30).status_code == 200
    assert keyed_engine.infer("with the key", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2
    for other in (InferenceEngine(server_url=url), InferenceEngine(server_url=url, api_key="wrong")):
        with pytest.raises(InferenceError, match="check the API key") as info:
            other.infer("no key", max_tokens=2)
        assert info.value.status_code == 401


def test_api_key_from_the_environment(keyed_engine, monkeypatch):
    monkeypatch.setenv("LLCUDA_API_KEY", SECRET_KEY)
    assert InferenceEngine(server_url=keyed_engine.url).infer("env", max_tokens=1).text is not None


def test_api_key_never_shows(keyed_engine, caplog):
    pid = keyed_engine.server.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert SECRET_KEY.encode() not in cmdline, "argv is world-readable (ps, /proc/PID/cmdline)"
    environ = Path(f"/proc/{pid}/environ")
    assert SECRET_KEY.encode() in environ.read_bytes(), "the key reaches llama-server through its environment"
    assert environ.stat().st_mode & 0o077 == 0, "a process environment is readable by its owner only"
    with caplog.at_level(logging.DEBUG):
        engine = InferenceEngine(api_key=SECRET_KEY, binaries=keyed_engine.server.binaries)
        engine.load_model(keyed_engine.model_path, ctx_size=256, n_parallel=1, threads=1)
        try:
            engine.infer("log me", max_tokens=1)
            shown = [
                repr(engine),
                repr(engine.server),
                repr(engine.server.settings),
                str(engine.server.log_path),
            ]
            server_log = engine.server.log_path.read_text(errors="replace")
        finally:
            engine.unload()
    assert "command: " in caplog.text, "the debug log of the command line must have been captured"
    assert SECRET_KEY not in caplog.text
    assert all(SECRET_KEY not in text for text in shown)
    assert SECRET_KEY not in server_log


def test_cli_serve_with_a_key_never_prints_it(tiny_model, isolated_home):
    port = process_module.free_port()
    env = dict(os.environ, LLCUDA_HOME=str(isolated_home))
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llcuda",
            "-v",
            "serve",
            "-m",
            str(tiny_model),
            "--port",
            str(port),
            "--ctx-size",
            "256",
            "-np",
            "1",
            "--api-key",
            SECRET_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        banner = cli.stdout.readline()
        assert f":{port}" in banner
        with requests.Session() as raw:
            raw.trust_env = False
            assert raw.post(f"http://127.0.0.1:{port}/completion", json={"prompt": "x"}, timeout=30).status_code == 401
        os.kill(cli.pid, signal.SIGTERM)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert SECRET_KEY not in banner + out + err
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()


def test_web_pages_of_other_origins_cannot_read_answers(tiny_engine):
    """llama-server's default echoes any Origin with credentials; llcuda allows only localhost pages."""
    url = f"{tiny_engine.url}/completion"
    body = {"prompt": "x", "n_predict": 1}
    with requests.Session() as raw:
        raw.trust_env = False
        evil = raw.post(url, json=body, headers={"Origin": "https://evil.example"}, timeout=30)
        local = raw.post(url, json=body, headers={"Origin": "http://localhost:5173"}, timeout=30)
        preflight = raw.options(
            url,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
    assert evil.headers.get("Access-Control-Allow-Origin") in (None, "")
    assert preflight.headers.get("Access-Control-Allow-Origin") in (None, "")
    assert local.headers.get("Access-Control-Allow-Origin") == "http://localhost:5173"


# -- no shell -------------------------------------------------------------------------------------------
_SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"),
}


def shell_uses(source: str, filename: str = "<source>") -> list[str]:
    """Calls that run a shell: any call with ``shell=<not False>``, os.system, os.popen & co."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{filename}:{node.lineno}: shell={ast.unparse(kw.value)}")
        func = node.func
        attribute = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        if attribute and (func.value.id, func.attr) in _SHELL_CALLS:
            found.append(f"{filename}:{node.lineno}: {func.value.id}.{func.attr}")
        if isinstance(func, ast.Name) and func.id in {"system", "popen", "getoutput", "getstatusoutput"}:
            found.append(f"{filename}:{node.lineno}: {func.id}")
    return found


def test_the_shell_scanner_finds_what_it_looks_for():
    bad = (
        "import os, subprocess\nsubprocess.run('ls', shell=True)\nsubprocess.Popen(['x'], shell=flag)\n"
        "os.system('ls')\nos.popen('ls')\nsubprocess.getoutput('ls')\nfrom os import system\nsystem('x')\n"
    )
    assert len(shell_uses(bad)) == 6
    assert shell_uses("import subprocess\nsubprocess.run(['ls'], shell=False, check=True)\n") == []


def test_no_shell_anywhere_in_the_package():
    files = sorted((REPO / "llcuda").rglob("*.py"))
    assert len(files) > 10
    problems = [p for f in files for p in shell_uses(f.read_text(), str(f.relative_to(REPO)))]
    assert problems == [], "llcuda must start processes with argument lists only"


# -- model names cannot escape the cache -------------------------------------------------------------
HOSTILE_SPECS = [
    "hf://owner/repo/../../../../evil.gguf",
    "hf://owner/repo/sub/../../evil.gguf",
    "hf://../../repo/evil.gguf",
    "hf://owner/..@main/evil.gguf",
    "owner/repo:../../evil.gguf",
    "owner/repo@..:evil.gguf",
    "hf://owner/repo//evil.gguf",
    "hf://owner/repo/%2e%2e/%2e%2e/evil.gguf",
    "https://example.com/../../../evil.gguf",
    "https://example.com/a/..%2f..%2f..%2fevil.gguf",
    "pypi:evil==1.0/../../../evil.gguf",
    "pypi:../evil==1.0",
    "../evil",
    "..",
]


def _inside(path: Path, root: Path) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(root) + os.sep)  # lexical: what a name can do


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_hostile_model_names_never_reach_outside_the_cache(spec, tmp_path, monkeypatch):
    home = tmp_path / "a" / "b" / "c" / "d" / "home"  # six levels up is still tmp_path
    monkeypatch.setenv("LLCUDA_HOME", str(home))
    root = cache.root()
    for depth in range(6):  # a valid model wherever an escape could land
        target = root.joinpath(*[".."] * depth) / "evil.gguf"
        target.parent.mkdir(parents=True, exist_ok=True)
        make_gguf(target, tensor_bytes=4096)
    try:
        model = resolve_model(spec, offline=True)
    except LlcudaError:
        return
    assert _inside(model.path, root), f"{spec!r} resolved to {model.path}, outside the cache {root}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    owner=st.text(min_size=1, max_size=12),
    repo=st.text(min_size=1, max_size=12),
    revision=st.text(min_size=1, max_size=12),
    file=st.text(min_size=1, max_size=40),
    project=st.text(max_size=12),
    version=st.text(max_size=12),
)
def test_cache_paths_stay_inside_the_cache(owner, repo, revision, file, project, version, isolated_home):
    root = cache.root()
    spec = f"{owner}/{repo}@{revision}/{file}.gguf"
    try:
        hf = hub.parse_hf(spec)
        path = cache.hf_path(hf.repo, hf.revision, hf.file)
    except LlcudaError:
        path = None
    if path is not None:
        assert _inside(path, root), (spec, path)
    assert _inside(cache.url_path(f"https://h/{file}"), root)
    assert _inside(cache.pypi_path(project or "p", version or "1", f"{file}.gguf"), root)


# -- downloads use HTTPS ------------------------------------------------------------------------------
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "LLCUDA_OFFLINE",
        "HF_HUB_OFFLINE",
        "LLCUDA_PYPI_INDEX",
        "PIP_INDEX_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    with FakeHub(token=SECRET_TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.mark.parametrize(
    "url", ["http://example.com/model.gguf", "HTTP://Example.COM/m.gguf", "http://192.168.1.20:8000/m.gguf"]
)
def test_plain_http_downloads_are_refused(fake_hub, url):
    with pytest.raises(LlcudaError, match="HTTPS") as info:
        resolve_model(url)
    assert "mirror" in str(info.value)
    assert fake_hub.log == []


def test_plain_http_mirror_is_allowed_when_set_explicitly(fake_hub, tmp_path):
    """HF_ENDPOINT=http://127.0.0.1:PORT (a local mirror, set by the user) works over plain HTTP."""
    data = make_gguf(tmp_path / "m.gguf", tensor_bytes=4096).read_bytes()
    fake_hub.add_file("owner/repo", "m.gguf", data)
    assert resolve_model("hf://owner/repo/m.gguf").path.read_bytes() == data


def test_a_redirect_to_plain_http_is_not_followed(fake_hub):
    with FaultServer() as mirror:  # a loopback "mirror" whose file redirects to a plain-HTTP host
        mirror.push("/m.gguf", Reply(302, headers={"Location": "http://cdn.example.invalid/m.gguf"}))
        with pytest.raises(LlcudaError, match="HTTPS only"):
            resolve_model(f"{mirror.url}/m.gguf", progress=False)
        assert mirror.count("/m.gguf") == 1


def test_url_policy(monkeypatch):
    from llcuda.models.download import DownloadError, check_url

    for var in ("HF_ENDPOINT", "LLCUDA_PYPI_INDEX", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    check_url("https://huggingface.co/x/y/resolve/main/m.gguf")
    check_url("http://127.0.0.1:9/x")  # loopback
    check_url("http://localhost:1234/cdn/abc")
    refused = [
        "http://mirror.lan:8080/x",
        "http://cdn.example.com/abc",
        "ftp://example.com/m.gguf",
        "file:///etc/passwd",
        "//example.com/m.gguf",
    ]
    for url in refused:
        with pytest.raises(DownloadError, match="HTTPS only"):
            check_url(url)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.lan:8080")  # the user names a plain-HTTP mirror
    check_url("http://mirror.lan:8080/x")
    with pytest.raises(DownloadError):
        check_url("http://other.lan/x")
    monkeypatch.setenv("LLCUDA_PYPI_INDEX", "http://pypi.lan/simple")
    check_url("http://pypi.lan/packages/m.whl")


# -- HF_TOKEN never appears in logs, errors or doctor -------------------------------------------------
def test_hf_token_never_appears_in_logs_or_errors(fake_hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", SECRET_TOKEN)
    data = make_gguf(tmp_path / "m.gguf", tensor_bytes=4096).read_bytes()
    fake_hub.add_file("gated/repo", "m.gguf", data, gated=True)
    fake_hub.add_file("gated/repo", "other.gguf", data, gated=True)
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        assert resolve_model("hf://gated/repo/m.gguf", progress=False).path.read_bytes() == data
        for spec in (
            "hf://gated/repo/missing.gguf",
            "hf://nobody/nothing/m.gguf",
            "hf://gated/repo@v9/m.gguf",
        ):
            with pytest.raises(LlcudaError) as info:
                resolve_model(spec, progress=False)
            errors.append(f"{info.value!s} {info.value!r}")
        monkeypatch.setenv("HF_TOKEN", SECRET_TOKEN + "x")  # a wrong token: the gated repo refuses it
        with pytest.raises(LlcudaError, match="gated") as info:
            resolve_model("hf://gated/repo/other.gguf", progress=False)
        errors.append(f"{info.value!s} {info.value!r}")
    sent = [h.get("Authorization") for _, _, h in fake_hub.requests_for("/gated/repo/")]
    assert f"Bearer {SECRET_TOKEN}" in sent, "the test must exercise a request that carried the token"
    assert SECRET_TOKEN not in caplog.text
    assert all(SECRET_TOKEN not in e for e in errors), errors


def test_hf_token_never_appears_in_doctor_or_cli_output(fake_hub, tmp_path):
    env = dict(
        os.environ,
        HF_TOKEN=SECRET_TOKEN,
        HF_ENDPOINT=fake_hub.endpoint,
        LLCUDA_HOME=str(tmp_path / "cli-home"),
    )
    runs = []
    for args in (
        ["doctor", "--json"],
        ["doctor"],
        ["-v", "models", "pull", "hf://gated/none/m.gguf"],
        ["-v", "infer", "x", "-m", "hf://gated/none/m.gguf"],
    ):
        runs.append(
            subprocess.run(
                [sys.executable, "-m", "llcuda", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
        )
    report = json.loads(runs[0].stdout)
    assert report["cache"]["hf_token_set"] is True, "doctor says a token is set without showing it"
    assert all(SECRET_TOKEN not in done.stdout + done.stderr for done in runs)
    for done in runs[2:]:
        assert done.returncode == 1 and "gated/none" in done.stderr, "the failures must have been reported"
    assert fake_hub.requests_for("/gated/none/"), "the CLI must have asked the hub (with the token)"
