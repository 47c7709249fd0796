"""CAD reward throughput: ``gen3deval.reward.cad_reward`` (warm sandbox workers) vs a fresh process per program.

Completions: the 100 gencad100 ground-truth programs (reward 1) and a perturbed copy of each (the first
``extrude`` distance x 1.5, or the first number x 1.5), 200 in all, each against its ground truth (best_iou,
the gencad protocol). The reward is timed twice: cold (the 100 references are executed and cached in the
call; the workers are already up, their start-up is reported apart) and warm (references cached: a training
loop's steady state, where the same prompts come back every epoch).

The baseline is the usual practice in CAD RL code: for each completion a fresh ``python`` process imports
cadquery, runs the program and exports an STL (the script of ``bench_cadquery.py``, same sandbox limits),
then the parent loads the STL and computes the same best_iou against the reference mesh (references are
given to the baseline for free). Same parallelism (``--workers`` processes at a time); it runs on the first
``--subset`` completions of the interleaved list because it is slow; programs/s are compared.

Run: .venv/bin/python benchmarks/bench_reward.py [--subset 20] [--workers 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cadquery import BASELINE_SCRIPT, GENCAD
from bench_clip import RESULTS, machine, write_section
from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits

SECTION = "## CAD reward for training loops (issue 13)"
_EXTRUDE = re.compile(r"extrude\((-?\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)")


def perturbed(program: str) -> str:
    """``program`` with one dimension changed: the first extrude distance (else the first decimal) x 1.5."""
    m = _EXTRUDE.search(program) or _NUMBER.search(program)
    if m is None:
        return program
    value = float(m.group(1)) * 1.5
    return program[: m.start(1)] + repr(value) + program[m.end(1) :]


def baseline_one(program: str, reference: object, limits: Limits) -> float | None:
    """Fresh interpreter: import cadquery, run, export STL; then load it here and score best_iou."""
    from gen3deval.compare import compare
    from gen3deval.mesh.io import load_mesh

    with sandbox.private_tmpdir(prefix="gen3deval-bench-") as tmp:
        (tmp / "prog.py").write_text(program)
        (tmp / "run.py").write_text(BASELINE_SCRIPT)
        out = sandbox.run_limited(
            [sys.executable, str(tmp / "run.py"), str(tmp / "prog.py")],
            limits,
            cwd=tmp,
            env=sandbox.scrubbed_env(tmp, {"OPENBLAS_NUM_THREADS": "1"}),
        )
        if out.returncode != 0 or not (tmp / "out.stl").exists():
            return None
        mesh = load_mesh(tmp / "out.stl", up="z")  # CadQuery is +Z up; the run's frame is +Y up
    value = compare(mesh, reference, normalize="inertia", metrics=["best_iou"])["best_iou"]
    return None if value is None else float(value)


def main() -> int:
    from gen3deval.reward import cad_reward

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--subset", type=int, default=20, help="completions for the fresh-process baseline")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    load_before = machine()
    cases = [json.loads(x) for x in GENCAD.read_text().splitlines() if x.strip()]
    truths = [c["ground_truth"] for c in cases]
    programs: list[str] = []
    references: list[str] = []
    for gt in truths:  # interleaved: the baseline subset holds both kinds
        programs += [gt, perturbed(gt)]
        references += [gt, gt]
    completions = [f"```python\n{p}```" for p in programs]  # model answers: the code is extracted
    n = len(completions)

    reward = cad_reward(workers=args.workers, timeout_s=10.0)
    t0 = time.perf_counter()
    reward.warm()
    reward._pool("reference").warm(args.workers)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold = reward.score(completions, references)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = reward.score(completions, references)
    t_warm = time.perf_counter() - t0
    same = all(a.reward == b.reward for a, b in zip(cold, warm, strict=True))
    sub = args.subset
    t0 = time.perf_counter()
    warm_sub = reward.score(completions[:sub], references[:sub])
    t_warm_sub = time.perf_counter() - t0
    ref_meshes = [reward._cache[k] for k in [reward._reference_key(r, "")[0] for r in references[:sub]]]
    reward.close()

    limits = Limits()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as ex:
        base = list(ex.map(lambda i: baseline_one(programs[i], ref_meshes[i], limits), range(sub)))
    t_base = time.perf_counter() - t0
    agree = max(abs((b or 0.0) - (w.metric or 0.0)) for b, w in zip(base, warm_sub, strict=True))
    load_after = machine()

    self_r = [d.reward for d in warm[0::2]]
    pert_r = [d.reward for d in warm[1::2]]
    rows = [
        ("fresh `python` per program + best_iou (baseline)", sub, t_base),
        ("cad_reward, warm references", sub, t_warm_sub),
        ("cad_reward, cold references (100 executed + cached in the call)", n, t_cold),
        ("cad_reward, warm references", n, t_warm),
    ]
    md = [
        SECTION,
        "",
        f"Command: `.venv/bin/python benchmarks/bench_reward.py --subset {sub} --workers {args.workers}`",
        "",
        f"Machine before: {load_before}",
        f"Machine after: {load_after}",
        "",
        f"{n} completions (100 gencad100 ground truths + a perturbed copy each) vs their ground truth, "
        f"best_iou (gencad protocol), {args.workers} workers, 10 s per program; worker start-up "
        f"{startup:.1f} s (candidate + reference workers and metric processes, once per process, not counted below).",
        "",
        "| method | programs | seconds | programs/s |",
        "|---|---|---|---|",
    ]
    md += [f"| {name} | {k} | {t:.2f} | {k / t:.2f} |" for name, k, t in rows]
    speed = (sub / t_warm_sub) / (sub / t_base)
    md += [
        "",
        f"speed-up on the same {sub} completions: **{speed:.1f}x** (all {n}, warm: "
        f"{(n / t_warm) / (sub / t_base):.1f}x)",
        f"rewards: ground truth vs itself mean {statistics.mean(self_r):.4f} (min {min(self_r):.4f}); "
        f"perturbed mean {statistics.mean(pert_r):.4f}; cold == warm rewards: {same}; "
        f"largest |baseline IoU - reward IoU| on the subset: {agree:.2e} (STL vs the in-memory mesh)",
        f"per-completion seconds (warm): median {statistics.median(d.seconds for d in warm):.3f}, "
        f"max {max(d.seconds for d in warm):.3f}",
        "",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section(RESULTS, text, SECTION)
        out = Path(__file__).resolve().parent / "results" / "reward.md"
        out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
