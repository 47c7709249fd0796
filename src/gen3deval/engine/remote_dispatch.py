"""The engine's side of remote jobs (:mod:`gen3deval.engine.remote_jobs`): starting the remote generate stages
the planner set aside, and turning a finished job into either a failed stage or the generate stage that loads
its downloaded files in a worker. A part of :class:`gen3deval.engine.runner.Engine`."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen3deval.engine.stages import StageResult

if TYPE_CHECKING:
    from gen3deval.engine.jobs_table import JobRow
    from gen3deval.engine.runner import CaseEntry
    from gen3deval.engine.runner import _Task as Task
    from gen3deval.engine.store import Store


class RemoteDispatch:
    """Mixin of the Engine: what it reads of the engine is declared here."""

    _remote: dict[str, Any]
    _remote_pending: list[Task]
    _jobs_latest: dict[tuple[str, str, int], JobRow]
    _case_by_key: dict[str, CaseEntry]
    _seq: itertools.count[int]
    retry_failed: bool
    ready: list[Task]

    def _remote_jobs(self, store: Store) -> Any:
        """The remote-job runner when a system is remote (else None), knowing every stored job."""
        if not self._remote:
            return None
        from gen3deval.engine.jobs_table import latest_tries, load_jobs
        from gen3deval.engine.remote_jobs import RemoteJobs

        jobs = load_jobs(store)
        self._jobs_latest = latest_tries(jobs)
        assets = {
            str(j.handle["asset_key"]): str(j.handle["asset_id"])
            for j in jobs
            if j.handle and j.handle.get("asset_key") and j.handle.get("asset_id")
        }
        return RemoteJobs(self._remote, assets)

    def _start_remote(self, remote: Any, inflight: dict[Future[Any], tuple[Task, Path]], tmp: Path) -> None:
        """Start every remote generate stage that is waiting (the runner's limits pace the requests)."""
        from gen3deval.engine.remote_jobs import JobTask

        for task in self._remote_pending:
            workdir = tmp / f"r{next(self._seq)}"
            workdir.mkdir(parents=True, exist_ok=True)
            case = self._case_by_key[task.case].case
            if case.image is None and task.kwargs.get("ref_image"):
                # As for local systems: a mesh suite's image-conditioned system sees the rendered reference.
                case = dataclasses.replace(case, image=task.kwargs["ref_image"])
            obj = self._remote[task.system]
            try:
                asset_key = obj.asset_key(case)
            except OSError:
                asset_key = None  # an unreadable image: the submit reports it
            job = JobTask(
                case_key=task.case,
                system=task.system,
                attempt=task.attempt,
                input_hash=task.input_hash,
                case=case,
                workdir=workdir,
                previous=self._jobs_latest.get((task.case, task.system, task.attempt)),
                retry_failed=self.retry_failed,
                asset_key=asset_key,
                feedback=task.kwargs.get("previous"),
            )
            task.started = time.time()
            inflight[remote.start(job)] = (task, workdir)
        self._remote_pending.clear()

    def _remote_done(
        self, fut: Future[Any], task: Task, workdir: Path
    ) -> tuple[Task, Path, StageResult, float, float] | None:
        """A remote job ended: its failure to commit, or None when its files go on to the generate stage."""
        now = time.time()
        try:
            outcome = fut.result()
        except Exception as exc:  # a bug in a system's client: that stage fails, the run goes on
            result = StageResult.fail("generation_error", f"engine: {type(exc).__name__}: {exc}")
            return (task, workdir, result, task.started or now, now)
        if outcome.failure is not None:
            return (task, workdir, outcome.failure, task.started or now, now)
        # The downloaded files go on to the generate stage in a worker, ahead of new work.
        follow = dataclasses.replace(
            task,
            priority=(-1, *task.priority[1:]),
            kwargs={**task.kwargs, "fetched": outcome.fetched},
            workdir=workdir,
        )
        heapq.heappush(self.ready, follow)
        return None
