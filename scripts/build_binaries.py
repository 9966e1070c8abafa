#!/usr/bin/env python3
"""Build llama.cpp with recipe/build-binaries.sh into a cached prefix, optionally copied elsewhere.

The cache key is the pinned source + the build script + the flags, so a rerun with nothing
changed is instant. ``--prefix DIR`` then copies bin/, lib/ and share/ into DIR (e.g. a venv,
where llcuda's bootstrap finds them under ``sys.prefix``). Prints the cached prefix path.

``--ui`` also builds llama.cpp's browser chat page (npm; LLCUDA_UI=ON of the build script) into
``share/llcuda/ui``; ``--ui-only`` builds just the page, into a prefix of its own holding only
``share/llcuda/ui`` (tests serve it from there). The page's npm folder (node_modules, the last output)
is kept under the cache's build-tree/ui, so a page whose sources did not change is copied, not rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_source import REPO_ROOT, cache_root, fetch_source, read_pin, source_identity  # noqa: E402

BUILD_SCRIPT = REPO_ROOT / "recipe" / "build-binaries.sh"
LOG_FILTER_SOURCE = REPO_ROOT / "recipe" / "llcuda_log.c"  # compiled by the build script
log = logging.getLogger("build_binaries")


def build_key(source_id: str, flags: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(source_id.encode())
    digest.update(BUILD_SCRIPT.read_bytes())
    digest.update(LOG_FILTER_SOURCE.read_bytes())
    digest.update(json.dumps(flags, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def built_marker(prefix: Path, flags: dict[str, str]) -> Path:
    """The file whose presence means ``prefix`` holds a finished build for ``flags``."""
    if flags.get("LLCUDA_UI") == "only":
        return prefix / "share" / "llcuda" / "ui" / "index.html"
    return prefix / "share" / "llcuda" / "build-info.json"


def build(flags: dict[str, str], jobs: int | None = None) -> Path:
    """Return a prefix holding the build for ``flags``, building it if not cached."""
    source = fetch_source()
    key = build_key(source_identity(source), flags)
    root = cache_root() / "builds" / key
    prefix = root / "prefix"
    if built_marker(prefix, flags).exists():
        log.info("cached build %s at %s", key, prefix)
        return prefix
    staging = root / "prefix.partial"
    shutil.rmtree(staging, ignore_errors=True)
    env = dict(os.environ)
    env.update(flags)
    env.update(
        SRC_DIR=str(source),
        PREFIX=str(staging),
        LLAMA_BUILD_NUMBER=str(read_pin().build),
        # One build tree per backend, reused across keys: ninja rebuilds only what changed and
        # ccache hits (llama.cpp's unity sources embed absolute paths, so the path must not move).
        LLCUDA_BUILD_DIR=str(cache_root() / "build-tree" / ("cuda" if flags.get("LLCUDA_CUDA") == "ON" else "cpu")),
        LLCUDA_UI_BUILD_DIR=str(cache_root() / "build-tree" / "ui"),
        CPU_COUNT=str(jobs or os.cpu_count() or 2),
    )
    what = "the web UI" if flags.get("LLCUDA_UI") == "only" else "llama.cpp"
    log.info("building %s (%s) into %s; this takes minutes on first run", what, key, prefix)
    started = time.monotonic()
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, env=env)
    staging.rename(prefix)
    log.info("built in %.0f s", time.monotonic() - started)
    return prefix


def copy_prefix(src: Path, dest: Path) -> None:
    """Copy bin/, lib/ and share/ of a built prefix into dest, keeping symlinks; what an earlier build
    put there is replaced (a symlink already in dest would stop copytree)."""
    for sub in ("bin", "lib", "share"):
        if not (src / sub).is_dir():
            continue  # a web-UI-only prefix has share/ alone
        for item in (src / sub).rglob("*"):
            target = dest / sub / item.relative_to(src / sub)
            if target.is_symlink() or (target.exists() and item.is_symlink() and not target.is_dir()):
                target.unlink()
        shutil.copytree(src / sub, dest / sub, symlinks=True, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, help="copy the build into this prefix (e.g. .venv)")
    parser.add_argument("--cuda", action="store_true", help="build the CUDA backend")
    parser.add_argument("--archs", default=None, help="CUDA architectures (CMake list)")
    parser.add_argument("--cpu-isa", choices=["avx2", "baseline"], default="avx2")
    parser.add_argument("--jobs", type=int, default=None)
    ui = parser.add_mutually_exclusive_group()
    ui.add_argument("--ui", action="store_true", help="also build the web chat page (needs Node.js and npm)")
    ui.add_argument("--ui-only", action="store_true", help="build only the web chat page, not llama.cpp")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.ui_only:
        flags = {"LLCUDA_UI": "only"}
    else:
        flags = {
            "LLCUDA_CUDA": "ON" if args.cuda else "OFF",
            "LLCUDA_CPU_ISA": args.cpu_isa,
            "LLCUDA_UI": "ON" if args.ui else "OFF",  # always set: never taken from the caller's environment
        }
        if args.cuda and args.archs:
            flags["LLCUDA_CUDA_ARCHS"] = args.archs
    prefix = build(flags, args.jobs)
    if args.prefix:
        copy_prefix(prefix, args.prefix)
        log.info("copied binaries into %s", args.prefix)
    print(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
