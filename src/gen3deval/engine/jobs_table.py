"""The ``jobs`` table of the run store: one row per try of a remote job (a hosted API's generation).

A remote system's ``generate`` stage is a job on a server. The engine writes its row *before* the submit
request is sent (state ``submitting``, no handle), stores the handle (session ids) the moment the submit
returns (``running``), and the outcome when the server reports it (``complete``, ``failed`` or ``timeout``).
So after a kill a rerun polls every stored handle instead of submitting again; a row still ``submitting``
marks the only window where a submission may have reached the server without its answer being kept
(``unconfirmed`` in :func:`job_counts`): such a job is submitted again once per run and counted
(``resubmitted``).

``try`` numbers the submissions of one (case, system, attempt): ``--retry-failed`` adds a try beside the
failed one, which stays. Secrets are never in a row (the handle is the server's ids and our settings).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gen3deval.engine.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    "case" TEXT NOT NULL,
    system TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    try INTEGER NOT NULL,
    input_hash TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('submitting', 'running', 'complete', 'failed', 'timeout')),
    handle TEXT,
    created REAL NOT NULL,
    submitted REAL,
    updated REAL NOT NULL,
    finished REAL,
    retrying INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    resubmitted INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    cost REAL,
    PRIMARY KEY ("case", system, attempt, try)
);
"""

SUBMITTING, RUNNING, COMPLETE, FAILED, TIMEOUT = "submitting", "running", "complete", "failed", "timeout"
FINAL = (COMPLETE, FAILED, TIMEOUT)
_COLUMNS = (
    '"case", system, attempt, try, input_hash, state, handle, created, submitted, updated, finished, '
    "retrying, retries, resubmitted, polls, message, cost"
)


@dataclass(frozen=True)
class JobRow:
    """One try of a remote job. Times are Unix seconds.

    ``created``: the row was written, just before the submit request; ``submitted``: the handle was stored;
    ``finished``: the server's final answer (or our timeout). ``retrying``: its last request failed and is
    being retried; ``retries``: requests of this try that were retried; ``resubmitted``: submissions sent
    again because an earlier answer was lost; ``polls``: status requests; ``message``: the server's reason
    for a failure; ``cost``: credits the server reported.
    """

    case: str
    system: str
    attempt: int
    try_: int
    input_hash: str
    state: str
    handle: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    submitted: float | None = None
    updated: float = field(default_factory=time.time)
    finished: float | None = None
    retrying: bool = False
    retries: int = 0
    resubmitted: int = 0
    polls: int = 0
    message: str | None = None
    cost: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.case, self.system, self.attempt)

    def but(self, **changes: Any) -> JobRow:
        """A copy with ``changes`` and ``updated`` set to now."""
        return replace(self, updated=time.time(), **changes)


def _row(r: tuple[Any, ...]) -> JobRow:
    return JobRow(
        case=r[0],
        system=r[1],
        attempt=int(r[2]),
        try_=int(r[3]),
        input_hash=r[4],
        state=r[5],
        handle=json.loads(r[6]) if r[6] else None,
        created=float(r[7]),
        submitted=None if r[8] is None else float(r[8]),
        updated=float(r[9]),
        finished=None if r[10] is None else float(r[10]),
        retrying=bool(r[11]),
        retries=int(r[12]),
        resubmitted=int(r[13]),
        polls=int(r[14]),
        message=r[15],
        cost=None if r[16] is None else float(r[16]),
    )


def put_job(store: Store, job: JobRow) -> None:
    """Insert or replace one try (its own transaction: on disk when this returns)."""
    values = (
        job.case,
        job.system,
        job.attempt,
        job.try_,
        job.input_hash,
        job.state,
        None if job.handle is None else json.dumps(job.handle, sort_keys=True),
        job.created,
        job.submitted,
        job.updated,
        job.finished,
        int(job.retrying),
        job.retries,
        job.resubmitted,
        job.polls,
        job.message,
        job.cost,
    )
    try:
        store.db.execute(
            f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
        )
    except sqlite3.DatabaseError as exc:
        from gen3deval.engine.store import store_error

        raise store_error(store.path, exc) from exc


def load_jobs(store: Store) -> list[JobRow]:
    """Every try of every job, oldest first; [] for a store made before remote jobs existed."""
    try:
        cur = store.db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created, rowid")
        return [_row(r) for r in cur]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        from gen3deval.engine.store import store_error

        raise store_error(store.path, exc) from exc


def latest_tries(jobs: list[JobRow]) -> dict[tuple[str, str, int], JobRow]:
    """{(case, system, attempt): its latest try}."""
    out: dict[tuple[str, str, int], JobRow] = {}
    for j in jobs:
        if j.key not in out or j.try_ > out[j.key].try_:
            out[j.key] = j
    return out


JOB_COUNT_COLUMNS = ("submitted", "running", "retrying", "unconfirmed", "complete", "failed", "timed_out")


def job_counts(jobs: list[JobRow], now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per system: tries ``submitted`` (handle stored), ``running`` (submitted, no final answer yet; of
    which ``retrying``), ``unconfirmed`` (the submit may have been sent but its answer was not stored),
    ``complete``, ``failed``, ``timed_out``, ``resubmitted`` and ``oldest_running_s`` (age of the oldest
    running job, None when none runs)."""
    now = time.time() if now is None else now
    out: dict[str, dict[str, Any]] = {}
    for j in jobs:
        c = out.setdefault(
            j.system, {**dict.fromkeys(JOB_COUNT_COLUMNS, 0), "resubmitted": 0, "oldest_running_s": None}
        )
        c["resubmitted"] += j.resubmitted
        if j.state == SUBMITTING:
            c["unconfirmed"] += 1
            continue
        c["submitted"] += 1
        if j.state == RUNNING:
            c["running"] += 1
            c["retrying"] += int(j.retrying)
            age = now - (j.submitted or j.created)
            if c["oldest_running_s"] is None or age > c["oldest_running_s"]:
                c["oldest_running_s"] = age
        elif j.state == COMPLETE:
            c["complete"] += 1
        elif j.state == FAILED:
            c["failed"] += 1
        else:
            c["timed_out"] += 1
    return out


def jobs_overview(jobs: Sequence[JobRow], now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per system, from the ``jobs`` table: :func:`~gen3deval.engine.jobs_table.job_counts` (tries
    ``submitted``, ``running``, ``retrying``, ``unconfirmed``, ``complete``, ``failed``, ``timed_out``,
    ``resubmitted``, ``oldest_running_s``) plus ``jobs`` (distinct case x attempt), ``tries``,
    ``retried_failed`` (tries made by ``--retry-failed``: try > 1), ``retried`` (tries with a retried request
    or a resubmission), ``retries`` (retried requests in all) and ``cost`` (sum of the costs reported, None
    when no try reported one)."""
    out = {name: dict(c) for name, c in job_counts(list(jobs), now=now).items()}
    keys: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for j in jobs:
        c = out[j.system]
        keys[j.system].add((j.case, j.attempt))
        c["tries"] = c.get("tries", 0) + 1
        c["retried_failed"] = c.get("retried_failed", 0) + int(j.try_ > 1)
        c["retried"] = c.get("retried", 0) + int(j.retries > 0 or j.resubmitted > 0)
        c["retries"] = c.get("retries", 0) + j.retries
        if j.cost is not None:
            c["cost"] = (c.get("cost") or 0.0) + j.cost
        else:
            c.setdefault("cost", None)
    for name, c in out.items():
        c["jobs"] = len(keys[name])
    return out
