"""Engine benchmarks: (a) store + scheduling overhead per case, (b) the quickstart run end to end,
(c) scoring the 304 shared objects against perturbed copies with 1 vs 2 worker processes, (d) the score
stage with the reference prepared once per case vs once per stage.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--only a|b|c|d] [--cases 10000] [--samples 20000]``.
Prints one markdown table per part. Each part compares against a baseline measured in the same run:

- (a) the same no-op stage functions called in a bare loop (no store, no artifacts, no planning); the
  difference per case is the engine's overhead (target < 5 ms/case).
- (b) a fresh quickstart run vs resuming the finished folder (every stage skipped); target < 3 min.
- (c) ``--jobs 1`` vs ``--jobs 2`` on the same suite and protocol: cases/s and the speedup.
- (d) ``stage_score`` for 4 candidates (systems/attempts) per reference with the worker's reference cache
  emptied before every call (the per-stage loading of earlier versions) vs kept (once per case); in one
  process, same inputs, so the difference is the reference's loading (and sampling, with
  ``compare.prepare_reference``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEN3DEVAL_SHARED_DATA", REPO.parent / "shared" / "data"))


# --- (a) no-op stages (module level: spawned workers import them from here) ---------------------------------
def noop_reference(case: dict[str, Any], protocol: dict[str, Any], workdir: Path) -> Any:
    from gen3deval.engine.stages import StageResult

    p = workdir / "ref.txt"
    p.write_text(case["id"])
    return StageResult(value={"has_reference": True}, files={"mesh": str(p)})


def noop_generate(
    case: dict[str, Any],
    system: dict[str, Any],
    reference_mesh: str | None,
    ref_image: str | None,
    workdir: Path,
    attempt: int = 1,
) -> Any:
    from gen3deval.engine.stages import StageResult

    p = workdir / "cand.txt"
    p.write_text(f"{system['label']}:{case['id']}")
    return StageResult(value={"kind": "mesh"}, files={"mesh": str(p)})


def noop_score(
    candidate_mesh: str,
    reference_mesh: str,
    candidate_renders: list[str] | None,
    reference_renders: list[str] | None,
    protocol: dict[str, Any],
    workdir: Path,
) -> Any:
    from gen3deval.engine.stages import StageResult

    return StageResult(value={"chamfer_l1": 0.0})


NOOP = {"reference": noop_reference, "generate": noop_generate, "score": noop_score}


def bench_overhead(n_cases: int) -> list[str]:
    from gen3deval.config import SystemSpec, get_protocol
    from gen3deval.engine.runner import CaseEntry, Engine
    from gen3deval.suites.base import Case

    protocol = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": [], "rig": None})
    cases = [CaseEntry(key=f"c{i:05d}", case=Case(id=f"c{i:05d}"), suite="bench") for i in range(n_cases)]
    systems = [SystemSpec(name="noop", label="noop")]

    # Baseline: the same three stage functions per case in a bare loop, in fresh scratch folders.
    with tempfile.TemporaryDirectory(prefix="gen3deval-bench-") as d:
        t0 = time.perf_counter()
        for c in cases:
            wd = Path(d) / c.key
            wd.mkdir()
            noop_reference({"id": c.key}, {}, wd)
            noop_generate({"id": c.key}, {"label": "noop"}, None, None, wd)
            noop_score("", "", None, None, {}, wd)
        bare = (time.perf_counter() - t0) / n_cases
    lines = [
        f"### (a) engine overhead, no-op system, {n_cases} cases (3 stages/case: reference, generate, score)",
        "",
        "| setup | total s | ms/case | overhead ms/case (minus bare loop) | target |",
        "|---|---:|---:|---:|---|",
        f"| bare loop, no engine | {bare * n_cases:.2f} | {bare * 1e3:.3f} | - | - |",
    ]
    for jobs, inline in ((1, True), (1, False), (2, False)):
        with tempfile.TemporaryDirectory(prefix="gen3deval-bench-") as d:

            def engine(d: str = d, jobs: int = jobs, inline: bool = inline) -> Engine:
                return Engine(
                    Path(d) / "run",
                    cases,
                    systems,
                    protocol,
                    fingerprint={"name": "bench", "hash": "bench"},
                    jobs=jobs,
                    functions=NOOP,
                    needs_reference={"noop": True},
                    inline=inline,
                )

            eng = engine()
            t0 = time.perf_counter()
            res = eng.run()
            dt = time.perf_counter() - t0
            assert sum(res.ran.values()) == 3 * n_cases and sum(res.failed.values()) == 0
            # Resume of the finished folder: planning + lookups only.
            eng2 = engine()
            t1 = time.perf_counter()
            res2 = eng2.run()
            dt2 = time.perf_counter() - t1
            assert sum(res2.ran.values()) == 0
        per = dt / n_cases
        ok = "met" if per - bare < 5e-3 else "MISSED"
        name = "engine, stages in-process (inline)" if inline else f"engine, --jobs {jobs} (worker processes)"
        lines.append(f"| {name} | {dt:.2f} | {per * 1e3:.3f} | {(per - bare) * 1e3:.3f} | < 5 ms: {ok} |")
        lines.append(f"| {name}, resume (all skipped) | {dt2:.2f} | {dt2 / n_cases * 1e3:.3f} | - | - |")
    return lines


# --- (b) quickstart ----------------------------------------------------------------------------------------
def _gen3deval(*args: str, timeout: float = 900) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "gen3deval", "run", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"gen3deval run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, p.stdout.strip().splitlines()[-1]


def bench_quickstart() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="gen3deval-bench-") as d:
        out = Path(d) / "quickstart"
        fresh, _report = _gen3deval("--out", str(out))
        resumed, _ = _gen3deval("--out", str(out))
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
        stages = _stage_seconds(out)
    ok = "met" if fresh < 180 else "MISSED"
    lines = [
        "### (b) `gen3deval run` (quickstart: 16 objects x oracle, bbox, boxes, sphere; protocol default; jobs = cores)",
        "",
        "| run | wall s | rows | target |",
        "|---|---:|---:|---|",
        f"| fresh folder | {fresh:.1f} | {len(rows)} | < 180 s: {ok} |",
        f"| rerun on the finished folder (resume, all skipped) | {resumed:.1f} | {len(rows)} | - |",
        "",
        "Stage seconds summed over all rows (CPU-bound work, split over the workers):",
        "",
        "| stage | rows | total s | max s |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v[0]} | {v[1]:.1f} | {v[2]:.1f} |" for k, v in stages.items()]
    return lines


def _stage_seconds(run_dir: Path) -> dict[str, tuple[int, float, float]]:
    import sqlite3

    db = sqlite3.connect(run_dir / "store.sqlite")
    try:
        cur = db.execute(
            "SELECT stage, system, COUNT(*), SUM(seconds), MAX(seconds) FROM stages GROUP BY stage, system"
        )
        return {f"{r[0]} {r[1]}".strip(): (int(r[2]), float(r[3]), float(r[4])) for r in cur}
    finally:
        db.close()


# --- (c) 304 objects vs perturbed copies -------------------------------------------------------------------
def make_perturbed(folder: Path, noise: float = 0.005, drop: float = 0.1, seed: int = 0) -> Path:
    """Copies of the 304 objects with Gaussian vertex noise (sigma = noise x bbox diagonal) and a random
    ``drop`` share of faces removed (a crude decimation; fast_simplification is not a dependency)."""
    import numpy as np

    from gen3deval.mesh.io import load_mesh, save_mesh
    from gen3deval.mesh.types import Mesh

    rng = np.random.default_rng(seed)
    rows = [
        json.loads(line)
        for line in (SHARED / "lowpoly304" / "manifest.jsonl").read_text().splitlines()
        if line
    ]
    outputs = folder / "perturbed"
    outputs.mkdir(parents=True)
    with (folder / "manifest.jsonl").open("w") as f:
        for r in rows:
            path = SHARED / "lowpoly304" / r["path"]
            f.write(json.dumps({"id": r["id"], "category": r["category"], "path": str(path)}) + "\n")
            m = load_mesh(path)
            diag = float(np.linalg.norm(m.bounds[1] - m.bounds[0]))
            v = m.vertices + rng.normal(0.0, noise * diag, m.vertices.shape)
            keep = rng.random(m.n_faces) >= drop
            keep[0] = True
            save_mesh(Mesh.from_arrays(v, m.faces[keep]), outputs / f"{r['id']}.glb")
    return folder / "manifest.jsonl"


def bench_scoring(samples: int, limit: int | None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="gen3deval-bench-") as d:
        folder = Path(d)
        t0 = time.perf_counter()
        make_perturbed(folder)
        prep = time.perf_counter() - t0
        spec = folder / "spec.yaml"
        spec.write_text(
            "suite: manifest:manifest.jsonl\n"
            "systems: [{name: files, label: perturbed, settings: {dir: perturbed}}]\n"
            f"protocol: {{name: default, samples: {samples}, rig: null, image_metrics: []}}\n"
        )
        extra = ["--limit", str(limit)] if limit else []
        results = {}
        for jobs in (1, 2):
            out = folder / f"run{jobs}"
            dt, _ = _gen3deval(str(spec), "--out", str(out), "--jobs", str(jobs), *extra, timeout=1800)
            rows = [
                json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()
            ]
            results[jobs] = (dt, rows)
        n = len(results[1][1])
        diffs = _row_diffs(results[1][1], results[2][1])
    t1, t2 = results[1][0], results[2][0]
    f5 = [r["fscore@0.05"] for r in results[2][1] if r["fscore@0.05"] is not None]
    lines = [
        f"### (c) scoring {n} shared objects vs perturbed copies (noise 0.5% of the diagonal, 10% faces dropped)",
        f"protocol default with samples {samples}, no renders; geometry metrics incl. volume_iou "
        f"(perturbed copies prepared in {prep:.1f} s, not timed below)",
        "",
        "| jobs | wall s | cases/s | speedup vs --jobs 1 |",
        "|---:|---:|---:|---:|",
        f"| 1 | {t1:.1f} | {n / t1:.2f} | 1.00 |",
        f"| 2 | {t2:.1f} | {n / t2:.2f} | {t1 / t2:.2f} |",
        "",
        f"Rows identical between --jobs 1 and --jobs 2 (timings aside): {not diffs}. Mean F@5 of the perturbed "
        f"copies: {sum(f5) / max(1, len(f5)):.3f} (n = {len(f5)} scored; failed: "
        f"{', '.join(str(r['case']) + ' [' + str(r['error_class']) + ']' for r in results[2][1] if not r['executable'])})",
    ]
    lines += [f"- differs: {d}" for d in diffs[:10]]
    return lines


def _row_diffs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """'case key: value_a != value_b' for every differing field (timings aside)."""
    rb = {(r["case"], r["system"]): r for r in b}
    out = []
    for r in a:
        other = rb.get((r["case"], r["system"]), {})
        for k, v in r.items():
            if k != "timings" and other.get(k) != v:
                out.append(f"{r['case']} {k}: {str(v)[:80]} != {str(other.get(k))[:80]}")
    if len(a) != len(b):
        out.append(f"row counts {len(a)} != {len(b)}")
    return out


# --- (d) the score stage's reference cache -----------------------------------------------------------------
def bench_score_cache(n_refs: int, samples: int) -> list[str]:
    from gen3deval import compare as compare_module
    from gen3deval.config import get_protocol
    from gen3deval.engine import stages
    from gen3deval.mesh.io import load_mesh, save_mesh

    rows = [
        json.loads(line)
        for line in (SHARED / "lowpoly304" / "manifest.jsonl").read_text().splitlines()
        if line.strip()
    ]
    step = max(1, len(rows) // n_refs)
    refs = [SHARED / "lowpoly304" / r["path"] for r in rows[::step][:n_refs]]
    protocol = get_protocol(
        {"name": "default", "samples": samples, "rig": None, "image_metrics": []}
    ).params()
    with tempfile.TemporaryDirectory(prefix="gen3deval-bench-") as d:
        folder = Path(d)
        cands = []
        for i, ref in enumerate(refs):
            # 4 candidates per reference: 3 other objects and the reference itself (the oracle).
            others = [refs[(i + k) % len(refs)] for k in (1, 2, 3)]
            cands.append(
                [str(save_mesh(load_mesh(o), folder / f"c{i}_{k}.glb")) for k, o in enumerate(others)]
            )
            cands[-1].append(str(ref))
        timings: dict[str, float] = {}
        values: dict[str, list[Any]] = {}
        stages.stage_score(cands[0][0], str(refs[0]), None, None, protocol, folder)  # warm-up: imports
        for mode in ("per stage (cache emptied)", "once per case (cache kept)"):
            stages._REFERENCES.clear()
            out = []
            t0 = time.perf_counter()
            for ref, cs in zip(refs, cands, strict=True):
                for c in cs:
                    if mode.startswith("per stage"):
                        stages._REFERENCES.clear()
                    res = stages.stage_score(c, str(ref), None, None, protocol, folder)
                    out.append(res.value.get("chamfer_l1"))
            timings[mode] = time.perf_counter() - t0
            values[mode] = out
    n = sum(len(c) for c in cands)
    base = next(iter(timings.values()))
    prepared = (
        "compare.prepare_reference" if hasattr(compare_module, "prepare_reference") else "loaded Mesh only"
    )
    lines = [
        f"### (d) score stage: {len(refs)} references x 4 candidates, samples {samples}, geometry metrics "
        f"incl. volume_iou (cache holds: {prepared})",
        "",
        "| reference | total s | ms/score stage | speedup |",
        "|---|---:|---:|---:|",
    ]
    for mode, dt in timings.items():
        lines.append(f"| {mode} | {dt:.2f} | {dt / n * 1e3:.1f} | {base / dt:.2f} |")
    lines.append("")
    first, second = values.values()
    lines.append(f"Identical scores both ways: {first == second}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", choices=["a", "b", "c", "d"])
    ap.add_argument("--cases", type=int, default=10_000, help="(a) no-op cases")
    ap.add_argument("--samples", type=int, default=20_000, help="(c) surface samples per mesh")
    ap.add_argument("--limit", type=int, help="(c) only the first N objects")
    ap.add_argument("--refs", type=int, default=16, help="(d) references")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start\n")
    parts = {
        "a": lambda: bench_overhead(args.cases),
        "b": bench_quickstart,
        "c": lambda: bench_scoring(args.samples, args.limit),
        "d": lambda: bench_score_cache(args.refs, args.samples),
    }
    for key, fn in parts.items():
        if args.only and key != args.only:
            continue
        print("\n".join(fn()))
        print(flush=True)


if __name__ == "__main__":
    main()
