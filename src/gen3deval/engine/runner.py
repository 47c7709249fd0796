"""The run engine: plans the pipelines of every (case, system, attempt), skips finished stages, runs the
rest with bounded concurrency and commits each result to the store.

The stages, their order and when each applies are defined once in :mod:`gen3deval.engine.pipeline`
(``reference`` once per case, then per pipeline ``generate`` -> ``execute`` (programs) -> ``render`` (when
the protocol has a rig) -> ``score`` (when the case has a reference)). A system makes ``attempts(case)``
attempts; each is its own pipeline sharing the case's reference.

Resume: a stage is done exactly when the store has its row with the same ``input_hash`` (its key: the
case, the system spec, the protocol parameters, the content of the files it reads -- the case's reference
and image files, the system's outside inputs via ``input_fingerprint`` -- and the artifacts of the stages
it reads). So a changed input file reruns exactly the pipelines that read it, and a byte-identical output
of a rerun stage leaves the stages after it done. A failed stage with an unchanged key is not rerun unless
``retry_failed``. Workers write into a scratch folder; the engine moves the files into the
content-addressed artifact store and then commits the row in one transaction, so after ``kill -9`` at any
moment a rerun redoes at most the stages that were in flight, and never a committed one.

Concurrency: ``jobs`` worker processes (``spawn``ed, so no GL context or thread is inherited through a
fork; each worker creates its own renderer), also for ``jobs=1``: a stage that crashes its process (a
segfault in a native library, an OOM kill) is rerun alone and, if it dies again, failed with that reason
while the run goes on. Later stages have priority over new cases, so results arrive steadily and a kill
loses little; stages of one case run close together, so a worker's reference cache keeps hitting.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen3deval.config import Protocol, SystemSpec, stable_hash
from gen3deval.engine import pipeline as pl
from gen3deval.engine.artifacts import ArtifactStore
from gen3deval.engine.batching import BatchQueues
from gen3deval.engine.lanes import run_executor
from gen3deval.engine.pipeline import row_digest
from gen3deval.engine.progress import NullProgress
from gen3deval.engine.remote_dispatch import RemoteDispatch
from gen3deval.engine.run_meta import write_run_meta
from gen3deval.engine.shards import check_shard, record_shard, select
from gen3deval.engine.stage_inputs import StageInputs, case_fingerprint
from gen3deval.engine.stages import UNEXPECTED_ERROR_CLASS, StageResult
from gen3deval.engine.store import REFERENCE_SYSTEM, StageRow, Store
from gen3deval.engine.workers import LOCK_NAME, RunLock, hidden_env, work_batch
from gen3deval.errors import ConfigError, DependencyError
from gen3deval.suites.base import Case

TMP_DIR = "tmp"
HEARTBEAT_S = 60.0  # seconds between status lines of remote jobs waiting on their servers
STAGES = pl.STAGES
__all__ = ["LOCK_NAME", "CaseEntry", "Engine", "RunLock", "RunResult", "case_fingerprint", "row_digest"]


@dataclass(frozen=True)
class CaseEntry:
    """A case of the run: ``key`` is the row's ``case`` (the id, prefixed by the suite when a run has several)."""

    key: str
    case: Case
    suite: str


@dataclass(order=True)
class _Task:
    priority: tuple[int, ...]
    stage: str = field(compare=False)
    case: str = field(compare=False)
    system: str = field(compare=False)
    attempt: int = field(compare=False)
    input_hash: str = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)
    crashes: int = field(default=0, compare=False)
    workdir: Path | None = field(default=None, compare=False)  # a scratch folder holding its inputs already
    started: float | None = field(default=None, compare=False)  # when its remote job started

    @property
    def label(self) -> str:
        return _label(self.case, self.system, self.attempt)


@dataclass
class _Pipe:
    """One (case, system, attempt) pipeline: the rows confirmed in this session (the reference apart),
    the stages it counts in the progress totals and the stages queued."""

    case: str
    system: str
    attempt: int
    rows: dict[str, StageRow] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)


@dataclass
class RunResult:
    """What :meth:`Engine.run` did: counts of stages run / skipped / failed, and the wall time."""

    ran: dict[str, int]
    skipped: dict[str, int]
    failed: dict[str, int]
    seconds: float
    pending: int = 0


# Score stages per worker call when CLIP scores them: 8 assets x 8 views = 64 images per forward pass.
SCORE_BATCH = 8


def _label(case: str, system: str, attempt: int) -> str:
    return f"{case} {system}".strip() + (f" #{attempt}" if attempt != 1 else "")


class Engine(RemoteDispatch, StageInputs):
    """Runs the pipelines of ``cases`` x ``systems`` x attempts into ``run_dir`` under ``protocol``.

    Args:
        run_dir: the run folder (store, artifacts, reports).
        cases: the cases, in order. systems: the systems (labels unique).
        protocol: the protocol; ``fingerprint`` its fingerprint dict (recorded in meta and every row).
        jobs: worker processes. retries: retries of transient errors per stage.
        progress: a reporter (see :mod:`gen3deval.engine.progress`).
        retry_failed: rerun stages whose stored row failed even when their key is unchanged.
        functions: stage functions replacing :data:`~gen3deval.engine.stages.STAGE_FUNCTIONS` (tests,
            benchmarks; must be importable module-level functions when ``jobs > 1``).
        needs_reference: {system label: bool} overriding the systems' ``needs_reference`` (tests).
        system_objects: {system label: object} answering the planning hooks (``attempts``,
            ``input_fingerprint``, ``preflight``) instead of the registered system (tests). Systems that are
            neither given nor registered (stand-in stage functions) make one attempt and read no files.
        inline: run the stages in this process, one at a time (tests, benchmarks). Otherwise they run in
            ``jobs`` worker processes even for ``jobs=1``, so a native crash in a stage (a segfault in a
            geometry library) fails that stage instead of killing the run.
        executor / ray_address / ray_shared_dir: "local" (the worker processes above) or "ray": stages
            as Ray tasks (see :mod:`gen3deval.engine.ray_executor`) on the cluster at ``ray_address`` (None:
            a Ray instance of ``jobs`` CPUs on this machine), the run folder inside ``ray_shared_dir``.
        shard: (I, N): plan only the (case, system) pipelines of shard I of N, and the references of their
            cases (see :mod:`gen3deval.engine.shards`); the folder records the shard.
        score_batch: score stages per worker call when CLIP scores them (one forward pass for the images
            of ``score_batch`` assets, see :mod:`gen3deval.engine.batching`); 1 = one at a time.
        models / skipped_metrics: the learned models found ({model: {"id", "path", "weights_sha256"}}) and
            the learned metrics skipped ({key: why}), see :mod:`gen3deval.engine.learned`; resolved here
            when not given.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cases: list[CaseEntry],
        systems: Iterable[SystemSpec],
        protocol: Protocol,
        *,
        fingerprint: dict[str, Any],
        jobs: int = 1,
        retries: int = 2,
        progress: NullProgress | None = None,
        retry_failed: bool = False,
        functions: dict[str, Callable[..., StageResult]] | None = None,
        needs_reference: dict[str, bool] | None = None,
        system_objects: dict[str, Any] | None = None,
        inline: bool = False,
        models: dict[str, dict[str, Any]] | None = None,
        skipped_metrics: dict[str, str] | None = None,
        score_batch: int = SCORE_BATCH,
        executor: str = "local",
        ray_address: str | None = None,
        ray_shared_dir: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.inline = inline
        if executor not in ("local", "ray") or (executor == "ray" and inline):
            raise ConfigError(f"executor: expected local or ray (not with inline), got {executor!r}")
        if executor == "ray":
            from gen3deval.engine.ray_executor import check_shared_dir

            check_shared_dir(self.run_dir, ray_shared_dir)
        self.executor_kind, self.ray_address, self.ray_shared_dir = executor, ray_address, ray_shared_dir
        self.shard = check_shard(shard)
        # Workers render with the backend the fingerprint recorded ("gl" or "raycast"), never a silent mix.
        backend = str((fingerprint.get("renderer") or {}).get("renderer", "auto"))
        self.render_backend = backend if backend in ("gl", "raycast") else "auto"
        self.cases = cases
        self.systems = list(systems)
        self.protocol = protocol
        if models is None or skipped_metrics is None:
            from gen3deval.engine.learned import resolve_models

            models, skipped_metrics = resolve_models(protocol)
        self.models = models
        self.skipped_metrics = skipped_metrics
        clip_scored = "clip" in models and any(m == "clip" for m in protocol.learned().values())
        self.score_batch = max(1, int(score_batch)) if clip_scored else 1
        self.params = protocol.params()
        self.params_hash = protocol.params_hash()
        self.fingerprint = fingerprint
        # The fingerprint's own hash (gen3deval.protocol.fingerprint) is what reports compare runs by.
        self.protocol_hash = str(fingerprint.get("hash") or stable_hash(fingerprint))
        self.jobs = max(1, int(jobs))
        self.retries = retries
        self.retry_failed = retry_failed
        self.progress = progress or NullProgress()
        self.functions = functions
        self.artifacts = ArtifactStore(self.run_dir)
        self.warnings: list[str] = []  # from preflight (gen3deval.engine.build.preflight)
        # System objects live in this process too: the planning hooks are asked here, before any work.
        self.objects: dict[str, Any] = {}
        for s in self.systems:
            if system_objects and s.label in system_objects:
                self.objects[s.label] = system_objects[s.label]
                continue
            from gen3deval.systems.base import SYSTEMS, create_system

            if s.name in SYSTEMS:
                self.objects[s.label] = create_system(s.name, s.settings, base_dir=s.base_dir)
        self._needs_ref: dict[str, bool] = {}
        self._ctx: dict[str, pl.Context] = {}
        for s in self.systems:
            obj = self.objects.get(s.label)
            if needs_reference and s.label in needs_reference:
                self._needs_ref[s.label] = needs_reference[s.label]
            else:
                self._needs_ref[s.label] = bool(getattr(obj, "needs_reference", False))
            output = getattr(obj, "output", "any")
            program = True if output == "program" else False if output == "mesh" else None
            revises = bool(getattr(obj, "revises", False))
            self._ctx[s.label] = pl.Context.of(protocol, program=program, revises=revises)
        self._case_index = {c.key: i for i, c in enumerate(cases)}
        # Computed once: every stage of a case hands its dict to a worker and hashes it into its inputs.
        self._case_dict = {c.key: dataclasses.asdict(c.case) for c in cases}
        self._case_fp = {c.key: case_fingerprint(c.case) for c in cases}
        self._sys_dict = {s.label: s.to_dict() for s in self.systems}
        self._case_by_key = {c.key: c for c in cases}
        self._sys_index = {s.label: i for i, s in enumerate(self.systems)}
        self._attempts: dict[tuple[str, str], int] | None = None
        # Remote systems: their generate stage is a job on a server, run by RemoteJobs in this process.
        self._remote = {label: o for label, o in self.objects.items() if getattr(o, "remote", False)}
        # The generate key leaves out settings that do not change the output (limits, timeouts), so that
        # changing them never pays for a remote job again.
        self._sys_key = {
            s.label: {
                **self._sys_dict[s.label],
                "settings": {
                    k: v
                    for k, v in s.settings.items()
                    if k not in getattr(self.objects.get(s.label), "operational_settings", ())
                },
            }
            for s in self.systems
        }

    # -- planning hooks of the systems -----------------------------------------------------------
    def needs_reference(self, system: str) -> bool:
        """Whether the system (label) is handed the reference mesh (and cannot work without one)."""
        return self._needs_ref[system]

    def attempts(self) -> dict[tuple[str, str], int]:
        """{(case key, system label): attempts}, asked of each system once (``System.attempts``)."""
        if self._attempts is None:
            out: dict[tuple[str, str], int] = {}
            for s in self.systems:
                obj = self.objects.get(s.label)
                for c in self.cases:
                    n = obj.attempts(c.case) if obj is not None else 1
                    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                        raise ConfigError(
                            f"system {s.label!r}: attempts({c.case.id!r}) = {n!r}, expected >= 1"
                        )
                    out[(c.key, s.label)] = n
            self._attempts = out
        return self._attempts

    # -- planning --------------------------------------------------------------------------------
    def _stored(self, stage: str, case: str, system: str, attempt: int, input_hash: str) -> StageRow | None:
        """The stored row of a stage when it is finished for this key (a failed one unless retry_failed)."""
        row = self.rows.get((case, system, attempt, stage))
        if row is None or row.input_hash != input_hash or (self.retry_failed and not row.ok):
            return None
        return row

    def _offer(
        self, stage: str, case: str, system: str, attempt: int, input_hash: str, kwargs: dict[str, Any]
    ) -> StageRow | None:
        """The stored row when the stage is finished already (counted as skipped), else queue it: None."""
        row = self._stored(stage, case, system, attempt, input_hash)
        if row is not None:
            self.skipped[stage] += 1
            self.progress.update(stage, row.status, _label(case, system, attempt), skipped=True)
            return row
        prio = (
            0,
            -STAGES.index(stage),
            self._case_index[case],
            self._sys_index.get(system, -1),
            attempt,
            next(self._seq),
        )
        if stage == pl.GENERATE and system in self._remote and "fetched" not in kwargs:
            self._remote_pending.append(_Task(prio, stage, case, system, attempt, input_hash, kwargs))
            return None
        task = _Task(prio, stage, case, system, attempt, input_hash, kwargs)
        size = self._batch_size(stage, system)
        if size > 1:
            self._batched.offer(stage if stage == pl.SCORE else f"{stage}:{system}", size, task)
        else:
            heapq.heappush(self.ready, task)
        return None

    def _plan(self) -> dict[str, int]:
        """Make every pipeline; returns the progress totals (estimated before the stages' rows exist)."""
        self._ref: dict[str, StageRow] = {}  # reference rows confirmed in this session
        self.pipes: dict[str, list[_Pipe]] = {c.key: [] for c in self.cases}
        totals = dict.fromkeys(STAGES, 0)
        attempts = self.attempts()
        keys, labels = [c.key for c in self.cases], [s.label for s in self.systems]
        selected = select(keys, labels, self.shard)
        for c in self.cases:
            for s in self.systems:
                if (c.key, s.label) not in selected:
                    continue  # another shard's pipeline
                # Attempts are independent today: all start when the reference is done (see pipeline.py).
                for a in range(1, attempts[(c.key, s.label)] + 1):
                    pipe = _Pipe(c.key, s.label, a)
                    pipe.counted = pl.expected(pl.states({}, self._ctx[s.label]))
                    for st in pipe.counted:
                        totals[st] += 1
                    self.pipes[c.key].append(pipe)
        # A shard makes the references of the cases it has pipelines of (every case when unsharded).
        totals[pl.REFERENCE] = sum(1 for c in self.cases if self._runs_case(c.key))
        if not self.protocol.renders:
            del totals[pl.RENDER]
        return totals

    def _runs_case(self, case: str) -> bool:
        return self.shard is None or bool(self.pipes[case])

    def _start_case(self, entry: CaseEntry) -> None:
        if not self._runs_case(entry.key):
            return
        kwargs = {"case": self._case_dict[entry.key], "protocol": self.params}
        ih = self._hash(
            pl.REFERENCE, case_fingerprint(entry.case, text=False), self._reference_files(entry.case)
        )
        row = self._offer(pl.REFERENCE, entry.key, REFERENCE_SYSTEM, 1, ih, kwargs)
        if row is not None:
            self._finished(pl.REFERENCE, entry.key, REFERENCE_SYSTEM, 1, row)

    def _finished(self, stage: str, case: str, system: str, attempt: int, row: StageRow) -> None:
        """A stage has its row for this session (ran or skipped): move its pipelines on."""
        if stage == pl.REFERENCE:
            self._ref[case] = row
            for pipe in self.pipes[case]:
                self._advance(pipe)
            return
        pipe = self._pipe(case, system, attempt)
        pipe.rows[stage] = row
        pipe.queued.discard(stage)
        self._advance(pipe)

    def _pipe(self, case: str, system: str, attempt: int) -> _Pipe:
        for pipe in self.pipes[case]:
            if pipe.system == system and pipe.attempt == attempt:
                return pipe
        raise KeyError((case, system, attempt))

    def _advance(self, pipe: _Pipe) -> None:
        """Queue the stages of ``pipe`` that can run now, following straight on past finished ones, and
        keep the progress totals to the stages that will run."""
        ctx = self._ctx[pipe.system]
        while True:
            view = {pl.REFERENCE: self._ref[pipe.case], **pipe.rows}
            state = pl.states(view, ctx)
            counted = pl.expected(state)
            for st in counted - pipe.counted:
                self.progress.add_total(st, 1)
            for st in pipe.counted - counted:
                self.progress.add_total(st, -1)
            pipe.counted = counted
            moved = False
            for stage, s in state.items():
                if s != pl.READY or stage in pipe.queued:
                    continue
                if stage == pl.GENERATE and not self._previous_ready(pipe):
                    continue  # a revision waits for the attempt it revises
                kwargs, ih = self._inputs(stage, pipe, view, ctx)
                row = self._offer(stage, pipe.case, pipe.system, pipe.attempt, ih, kwargs)
                if row is None:
                    pipe.queued.add(stage)
                else:
                    pipe.rows[stage] = row
                    moved = True
            if not moved:
                break
        nxt = self._next_attempt(pipe)
        if nxt is not None and pl.GENERATE not in nxt.rows and pl.GENERATE not in nxt.queued:
            self._advance(nxt)

    def _next_attempt(self, pipe: _Pipe) -> _Pipe | None:
        """The pipeline of the attempt that revises ``pipe`` (a revising system), else None."""
        if not self._ctx[pipe.system].revises:
            return None
        for other in self.pipes[pipe.case]:
            if other.system == pipe.system and other.attempt == pipe.attempt + 1:
                return other
        return None

    def _previous_view(self, pipe: _Pipe) -> dict[str, StageRow] | None:
        """The rows of the attempt ``pipe`` revises ({stage: row}, reference included), or None."""
        if not self._ctx[pipe.system].revises or pipe.attempt == 1:
            return None
        prev = self._pipe(pipe.case, pipe.system, pipe.attempt - 1)
        return {pl.REFERENCE: self._ref[pipe.case], **prev.rows}

    def _previous_ready(self, pipe: _Pipe) -> bool:
        view = self._previous_view(pipe)
        return view is None or pl.feedback_ready(view, self._ctx[pipe.system])

    # -- committing ------------------------------------------------------------------------------
    def _commit(
        self, store: Store, task: _Task, workdir: Path, result: StageResult, started: float, finished: float
    ) -> StageRow:
        artifacts: dict[str, Any] = {}
        stored: dict[Path, str] = {}  # one file may be named twice (the reference image is its first render)
        scratch = os.path.abspath(workdir) + os.sep
        for name, files in result.files.items():
            paths = files if isinstance(files, list) else [files]
            rels = []
            for p in paths:
                pp = Path(os.path.abspath(p))
                if pp not in stored:
                    # Files a stage made are moved; files it points at (inputs) are copied, never moved.
                    stored[pp] = self.artifacts.put(pp, move=str(pp).startswith(scratch))
                rels.append(stored[pp])
            artifacts[name] = rels if isinstance(files, list) else rels[0]
        value = dict(result.value)
        if task.stage == "reference":
            entry = self._case_by_key[task.case]
            value["case_info"] = {"id": entry.case.id, "category": entry.case.category, "suite": entry.suite}
        row = store.put(
            case=task.case,
            system=task.system,
            attempt=task.attempt,
            stage=task.stage,
            status=result.status,
            input_hash=task.input_hash,
            protocol_hash=self.protocol_hash,
            started=started,
            finished=finished,
            error_class=result.error_class,
            error=result.error,
            artifacts=artifacts,
            value=value,
        )
        return row

    def _batch_size(self, stage: str, system: str) -> int:
        """How many stages like this one go to a worker together (see :mod:`gen3deval.engine.batching`):
        CLIP-scored score stages, and the generate stages of a local model system that batches."""
        if stage == pl.SCORE:
            return self.score_batch
        obj = self.objects.get(system)
        if stage == pl.GENERATE and system not in self._remote and callable(getattr(obj, "prefetch", None)):
            return max(1, int(getattr(obj, "batch_size", 1) or 1))
        return 1

    # -- the loop --------------------------------------------------------------------------------
    def _make_executor(self) -> Any:
        local = {label: obj for label, obj in self.objects.items() if label not in self._remote}
        return run_executor(
            inline=self.inline,
            jobs=self.jobs,
            render_backend=self.render_backend,
            kind=self.executor_kind,
            ray_address=self.ray_address,
            ray_shared_dir=self.ray_shared_dir,
            systems=local,
            clip_scores=self.score_batch > 1,
        )

    def run(
        self, *, suites: list[dict[str, Any]] | None = None, spec: dict[str, Any] | None = None
    ) -> RunResult:
        """Run (or resume) everything; returns the counts. Holds the run folder's lock meanwhile."""
        t0 = time.time()
        self.attempts()  # the systems' plans, before the folder is touched
        for obj in self._remote.values():
            obj.credentials()  # keys are read now, then hidden from the workers (and their sandboxes)
        with hidden_env({name for obj in self._remote.values() for name in obj.secret_env()}):
            result = self._run_locked(suites, spec)
        result.seconds = time.time() - t0
        return result

    def _run_locked(self, suites: list[dict[str, Any]] | None, spec: dict[str, Any] | None) -> RunResult:
        lock = RunLock(self.run_dir)
        lock.acquire()
        tmp = self.run_dir / TMP_DIR
        try:
            # Scratch left by a killed run: never a committed result, safe to drop.
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
            with Store(self.run_dir) as store:
                with store.transaction():  # all of the metadata or none of it, whenever the run is killed
                    record_shard(store, self.shard, self.run_dir)  # before run_id: it tells a new folder
                    self.fingerprint = write_run_meta(
                        store,
                        run_dir=self.run_dir,
                        params=self.params,
                        fingerprint=self.fingerprint,
                        systems=[s.label for s in self.systems],
                        cases=self.cases,
                        attempts=self.attempts(),
                        suites=suites or [],
                        spec=spec or {},
                        log=self.progress.log,
                    )
                    store.set_meta("skipped_metrics", self.skipped_metrics)
                store.begin_session(stable_hash(spec or {}))
                result = self._loop(store, tmp)
                store.end_session()
        finally:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
        return result

    def _loop(self, store: Store, tmp: Path) -> RunResult:
        self.rows: dict[tuple[str, str, int, str], StageRow] = store.all()
        self.ready: list[_Task] = []
        # Score stages wait for a batch when a learned model scores them (see engine.batching).
        self._batched = BatchQueues()
        self._remote_pending: list[_Task] = []
        self._seq = itertools.count()
        self._scratch: list[Path] = []
        self.skipped = dict.fromkeys(STAGES, 0)
        ran = dict.fromkeys(STAGES, 0)
        failed = dict.fromkeys(STAGES, 0)
        self.progress.start(self._plan())
        remote = self._remote_jobs(store)
        remote_inflight: dict[Future[Any], tuple[_Task, Path]] = {}
        heartbeat = time.time()
        for entry in self.cases:
            self._start_case(entry)
        executor = self._make_executor()
        inflight: dict[Future[Any], list[tuple[_Task, Path]]] = {}
        # Ray: as many stages in flight as the cluster has CPUs, twice, as for the local pool's workers.
        max_inflight = 1 if self.inline else 2 * int(getattr(executor, "slots", None) or self.jobs)
        solo = False  # a stage whose worker died runs alone next time, so a second death is its own
        try:
            batched = self._batched
            while self.ready or batched or inflight or self._remote_pending or remote_inflight:
                if remote is not None:
                    self._start_remote(remote, remote_inflight, tmp)
                while (self.ready or batched) and len(inflight) < max_inflight and not solo:
                    # A free worker never idles: a short batch goes when no other stage is ready.
                    group = batched.take(other_work=bool(self.ready))
                    if not group:
                        if not self.ready:
                            break  # a score batch is filling up while other stages run
                        if self.ready[0].crashes:
                            if inflight:
                                break  # let the pool drain first
                            solo = True
                        group = [heapq.heappop(self.ready)]
                    pairs = [
                        (
                            t,
                            t.workdir
                            or (self._scratch.pop() if self._scratch else tmp / f"w{next(self._seq)}"),
                        )
                        for t in group
                    ]
                    items = [(t.stage, t.kwargs, str(wd)) for t, wd in pairs]
                    try:
                        fut = executor.submit(work_batch, items, self.retries, self.functions)
                    except BrokenProcessPool:
                        # A worker died after the last wait: these tasks never ran. The futures in flight
                        # report the death below; with none in flight, a fresh pool is all it takes.
                        for t, wd in pairs:
                            heapq.heappush(self.ready, t)
                            self._scratch.append(wd)
                        if not inflight:
                            executor.shutdown(wait=False, cancel_futures=True)
                            executor = self._make_executor()
                        break
                    inflight[fut] = pairs
                bell = [remote.bell] if remote is not None else []
                # Hosted jobs take minutes to hours: while some wait on a server, a line every HEARTBEAT_S.
                timeout = HEARTBEAT_S if remote_inflight else None
                done, _ = wait([*inflight, *bell], timeout, FIRST_COMPLETED)
                if remote is not None:
                    remote.drain(store)  # job rows (handles) are on disk before their jobs go on
                    done = {*done, *remote.take_finished()}
                    if remote_inflight and time.time() - heartbeat >= HEARTBEAT_S:
                        self.progress.log(remote.status_line())
                        heartbeat = time.time()
                solo = False
                lost: list[_Task] = []
                finished_now: list[tuple[_Task, Path, StageResult, float, float]] = []
                for fut in done:
                    if fut in remote_inflight:
                        failure = self._remote_done(fut, *remote_inflight.pop(fut))
                        if failure is not None:
                            finished_now.append(failure)
                        continue
                    if fut not in inflight:
                        continue  # the bell
                    pairs = inflight.pop(fut)
                    try:
                        outcomes = fut.result()
                    except BrokenProcessPool:
                        lost += [task for task, _wd in pairs]
                        continue
                    except DependencyError:
                        raise  # a runtime went missing mid-run: stop (committed rows are kept), never a case failure
                    except Exception as exc:  # pickling errors and the like: failed stages, not a dead run
                        now = time.time()
                        broken = StageResult.fail("runtime", f"engine: {type(exc).__name__}: {exc}")
                        outcomes = [(broken, now, now, 1)] * len(pairs)
                    for (task, workdir), (result, started, finished, _tries) in zip(
                        pairs, outcomes, strict=True
                    ):
                        finished_now.append((task, workdir, result, started, finished))
                if lost:
                    # A worker died (native crash, OOM kill): every stage in flight is lost. Start a new pool
                    # and rerun each lost stage alone; one that kills its worker alone too is failed.
                    lost += [task for pairs in inflight.values() for task, _wd in pairs]
                    inflight.clear()
                    executor.shutdown(wait=False, cancel_futures=True)
                    executor = self._make_executor()
                    for task in lost:
                        task.crashes += 1
                        if task.crashes < 2:
                            task.priority = (-1, *task.priority[1:])
                            heapq.heappush(self.ready, task)
                            continue
                        now = time.time()
                        msg = (
                            "the worker process died while running this stage, also when run alone "
                            "(a native crash, or killed e.g. for memory)"
                        )
                        result = StageResult.fail(UNEXPECTED_ERROR_CLASS[task.stage], msg)
                        finished_now.append((task, tmp / "lost", result, now, now))
                for task, workdir, result, started, finished in finished_now:
                    started = task.started or started
                    row = self._commit(store, task, workdir, result, started, finished)
                    self._recycle(workdir)
                    self.rows[row.key] = row
                    ran[task.stage] += 1
                    if not row.ok:
                        failed[task.stage] += 1
                    self.progress.update(task.stage, row.status, task.label)
                    if not row.ok:
                        self.progress.log(
                            f"failed: {task.stage} {task.label}: [{row.error_class}] {row.error}"
                        )
                    self._finished(task.stage, task.case, task.system, task.attempt, row)
        except BaseException:
            # Interrupted (Ctrl-C) or failing: stop the workers now rather than after their current stage.
            if remote is not None:
                remote.close(store)  # remote jobs keep their stored handles: the next run polls them
            for proc in list((getattr(executor, "_processes", None) or {}).values()):
                proc.kill()
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
        if remote is not None:
            remote.close(store)
        self.progress.close()
        return RunResult(ran=ran, skipped=self.skipped, failed=failed, seconds=0.0)

    def _recycle(self, workdir: Path) -> None:
        """Keep an emptied scratch folder for the next stage (creating and removing one per stage costs
        milliseconds on a busy ext4); one with files left over is removed."""
        try:
            if not os.listdir(workdir):
                self._scratch.append(workdir)
                return
        except FileNotFoundError:
            return
        shutil.rmtree(workdir, ignore_errors=True)
