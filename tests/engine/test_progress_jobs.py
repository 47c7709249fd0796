"""``gen3deval progress RUN_DIR`` on a run with remote jobs: the per-system jobs table (submitted, running,
retrying, unconfirmed, complete, failed, timed out, oldest running age); nothing for runs without jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gen3deval.cli import main
from gen3deval.commands.progress_cmd import jobs_table
from gen3deval.engine.jobs_table import JobRow, load_jobs, put_job
from gen3deval.engine.store import Store
from remote_runs import Job, make_run


def _tries(now: float) -> dict[str, list[dict[str, Any]]]:
    running = {"state": "running", "created": now - 800, "handle": {"sessions": ["S"]}}
    return {
        # csm-base: 2 running (one retrying, the oldest submitted 725 s ago), 1 unconfirmed, 1 complete.
        "a": [{**running, "submitted": now - 725}],
        "b": [{**running, "submitted": now - 30, "retrying": True}],
        "c": [{"state": "submitting", "created": now - 5}],
        "d": [{"state": "complete", "submitted": now - 900, "finished": now - 100}],
    }


def _run(tmp_path: Path) -> float:
    now = time.time()
    tries = _tries(now)
    jobs = [Job(c, "csm-base", tries=t) for c, t in tries.items()]
    # csm-turbo: one failed then failed again (--retry-failed), one timed out; csm-kit: no job yet.
    jobs += [
        Job("a", "csm-turbo", tries=[{"state": "failed", "submitted": now - 50}] * 2),
        Job("b", "csm-turbo", tries=[{"state": "timeout", "submitted": now - 6000}]),
    ]
    make_run(tmp_path, list(tries), ["csm-base", "csm-turbo", "csm-kit"], [])
    with Store(tmp_path) as store:
        for j in jobs:
            for n, t in enumerate(j.tries, start=1):
                put_job(store, JobRow(case=j.case, system=j.system, attempt=1, try_=n, input_hash="h", **t))
    return now


def _line(out: str, system: str) -> list[str]:
    """The cells of ``system``'s row in the jobs table (printed after the stage table)."""
    jobs = out[out.index("remote jobs") :]
    line = next(ln for ln in jobs.splitlines() if f" {system} " in ln).replace("┃", "│")
    return [c.strip() for c in line.split("│") if c.strip()]


def test_progress_shows_remote_jobs_per_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path)
    assert main(["progress", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "remote jobs" in out
    header = _line(out, "system")
    assert header == [
        "system",
        "submitted",
        "running",
        "retrying",
        "unconfirmed",
        "complete",
        "failed",
        "timed out",
        "oldest running",
    ]
    assert _line(out, "csm-base") == ["csm-base", "3", "2", "1", "1", "1", "0", "0", "12 min"]
    assert _line(out, "csm-turbo") == ["csm-turbo", "3", "0", "0", "0", "0", "2", "1", "-"]
    assert " csm-kit " not in out[out.index("remote jobs") :]


def test_jobs_table_order_and_age(tmp_path: Path) -> None:
    now = _run(tmp_path)
    with Store(tmp_path, readonly=True) as store:
        jobs = load_jobs(store)
    table = jobs_table(jobs, ["csm-turbo", "csm-base"], now=now + 3600)
    rows = list(zip(*(list(c.cells) for c in table.columns), strict=True))
    assert [r[0] for r in rows] == ["csm-turbo", "csm-base"]
    assert rows[1][-1] == "72 min"  # the oldest running job was submitted 725 s + 1 h ago
    later = jobs_table(jobs, [], now=now + 2 * 3600)
    assert list(later.columns[-1].cells) == ["2.2 h", "-"]  # systems not named: alphabetical


def test_progress_without_jobs_shows_no_jobs_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_run(tmp_path, ["x"], ["local"], [Job("x", "local")])
    assert main(["progress", str(tmp_path)]) == 0
    assert "remote jobs" not in capsys.readouterr().out
