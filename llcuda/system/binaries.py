"""Find llama.cpp's executables and libraries. Never downloads or builds anything.

Search order (first hit wins):

1. ``LLCUDA_BIN_DIR`` (explicit override)
2. the folder bundled inside the package (``llcuda/binaries/bin``, the pip wheel's layout)
3. ``$CONDA_PREFIX/bin`` (conda / pixi environments)
4. ``sys.prefix/bin`` (the running interpreter's environment, e.g. a venv)
5. every folder on ``PATH``

The first llama-server found must be the llama.cpp build llcuda is made for (:data:`LLAMA_CPP_BUILD`):
llcuda's ctypes structures follow that build's ``llama.h`` and its server options that build's
llama-server. Another build raises :class:`~llcuda.errors.BuildMismatchError` rather than being
skipped for a later place, so what runs is always what the search order says.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llcuda import config
from llcuda.errors import BinaryNotFoundError, BuildMismatchError

log = logging.getLogger(__name__)

LLAMA_CPP_BUILD = 11434
"""The llama.cpp build (git tag ``b11434``) llcuda is made for; recipe/recipe.yaml pins the same."""


@dataclass(frozen=True)
class Binaries:
    """Where the llama.cpp executables were found."""

    bin_dir: Path
    lib_dir: Path | None
    source: str  # which search location found them, e.g. "LLCUDA_BIN_DIR" or "CONDA_PREFIX"
    build_info: dict[str, Any] = field(default_factory=dict)

    def executable(self, name: str) -> Path:
        return self.bin_dir / name


SERVER = "llama-server"
REQUIRED_TOOLS = ("llama-server",)
KNOWN_TOOLS = (
    "llama-server",
    "llama-cli",
    "llama-bench",
    "llama-batched-bench",
    "llama-quantize",
    "llama-embedding",
    "rpc-server",
)
BUNDLED_PREFIX = Path(__file__).resolve().parent.parent / "binaries"  # llcuda/binaries, as the wheel stages it

INSTALL_HELP = (
    "Install the binaries with one of:\n"
    "  conda install -c conda-forge llcuda      (or: pixi add llcuda)\n"
    "  pip install --force-reinstall llcuda      (the wheel with bundled binaries)\n"
    "  ./scripts/setup.sh                        (build from source into .venv, in a checkout)\n"
    "or point LLCUDA_BIN_DIR at a folder holding llama-server."
)


def candidate_dirs() -> list[tuple[str, Path]]:
    """Every place searched, in order, as (label, folder)."""
    found: list[tuple[str, Path]] = []
    override = config.bin_dir()
    if override is not None:
        found.append(("LLCUDA_BIN_DIR", override))
    found.append(("bundled", BUNDLED_PREFIX / "bin"))
    conda = config.conda_prefix()
    if conda is not None:
        found.append(("CONDA_PREFIX", conda / "bin"))
    found.append(("sys.prefix", Path(sys.prefix) / "bin"))
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            found.append(("PATH", Path(entry)))
    return found


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def build_info_path(bin_dir: Path) -> Path:
    return bin_dir.parent / "share" / "llcuda" / "build-info.json"


def read_build_info(bin_dir: Path) -> dict[str, object]:
    """The build-info.json written by the build script next to the binaries, or {}."""
    try:
        return dict(json.loads(build_info_path(bin_dir).read_text()))
    except (OSError, ValueError):
        return {}


# `llama-server --version` prints "version: 11434 (<commit>)" or, in newer builds,
# "version: <version> (build 11434, commit <commit>)".
_VERSION_BUILD = (re.compile(r"\(build (\d+),"), re.compile(r"^version: (\d+) \(", re.MULTILINE))
VERSION_TIMEOUT_S = 30.0


@functools.lru_cache(maxsize=16)
def _version_build(server: str, _mtime_ns: int, _size: int) -> int | None:
    try:
        out = subprocess.run(
            [server, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s --version failed: %s", server, exc)
        return None
    for pattern in _VERSION_BUILD:
        match = pattern.search(out.stdout + out.stderr)
        if match:
            return int(match.group(1))
    log.debug("%s --version (exit %d) names no build number", server, out.returncode)
    return None


def server_build(server: Path) -> int | None:
    """The llama.cpp build number ``server --version`` reports (cached per file), or None if unknown."""
    try:
        stat = server.stat()
    except OSError:
        return None
    return _version_build(str(server), stat.st_mtime_ns, stat.st_size)


_unknown_builds: set[Path] = set()  # folders whose build could not be told, already warned about


def check_build(binaries: Binaries) -> None:
    """Raise BuildMismatchError unless the binaries are llama.cpp build :data:`LLAMA_CPP_BUILD`.

    The build number comes from build-info.json next to the binaries (every llcuda build writes it),
    else from ``llama-server --version`` (a llama.cpp built elsewhere). When neither tells, a warning
    is logged and the binaries are used.
    """
    found = binaries.build_info.get("llama_cpp_build")
    source = str(build_info_path(binaries.bin_dir))
    if not isinstance(found, int):
        server = binaries.executable(SERVER)
        found = server_build(server)
        source = f"{server} --version"
    if found is None:
        if binaries.bin_dir not in _unknown_builds:  # once per folder, not on every load
            _unknown_builds.add(binaries.bin_dir)
            log.warning(
                "cannot tell which llama.cpp build %s is (no build-info.json, no build number from "
                "--version); llcuda is made for b%d and may fail with another",
                binaries.bin_dir,
                LLAMA_CPP_BUILD,
            )
        return
    where = f"{binaries.bin_dir} (found through {binaries.source}; build read from {source})"
    _refuse_other_build(found, where)


def shared_library(lib_dir: Path, stem: str) -> Path:
    """``lib_dir/<stem>.so``, or where only the SONAME file exists (a wheel holds no symlinks:
    ``libllama.so.0``) that file; the plain name when neither is there (opening it then says so)."""
    plain = lib_dir / f"{stem}.so"
    if plain.exists():
        return plain
    versioned = sorted(lib_dir.glob(f"{stem}.so.[0-9]*"), key=lambda p: (len(p.name), p.name))
    return versioned[0] if versioned else plain


def library_build(lib_dir: Path) -> int | None:
    """The build number libllama-common reports (its exported ``LLAMA_BUILD_NUMBER``), or None.

    libllama itself exports no build number; libllama-common, built from the same tree beside it, does.
    """
    try:
        common = ctypes.CDLL(str(shared_library(lib_dir, "libllama-common")))
        return int(ctypes.c_int.in_dll(common, "LLAMA_BUILD_NUMBER").value)
    except (OSError, ValueError) as exc:
        log.debug("no build number from libllama-common in %s: %s", lib_dir, exc)
        return None


def check_library_build(lib_dir: Path) -> None:
    """Raise BuildMismatchError if the libraries in lib_dir report another build than LLAMA_CPP_BUILD.

    Libraries that report none (no libllama-common) were checked through build-info.json already.
    """
    found = library_build(lib_dir)
    if found is not None:
        _refuse_other_build(found, f"{lib_dir} (build read from libllama-common's LLAMA_BUILD_NUMBER)")


def _refuse_other_build(found: int, where: str) -> None:
    if found == LLAMA_CPP_BUILD:
        return
    raise BuildMismatchError(
        f"llcuda is made for llama.cpp b{LLAMA_CPP_BUILD}, but the binaries in {where} are b{found}: "
        f"another build's libllama and llama-server do not match llcuda's bindings and options.\n"
        f"Use the b{LLAMA_CPP_BUILD} binaries of this llcuda version: conda/pixi install the same version of "
        f"llcuda-binaries (and remove conda-forge's llama.cpp), reinstall the pip wheel "
        f"(pip install --force-reinstall llcuda), run ./scripts/setup.sh in a checkout, or point "
        f"LLCUDA_BIN_DIR at a b{LLAMA_CPP_BUILD} build.",
        found=found,
        expected=LLAMA_CPP_BUILD,
    )


def find_binaries() -> Binaries:
    """Locate llama-server and its libraries, or raise BinaryNotFoundError listing every place searched.

    Raises BuildMismatchError (a BinaryNotFoundError) when the first llama-server found is another
    llama.cpp build than :data:`LLAMA_CPP_BUILD`.
    """
    searched: list[str] = []
    for label, folder in candidate_dirs():
        server = folder / SERVER
        searched.append(f"  {label}: {folder}")
        if server.exists() and not _is_executable(server):
            raise BinaryNotFoundError(
                f"{server} exists but is not executable: the installation is damaged.\n{INSTALL_HELP}"
            )
        if _is_executable(server):
            lib = folder.parent / "lib"
            has_libs = lib.is_dir() and any(lib.glob("libggml*.so*"))
            binaries = Binaries(
                bin_dir=folder,
                lib_dir=lib if has_libs else None,
                source=label,
                build_info=read_build_info(folder),
            )
            if label == "bundled":
                _check_bundled(binaries)
            check_build(binaries)
            log.debug("found %s in %s (%s)", SERVER, folder, label)
            return binaries
    where = "\n".join(searched)
    raise BinaryNotFoundError(f"llama-server was not found. Searched, in order:\n{where}\n{INSTALL_HELP}")


def _check_bundled(binaries: Binaries) -> None:
    missing = [t for t in KNOWN_TOOLS if not _is_executable(binaries.executable(t))]
    if binaries.lib_dir is None or not any(binaries.lib_dir.glob("libllama*.so*")):
        missing.append("lib/libllama.so")
    missing += [
        str(p.relative_to(BUNDLED_PREFIX))
        for p in _recorded_bundle_files()
        if not p.is_file() and p.name not in missing
    ]
    if missing:
        raise BinaryNotFoundError(
            f"The binaries bundled in {BUNDLED_PREFIX} are incomplete (missing or not executable: "
            f"{', '.join(missing)}). Reinstall with: pip install --force-reinstall --no-cache-dir llcuda"
        )


def _recorded_bundle_files() -> list[Path]:
    """Every file the installed wheel put under BUNDLED_PREFIX, from its RECORD ([] in a checkout)."""
    from importlib import metadata

    try:
        files = metadata.distribution("llcuda").files or []
    except metadata.PackageNotFoundError:
        return []
    located = (Path(str(f.locate())).resolve() for f in files if f.parts[:2] == ("llcuda", "binaries"))
    return [p for p in located if BUNDLED_PREFIX in p.parents]


def tool(name: str, binaries: Binaries | None = None) -> Path:
    """Path of one llama.cpp executable, next to llama-server first, then on PATH."""
    binaries = binaries or find_binaries()
    path = binaries.executable(name)
    if _is_executable(path):
        return path
    other = shutil.which(name)
    if other:
        return Path(other)
    raise BinaryNotFoundError(f"{name} is not in {binaries.bin_dir} nor on PATH.\n{INSTALL_HELP}")


def subprocess_env(binaries: Binaries) -> dict[str, str]:
    """Environment for a child llama.cpp process: its lib folder first on LD_LIBRARY_PATH.

    The binaries carry an ``$ORIGIN/../lib`` RPATH, so this only matters for builds
    without one (e.g. a distribution's package).

    ``CUDA_DEVICE_ORDER`` defaults to ``PCI_BUS_ID`` (unless set), so CUDA numbers GPUs as nvidia-smi
    and ``llcuda doctor`` do: ``main_gpu``, ``tensor_split`` and ``CUDA_VISIBLE_DEVICES`` indices
    then mean the GPUs doctor lists, also on hosts with mixed GPU models.
    """
    env = dict(os.environ)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if binaries.lib_dir is not None:
        current = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(binaries.lib_dir), current) if p)
    return env
