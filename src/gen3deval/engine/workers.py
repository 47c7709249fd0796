"""The engine's process plumbing: the run folder's lock and the executors that run stages (spawned worker
processes that leave when the engine dies, or inline in the engine's process for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from gen3deval.engine.stages import StageResult, run_stage
from gen3deval.errors import UserInputError

LOCK_NAME = ".lock"


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


def work_batch(
    items: list[tuple[str, dict[str, Any], str]],
    retries: int,
    functions: dict[str, Callable[..., StageResult]] | None,
) -> list[tuple[StageResult, float, float, int]]:
    """Run stages ``(stage, kwargs, workdir)`` one after another in this worker; a batch first does its model
    work in one call (see :mod:`gen3deval.engine.batching`): score stages have all their images embedded by
    CLIP at once, a local model system's generate stages all their prompts answered at once."""
    if len(items) > 1 and functions is None:
        stages = {stage for stage, _, _ in items}
        if stages == {"score"}:
            from gen3deval.engine.scoring import prefetch_learned

            prefetch_learned([kwargs for _, kwargs, _ in items])
        elif stages == {"generate"}:
            from gen3deval.engine.stages import prefetch_generate

            prefetch_generate([kwargs for _, kwargs, _ in items])
    return [run_stage(stage, kwargs, wd, retries=retries, functions=functions) for stage, kwargs, wd in items]


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


@contextlib.contextmanager
def hidden_env(names: set[str]) -> Iterator[None]:
    """Remove ``names`` (API key variables, already read) from the environment while the run spawns its
    workers, so no worker or sandboxed program inherits a key; put back afterwards."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_executor(
    inline: bool,
    jobs: int,
    render_backend: str,
    kind: str = "local",
    ray_address: str | None = None,
    ray_shared_dir: str | None = None,
    model_systems: frozenset[str] = frozenset(),
    model_scores: bool = False,
) -> Any:
    """The executor of a run: inline, ``jobs`` spawned workers pinned to ``render_backend`` (``kind``
    "local"), or Ray tasks (``kind`` "ray", see :mod:`gen3deval.engine.ray_executor`; a Ray instance of
    ``jobs`` CPUs on this machine when ``ray_address`` is None; ``model_systems`` / ``model_scores``: the stages
    that go to one long-lived actor per GPU of the cluster)."""
    if kind == "ray":
        from gen3deval.engine.ray_executor import RayExecutor

        return RayExecutor(
            ray_address,
            ray_shared_dir,
            num_cpus=jobs,
            render_backend=render_backend,
            model_systems=model_systems,
            model_scores=model_scores,
        )
    if inline:
        from gen3deval.engine.stages import set_render_backend

        set_render_backend(render_backend)
        return _InlineExecutor()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(), threads, render_backend),
    )
