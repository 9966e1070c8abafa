"""The browser chat page: where its built files are, and the page shown when there are none.

The page is llama.cpp's own web UI (``tools/ui`` of the pinned tree, a Svelte app), built by
``recipe/build-binaries.sh`` with ``LLCUDA_UI=ON`` into plain static files beside the binaries::

    <prefix>/
    ├── bin/llama-server
    ├── lib/...
    └── share/llcuda/ui/
        ├── index.html          the single page; it calls the API of the server that serves it
        ├── bundle.<hash>.js    (and .css, fonts, icons, manifest.webmanifest, sw.js, build.json, _app/)
        └── ...

The prefix is the parent of the found binaries' ``bin/`` (a venv, a conda environment, the wheel's
``llcuda/binaries``). The page finds its API on the same origin, relative to its own URL, so it
needs no configuration; serve the folder at the server's root.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llcuda.system.binaries import Binaries

UI_SUBDIR = Path("share") / "llcuda" / "ui"
INDEX = "index.html"


def find_ui_dir(binaries: Binaries) -> Path | None:
    """The folder holding the built chat page of ``binaries``' prefix, or None where none was built.

    Looks in ``<prefix>/share/llcuda/ui``, the prefix being the folder above ``binaries.bin_dir``;
    the folder counts only when its ``index.html`` exists. Never builds or downloads anything.
    """
    folder = binaries.bin_dir.parent / UI_SUBDIR
    return folder if (folder / INDEX).is_file() else None


def fallback_page(searched: Path | None = None) -> str:
    """A short HTML page saying that the chat page was not built, and how to get it.

    ``searched``, when given, is named as the folder where the page was looked for.
    The API itself works without the page; the text says so.
    """
    where = f"<p>It was looked for in <code>{html.escape(str(searched))}</code>.</p>\n" if searched else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llcuda: chat page not installed</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 3rem auto; padding: 0 1rem;
line-height: 1.5 }} code, pre {{ background: #f3f3f3; padding: 0.1rem 0.3rem }}</style>
</head>
<body>
<h1>The chat page is not installed</h1>
<p>This server answers the OpenAI-compatible API (<code>/v1/chat/completions</code>,
<code>/v1/models</code>), but its binaries were built without the browser chat page.</p>
{where}<p>To get the page, use binaries built with it:</p>
<ul>
<li>the conda package: <code>conda install -c conda-forge llcuda</code>
(or <code>pixi add llcuda</code>);</li>
<li>the pip wheel: <code>pip install llcuda</code>;</li>
<li>in a source checkout, build it (needs Node.js 20.19 or newer and npm):
<pre>LLCUDA_UI=ON ./scripts/setup.sh</pre></li>
</ul>
</body>
</html>
"""
