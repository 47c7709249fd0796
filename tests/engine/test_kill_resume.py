"""kill -9 at random moments, then resume: nothing finished is lost or repeated (stand-in stages)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gen3deval.engine.results import build_rows
from gen3deval.engine.store import Store, StoreError

DRIVER = Path(__file__).resolve().parent / "engine_driver.py"
N_CASES = 8
SLEEP = 0.05  # seconds per generate stage (a system setting: it must be the same in every session)


def _start(run_dir: Path, jobs: int, sleep: float, pids: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if pids is not None:
        env["GEN3DEVAL_TEST_PIDS"] = str(pids)
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(run_dir), str(N_CASES), str(jobs), str(sleep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _rows(run_dir: Path) -> dict[Any, Any]:
    if not (run_dir / "store.sqlite").exists():
        return {}
    with Store(run_dir, readonly=True) as store:
        return store.all()


def _results(run_dir: Path) -> list[dict[str, Any]]:
    with Store(run_dir, readonly=True) as store:
        rows, unfinished = build_rows(store)
    assert not unfinished
    return [{k: v for k, v in r.items() if k != "timings"} for r in rows]


def _wait_rows(run_dir: Path, proc: subprocess.Popen[bytes], n: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(_rows(run_dir)) >= n:
                return
        except (sqlite3.Error, StoreError):  # the engine is still creating the store
            pass
        time.sleep(0.01)


def test_kill9_at_random_moments_then_resume(tmp_path: Path) -> None:
    reference = tmp_path / "uninterrupted"
    p = _start(reference, 0, SLEEP)
    assert p.wait(timeout=120) == 0, p.stdout.read().decode() if p.stdout else ""
    total = len(_rows(reference))

    run = tmp_path / "killed"
    rng = random.Random(1)
    seen: dict[Any, Any] = {}  # every committed row observed between kills
    kills = 0
    pids = tmp_path / "pids"
    pids.mkdir()
    for i in range(5):
        jobs = 2 if i == 0 else 0  # one session with a worker pool (orphaned workers must leave), then inline
        p = _start(run, jobs, SLEEP, pids if i == 0 else None)
        # Kill once a random number of new rows is in, plus a random delay: mid-stage, mid-commit, planning.
        _wait_rows(run, p, len(seen) + rng.randint(1, 6))
        time.sleep(rng.uniform(0.0, 0.05))
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        now = _rows(run)
        for key, row in seen.items():
            # A committed row survives every later kill unchanged: not redone, not lost.
            assert now[key] == row, key
        seen.update(now)
    assert kills >= 3 and 0 < len(seen) < total
    p = _start(run, 2, SLEEP)
    assert p.wait(timeout=120) == 0, p.stdout.read().decode() if p.stdout else ""
    final = _rows(run)
    for key, row in seen.items():
        assert final[key] == row, key
    assert all(r.runs == 1 for r in final.values())  # no stage ran twice
    assert len(final) == total  # no duplicates, nothing missing
    assert _results(run) == _results(reference)
    # The worker processes of the killed session left (they watch their parent).
    workers = [int(p.name) for p in pids.iterdir()]
    assert workers
    time.sleep(1.0)
    assert not [pid for pid in workers if _alive(pid)]
