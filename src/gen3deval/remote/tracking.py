"""Per-job accounting across the layers of a remote call, without passing a job object through every API.

The engine runs each remote job in its own asyncio task and sets :data:`CURRENT_JOB` there; the HTTP client
(:class:`~gen3deval.remote.http.ApiClient`) reports each retry and a system's client reports each submission
sent again after a lost answer, to whichever job is current (a task's context is its own copy, so concurrent
jobs never see each other's tracker).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class JobTracker(Protocol):
    def on_retry(self) -> None:
        """A request of this job failed transiently and will be sent again after a backoff."""

    def on_resubmit(self) -> None:
        """A submission of this job whose answer was lost was sent again (may have made a second server job)."""


CURRENT_JOB: ContextVar[JobTracker | None] = ContextVar("gen3deval_remote_job", default=None)


def note_retry() -> None:
    job = CURRENT_JOB.get()
    if job is not None:
        job.on_retry()


def note_resubmit() -> None:
    job = CURRENT_JOB.get()
    if job is not None:
        job.on_resubmit()
