"""Three.js executor throughput: programs/s for typical generated programs (10-50 primitives each).

Every program runs as a fresh, fully sandboxed Node process (permission model, own uid, empty network
namespace, rlimits, and with GEN3DEVAL_SANDBOX=full also the jail, a cgroup and seccomp) and comes back
as a parsed Mesh. Measured in the same run:

- the isolation levels: GEN3DEVAL_SANDBOX=basic (the always-on layers) vs =full (the default):
  the cost of the jail (mount namespace, pivot_root, a tmpfs per program), the cgroup and seccomp;
- gen3deval's startup (a V8 snapshot that already holds three) vs the plain bundle (Node parses
  three on every start): the baseline for the snapshot;
- sequential (jobs=1) vs parallel (jobs=2, the cores of this machine).

Target (issue 3): >= 8 programs/s on 2 cores; issue 9: full isolation costs <= 20% of that.

Run:  python benchmarks/bench_threejs.py [--programs 20] [--rounds 3] [--sandbox basic,full]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import subprocess
import time

from gen3deval.execute.result import Limits
from gen3deval.execute.threejs import iter_threejs, run_threejs, runtime

PRIMS = [
    "new THREE.BoxGeometry({a}, {b}, {c})",
    "new THREE.CylinderGeometry({a}, {a}, {b}, 16)",
    "new THREE.SphereGeometry({a}, 16, 12)",
    "new THREE.ConeGeometry({a}, {b}, 16)",
    "new THREE.TorusGeometry({a}, {d}, 8, 24)",
]


def make_program(seed: int) -> tuple[str, int]:
    """A deterministic 'chair/robot/lamp'-like program: nested groups of 10-50 coloured primitives."""
    rnd = random.Random(seed)
    n = rnd.randint(10, 50)
    lines = [
        "function createObject(THREE) {",
        "  const root = new THREE.Group();",
        "  const parts = [root];",
    ]
    n_groups = 1
    for i in range(n):
        geo = rnd.choice(PRIMS).format(
            a=round(rnd.uniform(0.1, 1.0), 3),
            b=round(rnd.uniform(0.1, 2.0), 3),
            c=round(rnd.uniform(0.1, 1.0), 3),
            d=round(rnd.uniform(0.02, 0.2), 3),
        )
        color = rnd.randrange(1 << 24)
        parent = f"parts[{rnd.randrange(n_groups)}]" if i % 7 else "root"
        lines += [
            f"  {{ const m = new THREE.Mesh({geo}, new THREE.MeshStandardMaterial({{ color: 0x{color:06x} }}));",
            f"    m.position.set({rnd.uniform(-2, 2):.3f}, {rnd.uniform(-2, 2):.3f}, {rnd.uniform(-2, 2):.3f});",
            f"    m.rotation.set({rnd.uniform(0, 3):.3f}, {rnd.uniform(0, 3):.3f}, {rnd.uniform(0, 3):.3f});",
            f"    {parent}.add(m); }}",
        ]
        if i % 10 == 9:
            lines += [
                "  { const g = new THREE.Group(); g.position.y = 0.5; g.scale.setScalar(0.8);",
                "    root.add(g); parts.push(g); }",
            ]
            n_groups += 1
    lines += ["  return root;", "}"]
    return "\n".join(lines) + "\n", n


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (the Node processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(programs: list[str], limits: Limits, jobs: int, snapshot: bool) -> tuple[float, int, float]:
    """programs/s, the number that ran (all must), CPU seconds per program (Python + Node)."""
    c = cpu_seconds()
    t = time.perf_counter()
    if snapshot:
        results = list(iter_threejs(programs, limits, jobs=jobs))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda p: run_threejs(p, limits, snapshot=False), programs))
    dt = time.perf_counter() - t
    failed = [r for r in results if not r.executable]
    if failed:
        raise SystemExit(f"{len(failed)} programs failed, e.g. {failed[0].error_class}: {failed[0].message}")
    return len(programs) / dt, sum(r.executable for r in results), (cpu_seconds() - c) / len(programs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per configuration")
    ap.add_argument("--sandbox", default="basic,full", help="GEN3DEVAL_SANDBOX levels to compare")
    args = ap.parse_args()
    levels = [x.strip() for x in args.sandbox.split(",") if x.strip()]

    programs, sizes = zip(*(make_program(s) for s in range(args.programs)), strict=True)
    limits = Limits(wall_s=10.0, cpu_s=10.0, memory_mb=2048)
    rt = runtime()
    run_threejs(programs[0], limits)  # build the snapshot and warm caches before timing
    run_threejs(programs[0], limits, snapshot=False)
    node = subprocess.run([rt.node, "--version"], capture_output=True, text=True).stdout.strip()
    print(
        f"{len(programs)} programs, {min(sizes)}-{max(sizes)} primitives each (mean {sum(sizes) / len(sizes):.0f}); "
        f"node {node}, three {rt.three_version}; {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        f"| sandbox | startup | jobs | programs/s (best of {args.rounds}) | executable | vs plain bundle, same jobs "
        "| CPU s / program | programs/s on 2 idle cores (2 / CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rates: dict[tuple[str, bool, int], float] = {}
    cpus: dict[tuple[str, bool, int], float] = {}
    before = os.environ.get("GEN3DEVAL_SANDBOX")
    try:
        for level in levels:
            os.environ["GEN3DEVAL_SANDBOX"] = level  # read by every run (sandbox.default_isolation)
            for jobs in (1, 2):
                for snapshot in (False, True):
                    best, ok, cpu = 0.0, 0, float("inf")
                    for _ in range(args.rounds):
                        rate, ok, c = throughput(list(programs), limits, jobs, snapshot)
                        best, cpu = max(best, rate), min(cpu, c)
                    key = (level, snapshot, jobs)
                    rates[key], cpus[key] = best, cpu
                    ratio = f"{best / rates[(level, False, jobs)]:.2f}x" if snapshot else "1.00x (baseline)"
                    name = "V8 snapshot (gen3deval)" if snapshot else "plain bundle"
                    print(
                        f"| {level} | {name} | {jobs} | {best:.1f} | {ok}/{len(programs)} | {ratio} | {cpu:.3f} "
                        f"| {2 / cpu:.1f} |"
                    )
    finally:
        if before is None:
            os.environ.pop("GEN3DEVAL_SANDBOX", None)
        else:
            os.environ["GEN3DEVAL_SANDBOX"] = before
    print()
    for level in levels:
        par = rates[(level, True, 2)] / rates[(level, True, 1)]
        verdict = "met" if rates[(level, True, 2)] >= 8 else "NOT met"
        print(
            f"{level}: parallel speed-up (snapshot, jobs=2 vs 1): {par:.2f}x; target >= 8 programs/s: {verdict} "
            f"({rates[(level, True, 2)]:.1f}/s measured, {2 / cpus[(level, True, 2)]:.1f}/s CPU-bound estimate)"
        )
    if "basic" in levels and "full" in levels:
        cost = 1 - rates[("full", True, 2)] / rates[("basic", True, 2)]
        cpu_cost = cpus[("full", True, 2)] / cpus[("basic", True, 2)] - 1
        print(
            f"isolation cost (full vs basic, snapshot, jobs=2): {100 * cost:.0f}% of throughput, "
            f"{100 * cpu_cost:+.0f}% CPU per program"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
