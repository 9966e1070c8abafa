#!/usr/bin/env python3
"""Take the docs' picture of the browser chat page: docs/assets/webui.png.

    .venv/bin/python scripts/screenshot_webui.py [--out FILE] [--question TEXT]

Builds the chat page if it is not cached (scripts/build_binaries.py --ui-only; Node.js and npm),
starts llama-server on loopback with SmolLM2-135M-Instruct serving that page, asks one question in
headless Chromium (tests/browser.py; Debian's chromium and chromium-driver) and saves the window once
the streamed answer is complete. Prints the PNG's path and size.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import browser  # noqa: E402  (tests/browser.py, the browser tests' helper)

log = logging.getLogger("screenshot_webui")
QUESTION = "What is the capital of France? Answer in one short sentence."


def build_ui() -> Path:
    """The built chat page's folder (cached by scripts/build_binaries.py)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_binaries.py"), "--ui-only"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(done.stdout.strip().splitlines()[-1]) / "share" / "llcuda" / "ui"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "assets" / "webui.png")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    reason = browser.unavailable()
    if reason:
        log.error("%s", reason)
        return 1

    from llcuda.models import SMOLLM2_MODEL
    from llcuda.models.resolve import resolve_model
    from llcuda.processes.llama_server import LlamaServer, ServerSettings

    ui_dir = build_ui()
    model = resolve_model(SMOLLM2_MODEL, progress=False).path
    settings = ServerSettings(
        model_path=model,
        ctx_size=2048,
        n_parallel=1,
        # greedy (the page sends no temperature of its own), and the page's settings for a first visit
        # (/props ui_settings) without speed figures, which would only tell how busy the machine was
        extra_args=(
            "--ui",
            "--path",
            str(ui_dir),
            "--n-predict",
            "32",
            "--temp",
            "0",
            "--ui-config",
            json.dumps({"showMessageStats": False}),
        ),
    )
    server = LlamaServer(settings)
    server.start(timeout=180)
    try:
        log.info("llama-server at %s serves %s", server.url, ui_dir)
        with browser.chromium(width=args.width, height=args.height) as driver:
            answer = browser.ask(driver, server.url, args.question)
            log.info("answer: %s", answer)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
    finally:
        server.stop()
    print(f"{args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
