"""The documentation: the mkdocs site builds with --strict, and the README stays a short page for users."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
FIRST_SCREEN_LINES = 40
# CI's .ci/run and new users both start from these two lines of the README's first screen.
README_COMMANDS = (
    './scripts/setup.sh && .venv/bin/llcuda infer "Paris is the capital of"',
    "./scripts/test.sh",
)
# Pages are about the product: no notes about how and where the measurements were made.
OFF_TOPIC = re.compile(r"\bsessions? \d|\$OUT\b|warm machine|carried folder|device time|\.carry\b", re.IGNORECASE)


def readme_lines() -> list[str]:
    return (REPO / "README.md").read_text(encoding="utf-8").splitlines()


def doc_pages() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_readme_is_short() -> None:
    assert len(readme_lines()) <= README_MAX_LINES


def test_readme_first_screen_shows_setup_and_test_commands() -> None:
    first_screen = [line.strip() for line in readme_lines()[:FIRST_SCREEN_LINES]]
    for command in README_COMMANDS:
        assert command in first_screen, f"{command!r} is not a line of the README's first screen"


def test_pages_stay_on_the_product() -> None:
    hits = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()}"
        for page in doc_pages()
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if OFF_TOPIC.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_readme_links_to_existing_pages() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md(?:#[\w-]+)?)\)", text)
    targets = {link.split("#")[0] for link in links}
    assert targets, "the README links to no page"
    missing = sorted(t for t in targets if not (REPO / t).is_file())
    assert not missing, f"the README links to missing pages: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (test extra)")
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml")]
    proc = subprocess.run(
        [*command, "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    for name in ("InferenceEngine", "load_model", "infer_stream", "LlcudaError"):
        assert name in api, f"the API page does not document {name}"
