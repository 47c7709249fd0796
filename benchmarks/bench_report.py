"""Benchmark the report statistics and the whole report (python benchmarks/bench_report.py).

(a) Bootstrap interval of one column (10,000 resamples, seed 0): gen3deval's vectorised implementation
    (cached count matrix: one matrix-vector product for a mean, two lookups for a median) against the obvious
    baseline, a Python loop over resamples with ``rng.integers`` + ``np.mean``/``np.median``.
(b) ``write_reports`` for a realistic run: 304 cases x 4 systems, 13 metrics, 8 categories, distinct 512x512
    RGBA PNGs for each reference and render: wall time of the statistics (summarize) and of the full write.
    "first call" includes drawing the resamples for that n; "cached" reuses them (the report reuses one draw
    for every metric and system with the same number of cases).
(c) With a run folder argument (``python benchmarks/bench_report.py runs/quickstart``): the report of that
    real run rebuilt in a temp folder, its size, the embedded bytes per picture (thumbnail + enlargement)
    and the size extrapolated to 304 cases x (1 reference + 4 systems) pictures.
Prints markdown tables.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gen3deval.report import bootstrap as agg
from gen3deval.report import read_results, write_reports
from gen3deval.report.bootstrap import bootstrap_ci
from gen3deval.report.summary import summarize

N_RESAMPLES = 10_000
KEYS_LOW = ("chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "mse")
KEYS_HIGH = ("fscore@0.01", "fscore@0.02", "fscore@0.05", "normal_consistency", "volume_iou", "psnr", "ssim")
KEYS_HIGH += ("silhouette_iou",)


def baseline_ci(values: np.ndarray, statistic: str) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    n = len(values)
    fn = np.mean if statistic == "mean" else np.median
    reps = np.array([fn(values[rng.integers(0, n, n)]) for _ in range(N_RESAMPLES)])
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_bootstrap() -> list[str]:
    lines = [
        "| n cases | statistic | baseline loop (s) | gen3deval first call (s) | speedup | gen3deval cached (s) "
        "| speedup (cached) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in (38, 304):
        values = np.random.default_rng(n).gamma(2.0, 1.0, n)
        for statistic in ("mean", "median"):
            base = timed(lambda v=values, s=statistic: baseline_ci(v, s), repeat=1)
            agg._cached_summary.cache_clear()
            first = timed(lambda v=values, s=statistic: bootstrap_ci(v, statistic=s), repeat=1)
            cached = timed(lambda v=values, s=statistic: bootstrap_ci(v, statistic=s), repeat=5)
            # Sanity: the two implementations draw differently but must agree statistically.
            b_lo, b_hi = baseline_ci(values, statistic)
            g_lo, g_hi = bootstrap_ci(values, statistic=statistic)
            width = b_hi - b_lo
            assert abs(g_lo - b_lo) < 0.1 * width and abs(g_hi - b_hi) < 0.1 * width, (n, statistic)
            lines.append(
                f"| {n} | {statistic} | {base:.3f} | {first:.4f} | {base / first:.1f}x | {cached:.4f} "
                f"| {base / cached:.0f}x |"
            )
    return lines


def make_run(run_dir: Path, n_cases: int = 304) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    systems = ["oracle", "boxes", "bbox", "sphere"]
    cats = ["character", "container", "food", "furniture", "nature", "prop", "tool", "vehicle"]
    (run_dir / "artifacts").mkdir(parents=True)
    rows = []
    for k in range(n_cases):
        for j in range(len(systems) + 1):  # one reference and one render per system, distinct files
            img = np.full((512, 512, 4), 0, np.uint8)
            img[100 + k % 50 : 400 - 20 * j, 150:350] = (*rng.integers(0, 255, 3), 255)
            Image.fromarray(img).save(run_dir / "artifacts" / f"{k}_{j}.png")
        for j, system in enumerate(systems):
            ok = j == 0 or rng.random() > 0.1 * j
            r = {
                "case": f"case_{k:03d}",
                "category": cats[k % 8],
                "system": system,
                "attempt": 1,
                "executable": bool(ok),
                "error_class": None if ok else "runtime",
                "error": None if ok else "boom",
                "artifacts": {
                    "ref_image": f"artifacts/{k}_4.png",
                    "render": f"artifacts/{k}_{j}.png" if ok else None,
                },
                "protocol": {"hash": "bench"},
            }
            for key in KEYS_LOW + KEYS_HIGH:
                r[key] = float(rng.random()) if ok else None
            rows.append(r)
    meta = {
        "run_id": "bench",
        "suite": "bench",
        "systems": systems,
        "protocol": {"name": "default", "hash": "bench"},
    }
    return rows, meta


def bench_report() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        rows, meta = make_run(run_dir)
        agg._cached_summary.cache_clear()
        t_sum = timed(lambda: summarize(rows, meta), repeat=1)
        agg._cached_summary.cache_clear()
        t0 = time.perf_counter()
        report = write_reports(run_dir, rows, meta)
        t_all = time.perf_counter() - t0
        size = report.stat().st_size
        n_img = report.read_text().count('<a class="zoom"')
    n_est = 4 * 13 * 2 * (1 + 8) + 4 * 9  # (overall + 8 categories) x 2 aggregates + VSR
    return [
        "| run | estimates with 95% CI | summarize (s) | write_reports total (s) | report.html (MB) |",
        "|---|---|---|---|---|",
        f"| 304 cases x 4 systems, 13 metrics, {n_img} pictures | {n_est} | {t_sum:.2f} | {t_all:.2f} "
        f"| {size / 1e6:.2f} |",
    ]


def bench_real(run_dir: Path) -> list[str]:
    """report.html of a real run rebuilt elsewhere (artifact paths made absolute): size and bytes a picture."""
    rows = read_results(run_dir / "results.jsonl")
    meta = json.loads((run_dir / "summary.json").read_text())["meta"]
    for r in rows:
        arts = r.get("artifacts") or {}
        for k in ("ref_image", "render"):
            if arts.get(k):
                arts[k] = str((run_dir / arts[k]).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        page = write_reports(Path(tmp), rows, meta).read_text()
        seconds = time.perf_counter() - t0
    uris = re.findall(r'(?:src|data-full)="(data:image/[^"]+)"', page)
    pictures = page.count('<a class="zoom"')
    per = sum(len(u) for u in uris) / max(pictures, 1)
    rest = len(page) - sum(len(u) for u in uris)
    n_cases = len({r["case"] for r in rows})
    est = 304 * 5 * per + rest * 304 / max(n_cases, 1)
    return [
        "| run | cases | pictures | report.html (MB) | embedded per picture (kB) | write_reports (s) "
        "| estimate, 304 cases x 5 pictures (MB) |",
        "|---|---|---|---|---|---|---|",
        f"| {run_dir.name} | {n_cases} | {pictures} | {len(page) / 1e6:.2f} | {per / 1e3:.1f} | {seconds:.2f} "
        f"| {est / 1e6:.1f} |",
    ]


def main() -> int:
    if len(sys.argv) > 1:
        print("## report.html of a real run\n")
        print("\n".join(bench_real(Path(sys.argv[1]))))
        return 0
    print("## Bootstrap interval, 10,000 resamples (lower time is better)\n")
    print("\n".join(bench_bootstrap()))
    print("\n## write_reports on a synthetic full run\n")
    print("\n".join(bench_report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
