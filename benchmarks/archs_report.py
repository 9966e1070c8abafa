#!/usr/bin/env python3
"""What a (possibly interrupted) default-arch-list build got done, and what the extra archs cost.

    python benchmarks/archs_report.py BUILD_DIR OUT.json --elapsed SECONDS [--samples 3] [--ext .cu.o]

Counts the CUDA objects compiled against the build's total (``ninja -t targets``), lists the ELF
images in each compiled object (``cuobjdump --list-elf``: the shared library would list the static
CUDA runtime's archs as well, so only objects tell the build's own arch set), and recompiles a few
of the compiled objects for sm_90 only with the very same nvcc command (its ``--generate-code``
flags replaced) to give the size ratio default list / sm_90 per object. ``--ext .cpp.o`` (and no
cuobjdump) checks the script on a CPU build.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SM90 = "--generate-code=arch=compute_90,code=[sm_90]"


def run(
    cmd: list[str] | str, cwd: Path, timeout: float = 120, shell: bool = False
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, shell=shell, check=False
    )


def sm90_only(build: Path, obj: Path, timeout: float) -> dict:
    """Recompile ``obj`` with its own command but for sm_90 only; sizes of both."""
    rel = str(obj.relative_to(build))
    cmds = run(["ninja", "-t", "commands", rel], build).stdout.strip().splitlines()
    if not cmds:
        return {"object": rel, "error": "ninja knows no command for it"}
    argv = shlex.split(cmds[-1])
    out = obj.with_name(obj.name + ".sm90")
    with_value = {"-gencode", "-arch", "--gpu-architecture", "--generate-code", "-MF", "-MT", "-MQ"}
    new: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in with_value:  # arch flags and dependency-file flags, with their value
            i += 2
        elif arg in ("-MD", "-MMD") or arg.startswith(
            ("--generate-code=", "-gencode=", "-arch=", "--gpu-architecture=")
        ):
            i += 1
        elif arg == "-o":
            new += ["-o", str(out)]
            i += 2
        else:
            new.append(arg)
            i += 1
    nvcc_at = next((i for i, a in enumerate(new) if a.endswith("nvcc")), None)
    if nvcc_at is None:
        return {"object": rel, "error": "not an nvcc command", "command": cmds[-1][:300]}
    new.insert(nvcc_at + 1, SM90)
    t0 = time.perf_counter()
    done = run(new, build, timeout)
    row = {
        "object": rel,
        "all_archs_bytes": obj.stat().st_size,
        "seconds_sm90": round(time.perf_counter() - t0, 1),
    }
    if done.returncode != 0 or not out.is_file():
        row["error"] = done.stderr[-600:]
        return row
    row.update(sm90_bytes=out.stat().st_size, ratio=round(obj.stat().st_size / out.stat().st_size, 2))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--elapsed", type=float, default=0, help="seconds the build ran")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--sample-timeout", type=float, default=90)
    p.add_argument("--ext", default=".cu.o")
    p.add_argument("--jobs", type=int, default=16, help="cuobjdump processes at a time")
    a = p.parse_args(argv)
    targets = run(["ninja", "-t", "targets", "all"], a.build).stdout
    total = len({t.split(":")[0] for t in targets.splitlines() if t.split(":")[0].endswith(a.ext)})
    objs = sorted(o for o in a.build.rglob(f"*{a.ext}") if o.stat().st_size > 0)
    report: dict = {
        "build_dir": str(a.build),
        "ext": a.ext,
        "compiled": len(objs),
        "total": total,
        "elapsed_s": a.elapsed,
        "objects": [],
    }
    if objs and total and a.elapsed:
        report["naive_full_build_s"] = round(a.elapsed * total / len(objs))  # objects differ a lot in cost
    cmake_cache = a.build / "CMakeCache.txt"
    if cmake_cache.is_file():
        m = re.search(
            r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", cmake_cache.read_text(errors="replace"), re.MULTILINE
        )
        report["cmake_cuda_architectures"] = m.group(1) if m else None
    a.out.write_text(json.dumps(report, indent=1))  # the counts first: a later step may run out of time
    have_cuobjdump = shutil.which("cuobjdump") is not None

    def listing(o: Path) -> dict:
        row: dict = {"object": str(o.relative_to(a.build)), "bytes": o.stat().st_size}
        if have_cuobjdump:
            elf = run(["cuobjdump", "--list-elf", str(o)], a.build).stdout
            ptx = run(["cuobjdump", "--list-ptx", str(o)], a.build).stdout
            row["elf"] = sorted(set(re.findall(r"sm_\w+", elf)))
            row["ptx"] = sorted({"compute_" + m for m in re.findall(r"sm_(\w+)\.ptx", ptx)})  # x.1.sm_90.ptx
        return row

    with ThreadPoolExecutor(a.jobs) as pool:
        report["objects"] = list(pool.map(listing, objs))
    counts: dict[str, int] = {}
    for row in report["objects"]:
        if "elf" in row:
            key = ",".join(row["elf"]) + (" + ptx " + ",".join(row["ptx"]) if row["ptx"] else "")
            counts[key] = counts.get(key, 0) + 1
    report["arch_sets"] = counts
    report["total_bytes_compiled"] = sum(r["bytes"] for r in report["objects"])
    a.out.write_text(json.dumps(report, indent=1))
    if a.ext == ".cu.o" and objs and a.samples:  # small, middle and large objects (not the very largest)
        by_size = sorted(objs, key=lambda o: o.stat().st_size)
        quantiles = (
            [0.1, 0.5, 0.9][: a.samples] if a.samples <= 3 else [i / a.samples for i in range(a.samples)]
        )
        picks = list(dict.fromkeys(by_size[int(q * (len(by_size) - 1))] for q in quantiles))
        with ThreadPoolExecutor(len(picks)) as pool:
            report["sm90_samples"] = list(pool.map(lambda o: sm90_only(a.build, o, a.sample_timeout), picks))
    a.out.write_text(json.dumps(report, indent=1))
    print(
        f"[archs] {len(objs)} of {total} {a.ext} objects compiled in {a.elapsed:.0f} s; arch sets: {counts}"
    )
    for s in report.get("sm90_samples", []):
        print(
            f"[archs] {s['object']}: {s.get('all_archs_bytes')} B all archs vs {s.get('sm90_bytes')} B sm_90 only "
            f"(ratio {s.get('ratio')}) {s.get('error', '')[:200]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
