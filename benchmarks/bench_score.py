"""`gen3deval score` end to end (issue 12, "done means"): s/asset of the CLIP-score protocol as a run, the
projection to 3,000 assets, and a crash (SIGKILL mid-run) + resume that must give the same numbers.

Suite: a Toys4k-layout tree (``metadata.csv`` + ``toys4k_obj_files/<category>/<name>/mesh.obj``) of the first
N lowpoly304 objects per category written as OBJ, two captions each. CLIP: ViT-B/32 shapes with random weights
(``make_random_clip(size="b32")``: the timing of a real ViT-B/32, meaningless scores), given as a folder.
Each measured command is the CLI a user runs (`gen3deval score ... --jobs J`), in a subprocess, cold (its own
worker processes load the renderer and the model).

Run:  .venv/bin/python benchmarks/bench_score.py             # 8 per category (64 assets), writes RESULTS.md
      .venv/bin/python benchmarks/bench_score.py --quick     # 2 per category, tiny CLIP, no RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_clip import RESULTS, machine, write_section

SECTION = "## gen3deval score end to end (issue 12)"
GEN3DEVAL = [sys.executable, "-m", "gen3deval"]


def tree(root: Path, per_category: int) -> int:
    """A Toys4k tree of ``per_category`` lowpoly objects per category; returns the asset count."""
    import testdata

    picks = testdata.lowpoly_sample(per_category)
    n = len(picks)
    # toys4k_tree takes the first n of lowpoly_sample(1); widen it to per_category for this tree.
    orig = testdata.lowpoly_sample
    testdata.lowpoly_sample = lambda _k=1: picks  # type: ignore[assignment]
    try:
        testdata.toys4k_tree(root, n, bad_rows=False)
    finally:
        testdata.lowpoly_sample = orig  # type: ignore[assignment]
    return n


def score(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run([*GEN3DEVAL, "score", *args], cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def scores(run: Path) -> dict[str, str]:
    with open(run / "clip_scores.csv", newline="") as f:
        return {r["sha256"]: r["clip_score"] for r in csv.DictReader(f)}


def killed_then_resumed(args: list[str], cwd: Path, run: Path, after_s: float) -> tuple[float, int, int]:
    """Start, SIGKILL the whole process group after ``after_s``, resume; (resume wall s, stage rows stored
    before the kill, stages the resume ran)."""
    proc = subprocess.Popen(
        [*GEN3DEVAL, "score", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    import sqlite3

    with sqlite3.connect(run / "store.sqlite") as db:
        (before,) = db.execute("SELECT count(*) FROM stages").fetchone()
    wall, done = score(args, cwd)
    if done.returncode != 0:
        raise SystemExit(f"resume failed: {done.stderr[-2000:]}")
    ran = next((int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("stages: ")), -1)
    return wall, int(before), ran


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="2 per category, tiny CLIP, no RESULTS.md")
    ap.add_argument("--per-category", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    from gen3deval.models.testing import make_random_clip

    per = 2 if a.quick else a.per_category
    load_before = machine()
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        root = Path(tmp)
        n = tree(root / "toys", per)
        t = time.perf_counter()
        clip = make_random_clip(root / "clip", "tiny" if a.quick else "b32")
        made = time.perf_counter() - t
        base = [
            "--suite",
            f"toys4k:{root / 'toys'}",
            "--clip-model",
            str(clip),
            "--jobs",
            str(a.jobs),
            "--quiet",
        ]
        wall, proc = score([*base, "--out", str(root / "a")], root)
        if proc.returncode != 0:
            raise SystemExit(f"score failed: {proc.stderr[-2000:]}")
        again, _ = score([*base, "--out", str(root / "a")], root)
        resume_wall, before, ran = killed_then_resumed(
            [*base, "--out", str(root / "b")], root, root / "b", wall / 2
        )
        same = scores(root / "a") == scores(root / "b")
        per_asset = wall / n
    rows = [
        ("assets", f"{n} ({per} per category), {a.jobs} workers, CLIP {'tiny' if a.quick else 'ViT-B/32 (random)'}"),
        ("cold run, wall", f"{wall:.1f} s = {per_asset:.3f} s/asset (model folder written in {made:.1f} s, not counted)"),
        ("3,000 assets projected", f"{3000 * per_asset / 60:.1f} min"),
        ("rerun, everything stored", f"{again:.1f} s"),
        ("killed at half time, resumed", f"{before} stage rows kept; the resume ran the other {ran} in {resume_wall:.1f} s"),
        ("resumed numbers == uninterrupted", str(same)),
    ]  # fmt: skip
    md = [SECTION, "", f"`.venv/bin/python benchmarks/bench_score.py{' --quick' if a.quick else ''}`", "",
          f"Machine: {load_before}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]  # fmt: skip
    print("\n".join(md))
    if not same:
        print("error: the resumed run's scores differ from the uninterrupted run's", file=sys.stderr)
        return 1
    if not (a.quick or a.no_write):
        write_section(RESULTS, "\n".join(md), SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
