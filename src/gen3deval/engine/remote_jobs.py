"""Remote jobs of the engine: the ``generate`` stage of a remote system, run on an asyncio loop in a thread of
the engine process, so hundreds of server-side jobs wait at once while the CPU workers render and score.

One coroutine per job (:meth:`RemoteJobs.start`): submit -> poll (the system's schedule, backoff, overall
timeout) -> fetch. Only the engine's thread touches the store: the coroutine sends each new state of its
``jobs`` row (:mod:`gen3deval.engine.jobs_table`) to the engine, which writes it in :meth:`RemoteJobs.drain`;
the row written just before the submit request and the handle written when it returns are awaited (durable
before the job goes on). What a rerun does with the latest stored try of a job:

=============  ========================================================================================
no row         submit a first try
``submitting`` the submit may have been sent, its answer was not stored: submit again (``resubmitted``)
``running``    poll the stored handle (no new submission)
``complete``   poll for fresh download URLs and fetch (the server's job is done; only the download was lost)
``failed``     fail again with the stored message, or (``retry_failed``) submit a new try beside it
``timeout``    as ``failed``
=============  ========================================================================================

A done job's files are downloaded into the stage's scratch folder; the engine then runs the ``generate`` stage
in a worker with them (``fetched``), which loads, checks and stores the mesh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen3deval.engine.jobs_table import (
    COMPLETE,
    FAILED,
    RUNNING,
    SUBMITTING,
    TIMEOUT,
    JobRow,
    job_counts,
    put_job,
)
from gen3deval.engine.stages import StageResult
from gen3deval.errors import Gen3DEvalError
from gen3deval.remote.errors import RemoteError, RetryableError
from gen3deval.remote.tracking import CURRENT_JOB
from gen3deval.suites.base import Case

REMOTE_ERROR = "remote_error"  # an HTTP/protocol failure talking to the server (not the server's verdict)
SERVER_FAILED = "generation_error"  # the server reported the job failed (its message kept)
TIMEOUT_ERROR = "timeout"


@dataclass(frozen=True)
class JobTask:
    """A remote ``generate`` stage handed to :class:`RemoteJobs`.

    ``previous``: the latest stored try of this (case, system, attempt), if any; ``asset_key``: the system's
    key for reusing the uploaded input (computed by the engine); ``workdir``: where the outputs go.
    """

    case_key: str
    system: str
    attempt: int
    input_hash: str
    case: Case
    workdir: Path
    previous: JobRow | None
    retry_failed: bool
    asset_key: str | None
    feedback: dict[str, Any] | None = None  # a revision: what attempt i+1 is told about attempt i


@dataclass
class JobOutcome:
    """A finished remote job: ``fetched`` (the downloaded files, a dict of :class:`Fetched` with ``remote``,
    the facts kept in the row's ``value["remote"]``) when it is done, else ``failure`` (the failed generate
    stage, ``remote`` in its value)."""

    fetched: dict[str, Any] | None = None
    failure: StageResult | None = None


class _Job:
    """The state of one running job (its latest row) and its accounting hooks (:mod:`remote.tracking`)."""

    def __init__(self, owner: RemoteJobs, row: JobRow) -> None:
        self.owner = owner
        self.row = row

    def on_retry(self) -> None:
        self.row = self.row.but(retries=self.row.retries + 1, retrying=True)
        self.owner.send(self.row)

    def on_resubmit(self) -> None:
        self.row = self.row.but(resubmitted=self.row.resubmitted + 1)
        self.owner.send(self.row)


class RemoteJobs:
    """The event loop thread, its clients (one per system label) and the requests to the engine's store.

    Args:
        systems: {label: RemoteSystem}; ``known_assets``: {asset key: asset id} from stored handles.
    """

    def __init__(self, systems: dict[str, Any], known_assets: dict[str, str] | None = None) -> None:
        self.systems = systems
        self._requests: queue.SimpleQueue[tuple[JobRow, asyncio.Future[None]]] = queue.SimpleQueue()
        self._bell_lock = threading.Lock()
        self.bell: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.finished: queue.SimpleQueue[concurrent.futures.Future[JobOutcome]] = queue.SimpleQueue()
        self._loop = asyncio.new_event_loop()
        self._clients: dict[str, Any] = {}
        self._known_assets = dict(known_assets or {})
        self._assets: dict[str, asyncio.Future[str | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.in_flight = 0
        self.peak_in_flight = 0
        self._latest: dict[tuple[str, str, int], JobRow] = {}  # engine thread: the last row written per job
        self._thread = threading.Thread(target=self._loop.run_forever, name="gen3deval-remote", daemon=True)
        self._thread.start()

    # -- the engine's side --------------------------------------------------------------------------------
    def start(self, job: JobTask) -> concurrent.futures.Future[JobOutcome]:
        """Run ``job`` on the loop; the future resolves with its :class:`JobOutcome`. When it is done it is
        put on ``finished`` and the bell rings (the engine waits on the bell, not on each of hundreds of
        futures: ``concurrent.futures.wait`` costs a waiter per future per call)."""
        fut = asyncio.run_coroutine_threadsafe(self._run(job), self._loop)
        fut.add_done_callback(self._finished)
        return fut

    def _finished(self, fut: concurrent.futures.Future[JobOutcome]) -> None:
        self.finished.put(fut)
        self._ring()

    def _ring(self) -> None:
        with self._bell_lock:
            if not self.bell.done():
                self.bell.set_result(None)

    def renew_bell(self) -> None:
        with self._bell_lock:
            if self.bell.done():
                self.bell = concurrent.futures.Future()

    def take_finished(self) -> list[concurrent.futures.Future[JobOutcome]]:
        """The job futures that finished since the last call (engine thread)."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.finished.get_nowait())
        return out

    def drain(self, store: Any) -> int:
        """Write the rows the jobs sent (engine thread only); returns how many. A store error stops the run."""
        self.renew_bell()
        n = 0
        while True:
            try:
                row, ack = self._requests.get_nowait()
            except queue.Empty:
                return n
            try:
                put_job(store, row)
                self._latest[row.key] = row
            except Exception as exc:
                self._loop.call_soon_threadsafe(_resolve, ack, exc)
                raise
            # (A KeyboardInterrupt here is not handed to the job: asyncio would let it kill the loop thread.
            # close() cancels the jobs instead.)
            self._loop.call_soon_threadsafe(_resolve, ack, None)
            n += 1

    def status_line(self, now: float | None = None) -> str:
        """One line on the jobs of this run so far (engine thread), e.g. for a heartbeat while they wait."""
        c: dict[str, Any] = {}
        for counts in job_counts(list(self._latest.values()), now=now).values():
            for k, v in counts.items():
                if k == "oldest_running_s":
                    c[k] = max(filter(None, (c.get(k), v)), default=None)
                else:
                    c[k] = c.get(k, 0) + v
        if not c:
            return "remote jobs: none submitted yet"
        parts = [f"{c['running']} running" + (f" ({c['retrying']} retrying)" if c["retrying"] else "")]
        parts += [
            f"{c[k]} {k.replace('_', ' ')}"
            for k in ("complete", "failed", "timed_out", "unconfirmed")
            if c[k]
        ]
        oldest = c.get("oldest_running_s")
        tail = f"; oldest running {oldest / 60:.0f} min" if oldest is not None and oldest >= 60 else ""
        return "remote jobs: " + ", ".join(parts) + tail

    def close(self, store: Any | None = None) -> None:
        """Stop every job (their rows stay: a rerun polls them), close the clients and the loop; then write
        the rows sent before the stop (with ``store``), so a clean stop leaves no job unconfirmed needlessly."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = [t for t in self._tasks if not t.done()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in self._clients.values():
                with contextlib.suppress(Exception):
                    await client.aclose()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()
        if store is not None:
            with contextlib.suppress(queue.Empty):
                while True:
                    row, _ack = self._requests.get_nowait()
                    put_job(store, row)

    # -- the loop's side ----------------------------------------------------------------------------------
    def send(self, row: JobRow) -> asyncio.Future[None]:
        """Queue ``row`` for the store; await the result to know it is on disk."""
        ack: asyncio.Future[None] = self._loop.create_future()
        self._requests.put((row, ack))
        self._ring()
        return ack

    async def _client(self, label: str) -> Any:
        if label not in self._clients:
            self._clients[label] = self.systems[label].open_client()
        return self._clients[label]

    async def _asset(self, key: str | None) -> str | None:
        """The server's id of an already uploaded input, waiting for a concurrent first upload; None: we
        upload (and must call :meth:`_asset_done`)."""
        if key is None:
            return None
        while True:
            if key in self._known_assets:
                return self._known_assets[key]
            pending = self._assets.get(key)
            if pending is None:
                self._assets[key] = self._loop.create_future()
                return None
            await asyncio.shield(pending)  # shielded: a cancelled waiter must not cancel the upload's future

    def _asset_done(self, key: str | None, asset_id: str | None) -> None:
        if key is None:
            return
        if asset_id:
            self._known_assets[key] = asset_id
        pending = self._assets.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(asset_id)

    async def _run(self, job: JobTask) -> JobOutcome:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._job(job)
        finally:
            self.in_flight -= 1
            self._tasks.discard(task)

    async def _job(self, job: JobTask) -> JobOutcome:
        system = self.systems[job.system]
        prev = job.previous
        if prev is not None and prev.input_hash != job.input_hash:
            prev = _new_try(job, prev)  # another key: a new try beside the old ones, whatever their state
        if prev is not None and prev.state in (FAILED, TIMEOUT) and not job.retry_failed:
            return _failed(system, prev, prev.message or "the job failed in an earlier run")
        state = _Job(
            self, prev if prev is not None and prev.state not in (FAILED, TIMEOUT) else _new_try(job, prev)
        )
        CURRENT_JOB.set(state)
        client = await self._client(job.system)
        if state.row.state == SUBMITTING:
            outcome = await self._submit(job, system, client, state)
            if outcome is not None:
                return outcome
        return await self._follow(job, system, client, state)

    async def _submit(self, job: JobTask, system: Any, client: Any, st: _Job) -> JobOutcome | None:
        ready = time.time()
        asset_id = await self._asset(job.asset_key)
        row = st.row
        if row.created != float("inf"):
            # Stored as submitting by an earlier run: its answer was never stored (the kill window), so the
            # server may hold a job we cannot see. Submitted again, once per run, and counted.
            row = row.but(resubmitted=row.resubmitted + 1)
        else:
            row = row.but(created=ready)
        st.row = row
        await self.send(row)
        try:
            handle = await system.submit(client, job.case, job.attempt, asset_id, feedback=job.feedback)
        except Gen3DEvalError as exc:  # RemoteError included
            self._asset_done(job.asset_key, None)
            st.row = st.row.but(state=FAILED, finished=time.time(), message=str(exc), retrying=False)
            await self.send(st.row)
            return _failed(system, st.row, str(exc), REMOTE_ERROR)
        except BaseException:
            self._asset_done(job.asset_key, None)
            raise
        self._asset_done(job.asset_key, handle.get("asset_id") or asset_id)
        if job.asset_key:
            handle["asset_key"] = job.asset_key
        st.row = st.row.but(state=RUNNING, handle=handle, submitted=time.time(), retrying=False)
        await self.send(st.row)
        return None

    async def _follow(self, job: JobTask, system: Any, client: Any, st: _Job) -> JobOutcome:
        policy = system.policy()
        assert st.row.handle is not None and st.row.submitted is not None
        deadline = st.row.submitted + policy.timeout_min * 60.0
        delays = policy.poll_delays()
        garbled = 0
        # A system whose answer comes with the request (``polls = False``) is asked at once.
        first_wait = st.row.state == RUNNING and st.row.polls == 0 and getattr(system, "polls", True)
        delay = next(delays) if first_wait else 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            delay = next(delays)
            try:
                answer = await system.poll(client, st.row.handle)
            except RetryableError as exc:
                # The server is unreachable for now; the job itself goes on there: keep polling until timeout.
                if time.time() > deadline:
                    return await self._end(system, st, TIMEOUT, f"{_timeout_msg(policy)}; last error: {exc}")
                continue
            except RemoteError as exc:
                # A 2xx whose body does not parse is a glitch on the way (a cut answer), not the job's fate:
                # polled again, up to `retries` times in a row. A 4xx (no such session, bad key) is final.
                garbled += 1
                if exc.status is not None and 200 <= exc.status < 300 and garbled <= policy.retries:
                    continue
                return await self._end(system, st, FAILED, str(exc), REMOTE_ERROR)
            except Gen3DEvalError as exc:
                return await self._end(system, st, FAILED, str(exc), REMOTE_ERROR)
            garbled = 0
            handle = dict(answer.handle)
            if job.asset_key:
                handle["asset_key"] = job.asset_key
            changed = handle != st.row.handle or st.row.retrying
            st.row = st.row.but(polls=st.row.polls + 1, handle=handle, retrying=False, cost=answer.cost)
            if answer.status == "failed":
                return await self._end(system, st, FAILED, answer.message or "the server reported a failure")
            if answer.status == "done":
                break
            if changed:
                await self.send(st.row)  # a new step's session id: durable before it is polled
            if time.time() > deadline:
                return await self._end(system, st, TIMEOUT, _timeout_msg(policy))
        if st.row.state != COMPLETE:
            st.row = st.row.but(state=COMPLETE, finished=time.time())
            await self.send(st.row)
        try:
            fetched = await system.fetch(client, answer, job.workdir)
        except Gen3DEvalError as exc:  # RemoteError included
            msg = f"the job is complete on the server but its download failed: {exc}"
            return _failed(system, st.row, msg, REMOTE_ERROR)
        remote = _remote_info(system, st.row, fetched_at=time.time())
        remote.update(fetched.info)
        return JobOutcome(fetched={**fetched.to_dict(), "remote": remote})

    async def _end(
        self, system: Any, st: _Job, state: str, message: str, error_class: str = ""
    ) -> JobOutcome:
        st.row = st.row.but(state=state, finished=time.time(), message=message, retrying=False)
        await self.send(st.row)
        return _failed(system, st.row, message, error_class or SERVER_FAILED)


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


def _new_try(job: JobTask, prev: JobRow | None) -> JobRow:
    return JobRow(
        case=job.case_key,
        system=job.system,
        attempt=job.attempt,
        try_=(prev.try_ + 1) if prev is not None else 1,
        input_hash=job.input_hash,
        state=SUBMITTING,
        created=float("inf"),  # not stored yet: _submit sets the time it starts waiting
    )


def _timeout_msg(policy: Any) -> str:
    return f"the job did not finish within timeout_min={policy.timeout_min:g} minutes"


def _remote_info(system: Any, row: JobRow, fetched_at: float | None = None) -> dict[str, Any]:
    handle = row.handle or {}

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or a == float("inf") else round(b - a, 3)

    return {
        "service": system.service,
        "job_type": handle.get("type"),
        "sessions": list(handle.get("sessions") or []),
        "try": row.try_,
        "wait_s": span(row.created, row.submitted),
        "server_s": span(row.submitted, row.finished),
        "total_s": span(row.submitted, fetched_at),
        "cost": row.cost,
        "retries": row.retries,
        "resubmitted": row.resubmitted,
        "polls": row.polls,
        "parts": 0,
    }


def _failed(system: Any, row: JobRow, message: str, error_class: str = SERVER_FAILED) -> JobOutcome:
    remote = _remote_info(system, row)
    if row.state == TIMEOUT:
        error_class = TIMEOUT_ERROR
    return JobOutcome(failure=StageResult.fail(error_class, message, remote=remote))


__all__ = ["JobOutcome", "JobTask", "RemoteJobs"]
