"""The 304-object run (issue 8, "speed of the score stage"): ``gen3deval run`` on the shared lowpoly304
manifest with the systems oracle, boxes and bbox, ``--jobs 2``, protocol ``default``, fresh folder.

Baseline, measured in the same invocation and right before: the same command run from another source tree
(``--baseline-src DIR``, e.g. a ``git worktree`` of the commit before the change), so both numbers come
from the same machine state. Without ``--baseline-src`` only the current tree is timed.

Run: ``.venv/bin/python benchmarks/bench_run304.py [--baseline-src /tmp/before/src] [--limit N]``.
Prints a markdown table: wall seconds of each run and the stage seconds summed over rows per stage
(the score stage's share is what the change is about). The default ``--limit 32`` keeps ``make bench``
short; ``--limit 0`` runs all 304 objects (tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEN3DEVAL_SHARED_DATA", REPO.parent / "shared" / "data"))


def _subset(path: Path, limit: int, folder: Path) -> Path:
    """The first ``limit / categories`` objects of each category (the same cases for both trees, whatever
    their ``--limit`` does), with absolute paths."""
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cats = sorted({r["category"] for r in rows})
    per = max(1, limit // len(cats))
    keep, seen = [], dict.fromkeys(cats, 0)
    for r in rows:
        if seen[r["category"]] < per:
            seen[r["category"]] += 1
            keep.append({**r, "path": str((path.parent / r["path"]).resolve())})
    out = folder / "manifest.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def _run(src: Path | None, out: Path, manifest: Path) -> float:
    env = dict(os.environ)
    if src is not None:
        # The baseline tree goes first on the path, ahead of the editable install of this tree.
        env["PYTHONPATH"] = str(src)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from gen3deval.cli import main; sys.exit(main())",
        "run",
        "--suite",
        f"manifest:{manifest}",
        "--system",
        "oracle",
        "boxes",
        "bbox",
        "--jobs",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - t0


def _stage_seconds(out: Path) -> dict[str, tuple[int, float]]:
    con = sqlite3.connect(f"file:{out / 'store.sqlite'}?mode=ro", uri=True)
    acc: dict[str, list[float]] = defaultdict(list)
    for stage, seconds in con.execute("SELECT stage, seconds FROM stages"):
        acc[stage].append(float(seconds))
    con.close()
    return {k: (len(v), sum(v)) for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-src", type=Path, help="src/ folder of the baseline tree (run first)")
    ap.add_argument("--limit", type=int, default=32, help="cases (0: all 304)")
    args = ap.parse_args()
    if not (SHARED / "lowpoly304" / "manifest.jsonl").is_file():
        print("bench_run304: shared data not found; skipped")
        return
    load = os.getloadavg()[0]
    runs: list[tuple[str, float, dict[str, tuple[int, float]]]] = []
    with tempfile.TemporaryDirectory(prefix="gen3deval-bench304-") as d:
        manifest = SHARED / "lowpoly304" / "manifest.jsonl"
        if args.limit:
            manifest = _subset(manifest, args.limit, Path(d))
        if args.baseline_src is not None:
            out = Path(d) / "before"
            wall = _run(args.baseline_src.resolve(), out, manifest)
            runs.append(("baseline", wall, _stage_seconds(out)))
        out = Path(d) / "after"
        wall = _run(None, out, manifest)
        runs.append(("this tree", wall, _stage_seconds(out)))
    print(f"machine: {os.cpu_count()} cores; load average {load:.2f} at start; limit {args.limit or 'all'}")
    stages = sorted({s for _, _, st in runs for s in st})
    print("| run | wall s | " + " | ".join(f"{s} s (rows)" for s in stages) + " |")
    print("|---|---:|" + "---:|" * len(stages))
    for name, wall, st in runs:
        cells = [f"{st[s][1]:.1f} ({st[s][0]})" if s in st else "-" for s in stages]
        print(f"| {name} | {wall:.1f} | " + " | ".join(cells) + " |")
    if len(runs) == 2:
        print(f"\nwall ratio baseline / this tree: {runs[0][1] / runs[1][1]:.2f}x")
        if "score" in runs[0][2] and "score" in runs[1][2]:
            print(
                f"score-stage ratio baseline / this tree: {runs[0][2]['score'][1] / runs[1][2]['score'][1]:.2f}x"
            )


if __name__ == "__main__":
    main()
