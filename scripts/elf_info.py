"""ELF facts for staging binaries into a wheel: what a file needs, and the manylinux tag that covers it.

Reads with binutils' ``readelf`` and the system's ``ldd``; the manylinux policies come from auditwheel,
so ``auditwheel show`` agrees with the tag chosen here.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Elf:
    path: Path
    machine: str
    soname: str | None
    needed: list[str]
    runpath: list[str]
    versions: dict[str, set[str]]  # library -> symbol versions needed from it


def is_elf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"\x7fELF"


def read_elf(path: Path) -> Elf:
    out = subprocess.run(
        ["readelf", "-h", "-d", "-V", "--wide", str(path)], check=True, capture_output=True, text=True
    ).stdout
    machine = re.search(r"^\s*Machine:\s*(.+?)\s*$", out, re.MULTILINE)
    soname = re.search(r"\(SONAME\)\s+Library soname: \[(.+?)\]", out)
    runpath = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*?)\]", out)
    versions: dict[str, set[str]] = {}
    current = None
    for line in out.split("Version needs section", 1)[1].splitlines() if "Version needs section" in out else []:
        if match := re.search(r"File: (\S+)", line):
            current = versions.setdefault(match.group(1), set())
        elif (match := re.search(r"Name: (\S+)", line)) and current is not None:
            current.add(match.group(1))
    return Elf(
        path=path,
        machine=machine.group(1) if machine else "?",
        soname=soname.group(1) if soname else None,
        needed=re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out),
        runpath=runpath.group(1).split(":") if runpath else [],
        versions=versions,
    )


def ldd_paths(path: Path) -> dict[str, Path]:
    """Where the dynamic loader resolves each NEEDED library of ``path`` on this machine."""
    proc = subprocess.run(["ldd", str(path)], check=False, capture_output=True, text=True)
    found = {}
    for name, target in re.findall(r"^\s*(\S+) => (/\S+)", proc.stdout, re.MULTILINE):
        found[name] = Path(target)
    return found


def soname_stem(soname: str) -> str:
    return soname.split(".so", 1)[0]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def manylinux_tag(versions: set[str], arch: str) -> str:
    """The oldest manylinux policy whose symbol versions include every version in ``versions``.

    Policies come from auditwheel (``auditwheel/policy/manylinux-policy.json``), the same data
    ``auditwheel show`` judges a wheel by, so the two agree.
    """
    try:
        from importlib.resources import files

        policies = json.loads(files("auditwheel").joinpath("policy", "manylinux-policy.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        raise SystemExit(
            "auditwheel is needed to choose the manylinux tag: pip install auditwheel (or pip install -e '.[wheel]')"
        ) from None
    for policy in sorted(policies, key=lambda p: -p["priority"]):  # highest priority = oldest glibc
        allowed = policy["symbol_versions"].get(arch)
        if not allowed or policy["name"] == "linux":
            continue
        if all(v.split("_", 1)[1] in allowed.get(v.split("_", 1)[0], ()) for v in versions):
            return f"{policy['name']}_{arch}"
    raise SystemExit(
        f"no manylinux policy covers {sorted(versions, key=version_key)} on {arch}; "
        "build on an older system (a manylinux container)"
    )
