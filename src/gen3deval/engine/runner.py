"""The run engine: plans the stages of every (case, system), skips finished ones, runs the rest with
bounded concurrency and commits each result to the store.

Pipeline per case: ``reference`` (once per case), then per system ``generate`` -> ``execute`` (programs
only) -> ``render`` (when the protocol has a rig) -> ``score`` (when the case has a reference).

Resume: a stage is done exactly when the store has its row with the same ``input_hash`` (its inputs:
the case, the system spec, the protocol parameters and the artifacts of the stages it reads). Workers
write into a scratch folder; the engine moves the files into the content-addressed artifact store and
then commits the row in one transaction, so after ``kill -9`` at any moment a rerun redoes at most the
stages that were in flight, and never a committed one.

Concurrency: ``jobs`` worker processes (``spawn``ed, so no GL context or thread is inherited through a
fork; each worker creates its own renderer), also for ``jobs=1``: a stage that crashes its process (a
segfault in a native library, an OOM kill) is rerun alone and, if it dies again, failed with that reason
while the run goes on. Later stages have priority over new cases, so results arrive steadily and a kill
loses little.
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gen3deval.config import Protocol, SystemSpec, stable_hash
from gen3deval.engine.artifacts import ArtifactStore
from gen3deval.engine.progress import NullProgress
from gen3deval.engine.stages import UNEXPECTED_ERROR_CLASS, StageResult, run_stage
from gen3deval.engine.store import REFERENCE_SYSTEM, STAGES, StageRow, Store
from gen3deval.errors import ConfigError, UserInputError
from gen3deval.suites.base import Case

TMP_DIR = "tmp"
LOCK_NAME = ".lock"
ATTEMPT = 1  # offline systems make one attempt; revision loops (vlm) will add more


@dataclass(frozen=True)
class CaseEntry:
    """A case of the run: ``key`` is the row's ``case`` (the id, prefixed by the suite when a run has several)."""

    key: str
    case: Case
    suite: str


@dataclass(order=True)
class _Task:
    priority: tuple[int, int, int, int, int]
    stage: str = field(compare=False)
    case: str = field(compare=False)
    system: str = field(compare=False)
    input_hash: str = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)
    crashes: int = field(default=0, compare=False)


@dataclass
class RunResult:
    """What :meth:`Engine.run` did: counts of stages run / skipped / failed, and the wall time."""

    ran: dict[str, int]
    skipped: dict[str, int]
    failed: dict[str, int]
    seconds: float
    pending: int = 0


def case_fingerprint(case: Case) -> str:
    d = dataclasses.asdict(case)
    d["meta"] = {"up": (case.meta or {}).get("up", "y")}
    return stable_hash(d)


def row_digest(row: StageRow | None) -> str:
    """What a downstream stage depends on: status + artifacts (content hashes) of an upstream row."""
    if row is None:
        return "-"
    return stable_hash([row.status, row.artifacts])


# --- worker processes -----------------------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    # A SIGKILLed engine cannot stop its workers: they notice the orphaning and leave.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _worker_init(parent: int, threads: int, render_backend: str) -> None:
    # Oversubscription guard: pykdtree (OpenMP) and llvmpipe would each start one thread per core per worker.
    for var in ("OMP_NUM_THREADS", "LP_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    # Ctrl-C goes to the whole process group: the engine handles it; workers leave when it does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gen3deval.engine.stages import set_render_backend

    set_render_backend(render_backend)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _work(
    stage: str,
    kwargs: dict[str, Any],
    workdir: str,
    retries: int,
    functions: dict[str, Callable[..., StageResult]] | None,
) -> tuple[StageResult, float, float, int]:
    return run_stage(stage, kwargs, workdir, retries=retries, functions=functions)


class _InlineExecutor:
    """The ``inline`` executor: runs each stage at submission, in this process (no crash isolation)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # KeyboardInterrupt must still stop the run
            if not isinstance(exc, Exception):
                raise
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


# --- the engine -----------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on a run folder (flock: released by the OS when the holder dies, even by kill -9)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserInputError(
                f"{self.path.parent}: another gen3deval run (pid {holder}) is using this run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Engine:
    """Runs the stages of ``cases`` x ``systems`` into ``run_dir`` under ``protocol``.

    Args:
        run_dir: the run folder (store, artifacts, reports).
        cases: the cases, in order. systems: the systems (labels unique).
        protocol: the protocol; ``fingerprint`` its fingerprint dict (recorded in meta and every row).
        jobs: worker processes. retries: retries of transient errors per stage.
        progress: a reporter (see :mod:`gen3deval.engine.progress`).
        functions: stage functions replacing :data:`~gen3deval.engine.stages.STAGE_FUNCTIONS` (tests,
            benchmarks; must be importable module-level functions when ``jobs > 1``).
        needs_reference: {system label: bool} overriding the systems' ``needs_reference`` (tests).
        inline: run the stages in this process, one at a time (tests, benchmarks). Otherwise they run in
            ``jobs`` worker processes even for ``jobs=1``, so a native crash in a stage (a segfault in a
            geometry library) fails that stage instead of killing the run.
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
        functions: dict[str, Callable[..., StageResult]] | None = None,
        needs_reference: dict[str, bool] | None = None,
        inline: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.inline = inline
        # Workers render with the backend the fingerprint recorded ("gl" or "raycast"), never a silent mix.
        backend = str((fingerprint.get("renderer") or {}).get("renderer", "auto"))
        self.render_backend = backend if backend in ("gl", "raycast") else "auto"
        self.cases = cases
        self.systems = list(systems)
        self.protocol = protocol
        self.params = protocol.params()
        self.params_hash = protocol.params_hash()
        self.fingerprint = fingerprint
        # The fingerprint's own hash (gen3deval.protocol.fingerprint) is what reports compare runs by.
        self.protocol_hash = str(fingerprint.get("hash") or stable_hash(fingerprint))
        self.jobs = max(1, int(jobs))
        self.retries = retries
        self.progress = progress or NullProgress()
        self.functions = functions
        self.artifacts = ArtifactStore(self.run_dir)
        self._needs_ref: dict[str, bool] = {}
        for s in self.systems:
            if needs_reference and s.label in needs_reference:
                self._needs_ref[s.label] = needs_reference[s.label]
            else:
                from gen3deval.systems.base import SYSTEMS

                self._needs_ref[s.label] = bool(SYSTEMS.get(s.name).needs_reference)
        self._outputs: dict[str, str] = {}
        for s in self.systems:
            from gen3deval.systems.base import SYSTEMS

            self._outputs[s.label] = SYSTEMS.get(s.name).output if s.name in SYSTEMS else "any"
        self._case_index = {c.key: i for i, c in enumerate(cases)}
        # Computed once: every stage of a case hands its dict to a worker and hashes it into its inputs.
        self._case_dict = {c.key: dataclasses.asdict(c.case) for c in cases}
        self._case_fp = {c.key: case_fingerprint(c.case) for c in cases}
        self._sys_dict = {s.label: s.to_dict() for s in self.systems}
        self._case_by_key = {c.key: c for c in cases}
        self._sys_index = {s.label: i for i, s in enumerate(self.systems)}

    # -- meta ------------------------------------------------------------------------------------
    def _check_and_write_meta(self, store: Store, suites: list[dict[str, Any]], spec: dict[str, Any]) -> None:
        old_params = store.get_meta("protocol_params_hash")
        if old_params is not None and old_params != self.params_hash:
            old = store.get_meta("protocol", {}) or {}
            raise ConfigError(
                f"protocol: {self.run_dir} was made with protocol {old.get('name', '?')!r} with other parameters "
                f"(hash {old_params}, now {self.params_hash}); use another --out, or `gen3deval clean` it first"
            )
        if store.get_meta("run_id") is None:
            store.set_meta("run_id", f"{self.run_dir.name}-{uuid.uuid4().hex[:8]}")
            store.set_meta("created", datetime.now(UTC).isoformat(timespec="seconds"))
            store.set_meta("protocol", self.fingerprint)
            store.set_meta("protocol_params_hash", self.params_hash)
            store.set_meta("protocol_obj", self.params)
        else:
            old = store.get_meta("protocol") or {}
            if str(old.get("hash") or stable_hash(old)) != self.protocol_hash:
                self.progress.log(
                    "note: software versions differ from the ones this run folder was started with; "
                    "the stored protocol fingerprint is kept and new rows record their own fingerprint hash"
                )
            # Rows and reports keep the fingerprint the run was created with.
            self.fingerprint = old
        known = store.get_meta("systems", []) or []
        for s in self.systems:
            if s.label not in known:
                known.append(s.label)
        store.set_meta("systems", known)
        cases = store.get_meta("cases", {}) or {}
        for c in self.cases:
            cases[c.key] = {"id": c.case.id, "category": c.case.category, "suite": c.suite}
        store.set_meta("cases", cases)
        prev = store.get_meta("suites", []) or []
        names = {s["name"] for s in prev}
        store.set_meta("suites", prev + [s for s in suites if s["name"] not in names])
        store.set_meta("spec", spec)

    # -- planning --------------------------------------------------------------------------------
    def _hash(self, *parts: Any) -> str:
        return stable_hash([self.params_hash, *parts])

    def _done(self, stage: str, case: str, system: str, input_hash: str) -> StageRow | None:
        row = self.rows.get((case, system, ATTEMPT, stage))
        if row is not None and row.input_hash == input_hash:
            return row
        return None

    def _abs(self, rel: str | None) -> str | None:
        return str(self.run_dir / rel) if rel else None

    def _push(self, stage: str, case: str, system: str, input_hash: str, kwargs: dict[str, Any]) -> None:
        """Queue a stage, or follow straight on when the store says it is done already."""
        row = self._done(stage, case, system, input_hash)
        if row is not None:
            self.skipped[stage] += 1
            self.progress.update(stage, row.status, f"{case} {system}".strip(), skipped=True)
            self._next(stage, case, system, row)
            return
        prio = (
            0,
            -STAGES.index(stage),
            self._case_index[case],
            self._sys_index.get(system, -1),
            next(self._seq),
        )
        heapq.heappush(self.ready, _Task(prio, stage, case, system, input_hash, kwargs))

    def _plan_reference(self, entry: CaseEntry) -> None:
        kwargs = {"case": self._case_dict[entry.key], "protocol": self.params}
        ih = self._hash("reference", self._case_fp[entry.key])
        self._push("reference", entry.key, REFERENCE_SYSTEM, ih, kwargs)

    def _cut(self, after: str, case: str, system: str, has_ref: bool, program: bool | None) -> None:
        """Take the stages that will not run for this pipeline out of the progress totals."""
        order = ["generate", "execute", "render", "score"]
        later = order[order.index(after) + 1 :] if after in order else order
        for st in later:
            if st == "execute" and not (
                program if program is not None else self._outputs[system] == "program"
            ):
                continue
            if st == "render" and not self.protocol.renders:
                continue
            if st == "score" and not has_ref:
                continue
            self.progress.add_total(st, -1)

    def _next(self, stage: str, case: str, system: str, row: StageRow) -> None:
        """Queue what follows a finished stage."""
        if stage == "reference":
            has_ref = bool(row.ok and row.artifacts.get("mesh"))
            if not has_ref:
                # No score for this case: take it out of the totals (estimated with a reference).
                for _ in self.systems:
                    self.progress.add_total("score", -1)
            digest = row_digest(row)
            for s in self.systems:
                if not row.ok:
                    self._cut("reference", case, s.label, False, None)
                    continue
                needs = self._needs_ref[s.label]
                kwargs = {
                    "case": self._case_dict[case],
                    "system": self._sys_dict[s.label],
                    "reference_mesh": self._abs(row.artifacts.get("mesh")) if needs else None,
                    "ref_image": self._abs(row.artifacts.get("image")),
                }
                ih = self._hash("generate", self._case_fp[case], self._sys_dict[s.label], digest)
                self._push("generate", case, s.label, ih, kwargs)
            return
        ref = self.rows.get((case, REFERENCE_SYSTEM, ATTEMPT, "reference"))
        has_ref = bool(ref and ref.ok and ref.artifacts.get("mesh"))
        if stage == "generate":
            program = "program" in row.artifacts
            expected_program = self._outputs[system] == "program"
            if program != expected_program:
                self.progress.add_total("execute", 1 if program else -1)
            if not row.ok:
                self._cut("generate", case, system, has_ref, program)
                return
            if program:
                kwargs = {
                    "program": self._abs(row.artifacts["program"]),
                    "language": row.value.get("language", "threejs"),
                    "limits": self.params["limits"],
                }
                self._push("execute", case, system, self._hash("execute", row_digest(row)), kwargs)
                return
            self._after_mesh(case, system, row, has_ref)
            return
        if stage == "execute":
            if not row.ok:
                self._cut("execute", case, system, has_ref, True)
                return
            self._after_mesh(case, system, row, has_ref)
            return
        if stage == "render":
            mesh_row = self._mesh_row(case, system)
            assert mesh_row is not None
            self._push_score(case, system, mesh_row, row, has_ref)
            return

    def _mesh_row(self, case: str, system: str) -> StageRow | None:
        gen = self.rows.get((case, system, ATTEMPT, "generate"))
        if gen is not None and "program" in gen.artifacts:
            return self.rows.get((case, system, ATTEMPT, "execute"))
        return gen

    def _after_mesh(self, case: str, system: str, mesh_row: StageRow, has_ref: bool) -> None:
        if self.protocol.renders:
            kwargs = {"mesh": self._abs(mesh_row.artifacts["mesh"]), "protocol": self.params}
            self._push("render", case, system, self._hash("render", row_digest(mesh_row)), kwargs)
        else:
            self._push_score(case, system, mesh_row, None, has_ref)

    def _push_score(
        self, case: str, system: str, mesh_row: StageRow, render_row: StageRow | None, has_ref: bool
    ) -> None:
        if not has_ref:
            return
        ref = self.rows[(case, REFERENCE_SYSTEM, ATTEMPT, "reference")]
        renders = render_row.artifacts.get("renders") if render_row is not None and render_row.ok else None
        kwargs = {
            "candidate_mesh": self._abs(mesh_row.artifacts["mesh"]),
            "reference_mesh": self._abs(ref.artifacts["mesh"]),
            "candidate_renders": [self._abs(p) for p in renders] if renders else None,
            "reference_renders": [self._abs(p) for p in ref.artifacts.get("renders", [])] or None,
            "protocol": self.params,
        }
        ih = self._hash("score", row_digest(mesh_row), row_digest(render_row), row_digest(ref))
        self._push("score", case, system, ih, kwargs)

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
            attempt=ATTEMPT,
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

    # -- the loop --------------------------------------------------------------------------------
    def _make_executor(self) -> Any:
        if self.inline:
            from gen3deval.engine.stages import set_render_backend

            set_render_backend(self.render_backend)
            return _InlineExecutor()
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        return ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(), threads, self.render_backend),
        )

    def run(
        self, *, suites: list[dict[str, Any]] | None = None, spec: dict[str, Any] | None = None
    ) -> RunResult:
        """Run (or resume) everything; returns the counts. Holds the run folder's lock meanwhile."""
        t0 = time.time()
        lock = RunLock(self.run_dir)
        lock.acquire()
        tmp = self.run_dir / TMP_DIR
        try:
            # Scratch left by a killed run: never a committed result, safe to drop.
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
            with Store(self.run_dir) as store:
                with store.transaction():  # all of the metadata or none of it, whenever the run is killed
                    self._check_and_write_meta(store, suites or [], spec or {})
                store.begin_session(stable_hash(spec or {}))
                result = self._loop(store, tmp)
                store.end_session()
        finally:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
        result.seconds = time.time() - t0
        return result

    def _totals(self) -> dict[str, int]:
        n_pipes = len(self.cases) * len(self.systems)
        n_prog = len(self.cases) * sum(1 for s in self.systems if self._outputs[s.label] == "program")
        totals = {"reference": len(self.cases), "generate": n_pipes, "execute": n_prog}
        if self.protocol.renders:
            totals["render"] = n_pipes
        totals["score"] = n_pipes
        return totals

    def _loop(self, store: Store, tmp: Path) -> RunResult:
        import itertools

        self.rows: dict[tuple[str, str, int, str], StageRow] = store.all()
        self.ready: list[_Task] = []
        self._seq = itertools.count()
        self._scratch: list[Path] = []
        self.skipped = dict.fromkeys(STAGES, 0)
        ran = dict.fromkeys(STAGES, 0)
        failed = dict.fromkeys(STAGES, 0)
        self.progress.start(self._totals())
        for entry in self.cases:
            self._plan_reference(entry)
        executor = self._make_executor()
        inflight: dict[Future[Any], tuple[_Task, Path]] = {}
        max_inflight = 1 if self.inline else 2 * self.jobs
        solo = False  # a stage whose worker died runs alone next time, so a second death is its own
        try:
            while self.ready or inflight:
                while self.ready and len(inflight) < max_inflight and not solo:
                    if self.ready[0].crashes:
                        if inflight:
                            break  # let the pool drain first
                        solo = True
                    task = heapq.heappop(self.ready)
                    workdir = self._scratch.pop() if self._scratch else tmp / f"w{next(self._seq)}"
                    fut = executor.submit(
                        _work, task.stage, task.kwargs, str(workdir), self.retries, self.functions
                    )
                    inflight[fut] = (task, workdir)
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                solo = False
                lost: list[_Task] = []
                finished_now: list[tuple[_Task, Path, StageResult, float, float]] = []
                for fut in done:
                    task, workdir = inflight.pop(fut)
                    try:
                        result, started, finished, _tries = fut.result()
                    except BrokenProcessPool:
                        lost.append(task)
                        continue
                    except Exception as exc:  # pickling errors and the like: a failed stage, not a dead run
                        result = StageResult.fail("runtime", f"engine: {type(exc).__name__}: {exc}")
                        started = finished = time.time()
                    finished_now.append((task, workdir, result, started, finished))
                if lost:
                    # A worker died (native crash, OOM kill): every stage in flight is lost. Start a new pool
                    # and rerun each lost stage alone; one that kills its worker alone too is failed.
                    lost += [task for task, _wd in inflight.values()]
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
                    row = self._commit(store, task, workdir, result, started, finished)
                    self._recycle(workdir)
                    self.rows[row.key] = row
                    ran[task.stage] += 1
                    if not row.ok:
                        failed[task.stage] += 1
                    self.progress.update(task.stage, row.status, f"{task.case} {task.system}".strip())
                    if not row.ok:
                        self.progress.log(
                            f"failed: {task.stage} {task.case} {task.system}: [{row.error_class}] {row.error}"
                        )
                    self._next(task.stage, task.case, task.system, row)
        except BaseException:
            # Interrupted (Ctrl-C) or failing: stop the workers now rather than after their current stage.
            for proc in list((getattr(executor, "_processes", None) or {}).values()):
                proc.kill()
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
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
