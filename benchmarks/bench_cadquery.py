"""CadQuery execution throughput: warm forking workers vs a fresh Python process per program.

The baseline is what published CAD evaluators do: a subprocess per program that imports cadquery,
runs the program and exports an STL (same tessellation tolerances). Both sides use all cores and
the same sandbox limits (rlimits, new session, network namespace); the warm side additionally
switches uid and installs the audit tripwire. The baseline runs on a fixed subset (the first N
programs of the file) because it is slow; the warm side runs that same subset and all 100, and the
speed-up compares programs per second on the same subset.

The isolation layers of the warm side follow ``GEN3DEVAL_SANDBOX`` (``full``, the default: jail,
per-program cgroup, seccomp). The cost of those layers is measured in the same run: all programs
again on a second pool with ``basic`` isolation (none of the three), and the ratio is printed.

Run: python benchmarks/bench_cadquery.py [--subset 20] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gen3deval.execute import cadquery_worker as cqw
from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits

REPO = Path(__file__).resolve().parents[1]
GENCAD = (
    Path(os.environ.get("GEN3DEVAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    / "gencad100"
    / "cases.jsonl"
)

# The per-program script of the baseline (a fresh interpreter each time).
BASELINE_SCRIPT = """
import sys
import cadquery as cq
src = open(sys.argv[1]).read()
ns = {}
exec(compile(src, "<program>", "exec"), ns)
res = ns["solid"]
shape = res.val() if isinstance(res, cq.Workplane) else res
tol = 1e-3 * shape.BoundingBox().DiagonalLength
cq.exporters.export(res, "out.stl", tolerance=tol, angularTolerance=0.1)
print("ok")
"""


def run_baseline_one(program: str, limits: Limits) -> bool:
    with sandbox.private_tmpdir(prefix="gen3deval-bench-") as tmp:
        (tmp / "prog.py").write_text(program)
        (tmp / "run.py").write_text(BASELINE_SCRIPT)
        out = sandbox.run_limited(
            [sys.executable, str(tmp / "run.py"), str(tmp / "prog.py")],
            limits,
            cwd=tmp,
            env=sandbox.scrubbed_env(tmp, {"OPENBLAS_NUM_THREADS": "1"}),
        )
        return out.returncode == 0 and b"ok" in out.stdout and (tmp / "out.stl").stat().st_size > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=20, help="programs for the fresh-process baseline")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cases = [json.loads(line) for line in GENCAD.read_text().splitlines() if line.strip()]
    programs = [c["ground_truth"] for c in cases]
    subset = programs[: args.subset]
    limits = Limits()  # the defaults: 30 s wall/CPU, 2048 MiB address space, 64 MiB files, 64 processes
    jobs = args.jobs

    # Warm workers: start-up measured on its own, then the subset and the full set.
    cqw.shutdown()
    t0 = time.perf_counter()
    cqw.get_pool().warm(jobs)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_subset = cqw.run_cadquery_many(subset, limits, jobs)
    t_warm_subset = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_all = cqw.run_cadquery_many(programs, limits, jobs)
    t_warm_all = time.perf_counter() - t0
    cqw.shutdown()

    # The same, with the jail, cgroup and seccomp layers off: what the full isolation costs.
    basic = cqw.WorkerPool(jobs, isolation=sandbox.Isolation(filesystem=False, cgroup=False, seccomp=False))
    basic.warm(jobs)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        basic_all = list(ex.map(lambda p: basic.run(p, limits), programs))
    t_basic_all = time.perf_counter() - t0
    basic.shutdown()

    # Fresh process per program, same limits, same parallelism.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        base_ok = list(ex.map(lambda p: run_baseline_one(p, limits), subset))
    t_base = time.perf_counter() - t0

    n_sub = len(subset)
    rows = [
        ("fresh `python` per program (baseline)", n_sub, sum(base_ok), t_base, 0.0),
        ("warm forking workers", n_sub, sum(r.executable for r in warm_subset), t_warm_subset, startup),
        (
            "warm forking workers, all programs",
            len(programs),
            sum(r.executable for r in warm_all),
            t_warm_all,
            startup,
        ),
        (
            "warm forking workers, all programs, basic isolation",
            len(programs),
            sum(r.executable for r in basic_all),
            t_basic_all,
            startup,
        ),
    ]
    iso = sandbox.default_isolation()
    print(f"CadQuery execution, {jobs} jobs on {os.cpu_count()} cores, limits {limits.to_dict()}")
    print(f"isolation GEN3DEVAL_SANDBOX={os.environ.get('GEN3DEVAL_SANDBOX', 'full')}: {iso}\n")
    print("| method | programs | executable | seconds | programs/s | + worker start-up (s) |")
    print("|---|---|---|---|---|---|")
    for name, n, ok, t, st in rows:
        print(f"| {name} | {n} | {ok} | {t:.2f} | {n / t:.2f} | {st:.2f} |")
    speedup = (n_sub / t_warm_subset) / (n_sub / t_base)
    incl = (n_sub / (t_warm_subset + startup)) / (n_sub / t_base)
    print(f"\nspeed-up on the same {n_sub} programs: {speedup:.1f}x (counting worker start-up: {incl:.1f}x)")
    print(
        f"isolation cost (full vs basic, all programs): {t_warm_all / t_basic_all:.2f}x the time, "
        f"{100 * (1 - t_basic_all / t_warm_all):.0f}% less throughput"
    )
    walls = sorted(r.wall_s for r in warm_all)
    print(f"warm per-program wall time: median {walls[len(walls) // 2]:.3f} s, max {walls[-1]:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
