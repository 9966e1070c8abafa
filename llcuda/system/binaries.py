"""Find llama.cpp's executables and libraries. Never downloads or builds anything.

Search order (first hit wins):

1. ``LLCUDA_BIN_DIR`` (explicit override)
2. the folder bundled inside the package (``llcuda/binaries/bin``, the pip wheel's layout)
3. ``$CONDA_PREFIX/bin`` (conda / pixi environments)
4. ``sys.prefix/bin`` (the running interpreter's environment, e.g. a venv)
5. every folder on ``PATH``
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llcuda import config
from llcuda.errors import BinaryNotFoundError

log = logging.getLogger(__name__)


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
BUNDLED_PREFIX = Path(__file__).resolve().parent.parent / "binaries"  # llcuda/binaries, the wheel's layout

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


def read_build_info(bin_dir: Path) -> dict[str, object]:
    """The build-info.json written by the build script next to the binaries, or {}."""
    path = bin_dir.parent / "share" / "llcuda" / "build-info.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def find_binaries() -> Binaries:
    """Locate llama-server and its libraries, or raise BinaryNotFoundError listing every place searched."""
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
            log.debug("found %s in %s (%s)", SERVER, folder, label)
            return binaries
    where = "\n".join(searched)
    raise BinaryNotFoundError(f"llama-server was not found. Searched, in order:\n{where}\n{INSTALL_HELP}")


def _check_bundled(binaries: Binaries) -> None:
    missing = [t for t in KNOWN_TOOLS if not _is_executable(binaries.executable(t))]
    if binaries.lib_dir is None or not any(binaries.lib_dir.glob("libllama*.so*")):
        missing.append("lib/libllama.so")
    missing += [str(p.relative_to(BUNDLED_PREFIX)) for p in _recorded_bundle_files()
                if not p.is_file() and p.name not in missing]
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
