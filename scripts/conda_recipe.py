#!/usr/bin/env python3
"""Render recipe/recipe.yaml offline (py-rattler-build) and check llcuda's packaging rules on the result.

    .venv/bin/python scripts/conda_recipe.py            # render every output x variant, check, print a table

Rendering needs no channel: it evaluates the recipe's Jinja and selectors for each variant of
recipe/variants.yaml (dependencies are not solved). check() then enforces what the recipe promises, so
that a later edit cannot quietly break it (tests/recipes_bad/ holds edits that must be caught):

- llcuda-binaries: one build per cuda_compiler_version, run by recipe/build-binaries.sh (the same build
  script as local builds) on the pinned sdist; CUDA builds are CUDA 12 or 13, named
  cuda<major>_b<llama.cpp build>_*, need __cuda >=<major> and cuda-version, allow libcuda.so.1 to be
  missing, build for their own list of CUDA architectures (real code from sm_75 on, PTX of the newest)
  and outrank cpu_* builds and older CUDA majors by build number (build_base + 100 per major from 12);
  CUDA 13 targets glibc 2.28; cpu_* builds carry nothing of CUDA; every build declares its AVX2 code
  (x86_64-microarch-level) and excludes the packages that ship the same files (llama.cpp, whisper.cpp);
  the tests list every tool the build script installs; builds with conda's toolchain also build the
  browser chat page (LLCUDA_UI=ON, nodejs among the build tools).
- llcuda-python: noarch: python, one build for all binaries variants, a version-range pin on
  llcuda-binaries, the console script of pyproject.toml.
- llcuda: noarch, pulls llcuda-python (exact) and llcuda-binaries (range).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE_DIR = REPO / "recipe"
PLATFORM = "linux-64"
OUTPUTS = ("llcuda-binaries", "llcuda-python", "llcuda")
CUDA_MAJORS = ("12", "13")
CUDA_BUILD_OFFSET_PER_MAJOR = 100  # build_base + 100 * (major - 11): cuda12 +100, cuda13 +200
CUDA13_MIN_ARCH = 75  # CUDA 13 dropped Maxwell, Pascal and Volta
CUDA13_MIN_GLIBC = (2, 28)
MICROARCH = "x86_64-microarch-level ==3"  # the CPU code is AVX2 (x86-64-v3) in every build
EXCLUDED = ("llama.cpp", "whisper.cpp")  # packages installing the same bin/ and lib/ files
ARCH_ENTRY = re.compile(r"(\d+)(?:-(real|virtual))?")
BUILD_SCRIPT = "build-binaries.sh"


class RecipeCheckError(ValueError):
    """The recipe renders, but breaks one of llcuda's packaging rules (all of them are listed)."""


def render(recipe_dir: Path = RECIPE_DIR, extra_variant_files: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Every output x variant of recipe_dir/recipe.yaml as plain dicts (rattler-build's stage 1).

    Each dict is the rendered recipe plus "variant" (the variant keys this output used), "hash" and
    "pins" (pin_subpackage targets with version and build string). Raises rattler_build's errors as is.
    """
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe, VariantConfig

    variant_files = [recipe_dir / "variants.yaml", *extra_variant_files]
    variants = VariantConfig.from_files(variant_files)
    recipe = Stage0Recipe.from_file(recipe_dir / "recipe.yaml")
    rendered = []
    for item in recipe.render(variants, RenderConfig(PlatformConfig(target_platform=PLATFORM))):
        data = item.recipe.to_dict()
        data["variant"] = dict(item.variant)
        data["hash"] = item.hash_info.hash if item.hash_info else None
        data["pins"] = {
            name: {"version": pin.version, "build_string": pin.build_string, "exact": pin.exact}
            for name, pin in item.pin_subpackages.items()
        }
        rendered.append(data)
    return rendered


def builds(rendered: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The distinct builds of one output, by build string (identical renders are one build)."""
    return {r["build"]["string"]: r for r in rendered if r["package"]["name"] == name}


def pin_of(requirements: list[Any], kind: str, name: str) -> dict[str, Any] | None:
    for item in requirements:
        if isinstance(item, dict) and kind in item and item[kind]["name"] == name:
            return item[kind]
    return None


def spec_names(requirements: list[Any]) -> list[str]:
    return [item.split()[0] for item in requirements if isinstance(item, str)]


def _requirement_key(requirement: object) -> str:
    """A requirement without spaces, its name spelled with ``-``: PyPI's ``prometheus-client`` is
    conda-forge's ``prometheus_client`` (names compare as PEP 503 normalises them)."""
    text = str(requirement).replace(" ", "")
    name = re.match(r"[A-Za-z0-9._-]*", text)
    head = name.group(0) if name else ""
    return re.sub(r"[-_.]+", "-", head).lower() + text[len(head) :]


def _tools_of_build_script(recipe_dir: Path) -> list[str]:
    text = (recipe_dir / BUILD_SCRIPT).read_text(encoding="utf-8")
    match = re.search(r"^TOOLS=\(([^)]*)\)", text, re.MULTILINE)
    if not match:
        raise RecipeCheckError(f"no TOOLS=(...) list in {BUILD_SCRIPT}")
    # ggml-rpc-server is installed as rpc-server with a ggml-rpc-server link: both must be there.
    return sorted(set(match.group(1).split()) | {"rpc-server"})


def _check_archs(build: dict[str, Any], major: int, where: str, problems: list[str]) -> None:
    """The variant's llcuda_cuda_archs: a CMake list the build script gets, with PTX of the newest arch."""
    archs = str(build["variant"].get("llcuda_cuda_archs", "None"))
    script = build["build"].get("script")
    env = script.get("env", {}) if isinstance(script, dict) else {}
    if archs in ("", "None"):
        problems.append(f"{where}: a CUDA build needs its llcuda_cuda_archs (variants.yaml), got none")
        return
    if env.get("LLCUDA_CUDA_ARCHS") != archs:
        problems.append(f"{where}: LLCUDA_CUDA_ARCHS must be the variant's llcuda_cuda_archs ({archs})")
    entries = [ARCH_ENTRY.fullmatch(entry) for entry in archs.split(";")]
    if not all(entries):
        problems.append(f"{where}: llcuda_cuda_archs {archs!r} is not a list like 75-real;90-real;90-virtual")
        return
    numbers = [int(m.group(1)) for m in entries if m]
    if major >= 13 and min(numbers) < CUDA13_MIN_ARCH:
        problems.append(f"{where}: CUDA 13 cannot build for {min(numbers)} (its oldest is {CUDA13_MIN_ARCH})")
    virtual = [int(m.group(1)) for m in entries if m and m.group(2) == "virtual"]
    # A published build carries PTX for GPUs newer than its list; a system-toolchain build (one GPU's
    # archs, for testing on that GPU) need not.
    published = build["variant"].get("llcuda_toolchain") == "conda"
    if published and max(virtual, default=-1) != max(numbers):
        problems.append(f"{where}: llcuda_cuda_archs must end in PTX of the newest arch ({max(numbers)}-virtual)")


def _check_binaries(build: dict[str, Any], context: dict[str, Any], tools: list[str], problems: list[str]) -> None:
    string = build["build"]["string"]
    cuda_version = build["variant"].get("cuda_compiler_version", "None")
    cuda = cuda_version != "None"
    conda_toolchain = build["variant"].get("llcuda_toolchain") == "conda"
    req = build.get("requirements", {})
    run, host, build_reqs = req.get("run", []), req.get("host", []), req.get("build", [])
    where = f"llcuda-binaries {string}"
    allow = build["build"].get("dynamic_linking", {}).get("missing_dso_allowlist", [])
    number = build["build"]["number"]
    base = context["build_base"]
    major = cuda_version.split(".")[0]
    prefix = f"cuda{major}" if cuda else "cpu"
    if not re.fullmatch(rf"{prefix}_b{context['llama_cpp_build']}_h[0-9a-f]{{7}}_{base}", string):
        problems.append(f"{where}: build string must be {prefix}_b{context['llama_cpp_build']}_h<hash>_{base}")
    if cuda:
        if major not in CUDA_MAJORS:
            majors = " or ".join(CUDA_MAJORS)
            problems.append(f"{where}: a CUDA variant must be CUDA {majors}, not {cuda_version}")
            return
        if f"__cuda >={major}" not in run:
            problems.append(
                f"{where}: a CUDA build must require __cuda >={major} to run (else it installs without a "
                "driver that can run it, instead of the solver taking an older CUDA build or cpu_*)"
            )
        if conda_toolchain:
            compat = pin_of(run, "pin_compatible", "cuda-version")
            if not compat or compat.get("upper_bound") != "x":
                problems.append(f"{where}: run must pin cuda-version with pin_compatible(upper_bound='x')")
            if f"cuda-version {cuda_version}.*" not in host:
                problems.append(f"{where}: host must hold cuda-version {cuda_version}.*")
            for dev in ("cuda-cudart-dev", "libcublas-dev"):
                if dev not in spec_names(host):
                    problems.append(f"{where}: host must hold {dev}")
        elif host:
            problems.append(f"{where}: the system toolchain takes no host package, got {host}")
        if "*/libcuda.so.1" not in allow:
            problems.append(f"{where}: libcuda.so.1 (the driver's) must be in missing_dso_allowlist")
        offset = CUDA_BUILD_OFFSET_PER_MAJOR * (int(major) - 11)
        if number != base + offset:
            problems.append(
                f"{where}: build number must be build_base + {offset} to outrank cpu_* and older CUDA builds"
            )
        if int(major) >= 13:
            glibc = str(build["variant"].get("c_stdlib_version", "0"))
            if conda_toolchain and tuple(int(x) for x in glibc.split(".")) < CUDA13_MIN_GLIBC:
                problems.append(f"{where}: CUDA 13 needs c_stdlib_version >= 2.28, got {glibc}")
        _check_archs(build, int(major), where, problems)
    else:
        names = spec_names(run) + spec_names(host) + spec_names(build_reqs)
        cuda_specs = [n for n in names if n.startswith("__cuda") or "cuda" in n or "cublas" in n]
        if cuda_specs:
            problems.append(f"{where}: a CPU build must not depend on {cuda_specs}")
        if allow:
            problems.append(f"{where}: a CPU build has no missing DSO to allow, got {allow}")
        if number != base:
            problems.append(f"{where}: build number must be build_base ({base})")
    if conda_toolchain:
        expected = {f"{c}_{PLATFORM}" for c in ("gcc", "gxx", "sysroot")} | {"cmake", "ninja", "nodejs"}
        if cuda:
            expected.add(f"cuda-nvcc_{PLATFORM}")
        missing = sorted(expected - set(spec_names(build_reqs)))
        if missing:
            problems.append(f"{where}: build requirements lack {missing}")
        if MICROARCH not in build_reqs:
            problems.append(
                f"{where}: build requirements must hold {MICROARCH}: the CPU code is AVX2, and its "
                "run_exports keep the package off CPUs without it"
            )
    constraints = req.get("run_constraints", [])
    for other in EXCLUDED:
        if f"{other} <0.0.0a0" not in constraints:
            problems.append(
                f"{where}: run_constraints must hold {other} <0.0.0a0 (it installs the same files, so "
                "another llama.cpp build could be loaded)"
            )
    script = build["build"].get("script", {})
    if not isinstance(script, dict) or script.get("file") != BUILD_SCRIPT:
        problems.append(f"{where}: must run recipe/{BUILD_SCRIPT}, the build script local builds run")
    else:
        env = script.get("env", {})
        if env.get("LLAMA_BUILD_NUMBER") != str(context["llama_cpp_build"]):
            problems.append(f"{where}: LLAMA_BUILD_NUMBER must be {context['llama_cpp_build']}")
        if env.get("LLCUDA_CUDA") != ("ON" if cuda else "OFF"):
            problems.append(f"{where}: LLCUDA_CUDA must be {'ON' if cuda else 'OFF'}")
        if env.get("LLCUDA_CPU_ISA") != "avx2":
            problems.append(f"{where}: LLCUDA_CPU_ISA must be avx2, the level {MICROARCH} declares")
        if conda_toolchain and env.get("LLCUDA_UI") != "ON":
            problems.append(f"{where}: LLCUDA_UI must be ON (the published packages carry the chat page)")
    sources = build.get("source", [])
    if len(sources) != 1 or sources[0].get("sha256") != context["llama_cpp_sdist_sha256"]:
        problems.append(f"{where}: the source must be the pinned sdist with its sha256")
    contents = [t["package_contents"] for t in build.get("tests", []) if "package_contents" in t]
    listed = set(contents[0].get("bin", [])) if contents else set()
    if not set(tools) <= listed:
        problems.append(
            f"{where}: package_contents must list every tool of {BUILD_SCRIPT}: {sorted(set(tools) - listed)}"
        )
    licenses = build.get("about", {}).get("license_file", [])
    if "llama.cpp/LICENSE" not in licenses or build.get("about", {}).get("license") != "MIT":
        problems.append(f"{where}: license MIT with llama.cpp/LICENSE among the license files")


def check(
    rendered: list[dict[str, Any]], recipe_dir: Path = RECIPE_DIR, pyproject: Path = REPO / "pyproject.toml"
) -> None:
    """Raise RecipeCheckError listing every broken rule; return None when the recipe keeps them all."""
    problems: list[str] = []
    context = yaml.safe_load((recipe_dir / "recipe.yaml").read_text(encoding="utf-8"))["context"]
    project = _read_toml(pyproject)["project"]
    names = sorted({r["package"]["name"] for r in rendered})
    if names != sorted(OUTPUTS):
        problems.append(f"outputs must be {sorted(OUTPUTS)}, got {names}")
    if context["version"] != project["version"]:
        problems.append(f"recipe version {context['version']} differs from pyproject.toml's {project['version']}")
    for r in rendered:
        if r["package"]["version"] != context["version"]:
            problems.append(f"{r['package']['name']}: version {r['package']['version']} is not {context['version']}")

    binaries = builds(rendered, "llcuda-binaries")
    flavours = sorted({b["variant"].get("cuda_compiler_version", "None") for b in binaries.values()})
    if len(binaries) != len(flavours):
        problems.append(f"llcuda-binaries must have one build per cuda_compiler_version, got {sorted(binaries)}")
    tools = _tools_of_build_script(recipe_dir)
    for build in binaries.values():
        _check_binaries(build, context, tools, problems)

    python = builds(rendered, "llcuda-python")
    if len(python) != 1:
        problems.append(f"llcuda-python must be one noarch build for every binaries variant, got {sorted(python)}")
    for string, build in python.items():
        where = f"llcuda-python {string}"
        if build["build"].get("noarch") != "python":
            problems.append(f"{where}: must be noarch: python")
        run = build.get("requirements", {}).get("run", [])
        pin = pin_of(run, "pin_subpackage", "llcuda-binaries")
        if not pin or pin.get("exact") or not pin.get("upper_bound") or not pin.get("lower_bound"):
            problems.append(f"{where}: needs a version-range pin_subpackage on llcuda-binaries (lower and upper bound)")
        if f"python >={context['python_min']}" not in run:
            problems.append(f"{where}: run must hold python >={context['python_min']}")
        held = [_requirement_key(x) for x in run]
        for dep in project["dependencies"]:
            if _requirement_key(dep) not in held:
                problems.append(f"{where}: run lacks pyproject.toml's dependency {dep}")
        scripts = build["build"].get("python", {}).get("entry_points", [])
        wanted = [f"{k} = {v}" for k, v in project.get("scripts", {}).items()]
        if sorted(scripts) != sorted(wanted):
            problems.append(f"{where}: entry points {scripts} differ from pyproject.toml's {wanted}")
        min_required = re.sub(r"^>=\s*", "", project.get("requires-python", ""))
        if min_required != context["python_min"]:
            problems.append(
                f"python_min {context['python_min']} differs from pyproject.toml's "
                f"requires-python {project.get('requires-python')}"
            )

    for name in ("llcuda-python", "llcuda"):
        for string, build in builds(rendered, name).items():
            files = build.get("about", {}).get("license_file", [])
            files = [files] if isinstance(files, str) else files
            # rattler-build looks in the source folder (the repository) and then in recipe/
            missing = [f for f in files if not (recipe_dir / f).is_file() and not (REPO / f).is_file()]
            if not files or missing or build.get("about", {}).get("license") != "MIT":
                problems.append(f"{name} {string}: license MIT with an existing license file (missing: {missing})")

    meta = builds(rendered, "llcuda")
    if len(meta) != 1:
        problems.append(f"llcuda must be one noarch build, got {sorted(meta)}")
    for string, build in meta.items():
        run = build.get("requirements", {}).get("run", [])
        exact = pin_of(run, "pin_subpackage", "llcuda-python")
        ranged = pin_of(run, "pin_subpackage", "llcuda-binaries")
        if not build["build"].get("noarch"):
            problems.append(f"llcuda {string}: must be noarch")
        if not exact or not exact.get("exact"):
            problems.append(f"llcuda {string}: must pin llcuda-python exactly")
        if not ranged or ranged.get("exact") or not ranged.get("upper_bound"):
            problems.append(f"llcuda {string}: must pull llcuda-binaries with a version range")
    if problems:
        raise RecipeCheckError("recipe/recipe.yaml breaks llcuda's packaging rules:\n  - " + "\n  - ".join(problems))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    rendered = render()
    try:
        check(rendered)
    except RecipeCheckError as error:
        print(error, file=sys.stderr)
        return 1
    for r in rendered:
        print(
            f"{r['package']['name']:16} {r['package']['version']:8} {r['build']['string']:28} "
            f"number={r['build'].get('number', 0)}"
        )
    print("recipe/recipe.yaml: every output x variant renders and keeps the packaging rules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
