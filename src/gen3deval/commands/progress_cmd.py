"""``gen3deval progress RUN_DIR``: done / failed / left per stage and system (works while a run is going on),
then, for runs with remote jobs (hosted APIs), the state of those jobs per system."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gen3deval.engine.jobs_table import JobRow

HELP = "show done/failed/left per stage and system of a run folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `gen3deval run`")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gen3deval.engine.jobs_table import load_jobs
    from gen3deval.engine.results import stage_progress
    from gen3deval.engine.store import STAGES, Store, require_run_dir

    run_dir = require_run_dir(args.run_dir)
    with Store(run_dir, readonly=True) as store:
        counts = stage_progress(store)
        jobs = load_jobs(store)
        sessions = store.sessions()
        n_cases = len(store.get_meta("cases", {}) or {})
        systems = store.get_meta("systems", []) or []
    table = Table(title=f"{run_dir}: {n_cases} cases, {len(systems)} systems, {len(sessions)} run sessions")
    for col in ("stage", "system", "done", "failed", "left"):
        table.add_column(col, justify="left" if col in ("stage", "system") else "right")
    order = {s: i for i, s in enumerate(STAGES)}
    sys_order = {s: i for i, s in enumerate(["", *systems])}
    total_left = 0
    for (stage, system), c in sorted(
        counts.items(), key=lambda kv: (order[kv[0][0]], sys_order.get(kv[0][1], 99))
    ):
        table.add_row(stage, system or "(per case)", str(c["done"]), str(c["failed"]), str(c["left"]))
        total_left += c["left"]
    console = Console(width=120)
    console.print(table)
    running = bool(sessions) and sessions[-1]["finished"] is None
    state = "complete" if total_left == 0 else ("running or interrupted" if running else "incomplete")
    console.print(f"{total_left} stages left: {state}")
    if jobs:
        console.print(jobs_table(jobs, systems))
    return 0


def jobs_table(jobs: list[JobRow], systems: list[str], now: float | None = None) -> Any:
    """The remote jobs of a run (hosted APIs), per system: tries submitted (handle stored), running (of
    which retrying a failed request), unconfirmed (killed while submitting: resubmitted once by the next
    run), complete, failed, timed out, and the age of the oldest running job."""
    from rich.table import Table

    from gen3deval.engine.jobs_table import job_counts
    from gen3deval.report.remote_jobs import human_duration

    counts = job_counts(jobs, now=now)
    table = Table(title="remote jobs (tries)")
    columns = ("submitted", "running", "retrying", "unconfirmed", "complete", "failed", "timed_out")
    table.add_column("system", justify="left")
    for col in columns:
        table.add_column(col.replace("_", " "), justify="right")
    table.add_column("oldest running", justify="right")
    order = {s: i for i, s in enumerate(systems)}
    for system in sorted(counts, key=lambda s: (order.get(s, len(order)), s)):
        c = counts[system]
        age = c["oldest_running_s"]
        table.add_row(system, *(str(c[k]) for k in columns), "-" if age is None else human_duration(age))
    return table
