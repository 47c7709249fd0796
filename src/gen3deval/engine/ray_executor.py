"""The ``ray`` executor: the engine's stages as Ray tasks on a cluster (or a Ray instance on this machine).

The engine process stays the driver and the only writer of the store: it submits ``work_batch`` calls here
exactly as to its local process pool and gets :class:`concurrent.futures.Future` objects back, completed by a
driver thread that waits on the tasks (``ray.wait``). Each task declares ``num_cpus=1``; Ray reuses its
worker processes, so a worker's caches (renderer, reference meshes, loaded models) persist as in a local
pool worker.

Artifacts travel through the file system: items name absolute paths in the run folder and scratch folders
under ``RUN_DIR/tmp``. On one machine (a local instance, or ``ray start`` nodes on this host) these paths just
work. On a cluster that spans machines, the run folder (``--out``) must live in ``shared_dir``, a folder
every node mounts at the same path (NFS, Lustre), and so must the suites' data; without it a multi-machine
cluster is refused before any work (no bytes transport).

Lost work: a task whose worker process or node dies is rerun by Ray once (``max_retries=1``); when that
dies too, the future gets a failed result per stage ("lost with its node twice") instead of the local pool's
BrokenProcessPool, so the run goes on without restarting anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from gen3deval.errors import ConfigError, DependencyError

MAX_RETRIES = 1  # Ray's own retries of a task lost with its worker or node: one rerun, then failed
_POLL_S = 0.05  # how long the driver thread waits before looking for newly submitted tasks
LOST_MESSAGE = (
    "lost with its node twice: the Ray worker or node running this stage died, also when Ray retried it "
    "(a native crash, killed e.g. for memory, or the node left the cluster)"
)
_ATTEMPT_SUFFIX = (
    ".attempt"  # beside a scratch folder: what it held before the task (inputs), see _fresh_workdirs
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DependencyError(
            "executor ray needs Ray: pip install 'gen3deval[ray]' (or use --executor local)"
        ) from None
    return ray


def _fresh_workdirs(items: list[tuple[str, dict[str, Any], str]]) -> None:
    """Make each item's scratch folder as the engine handed it over: a rerun of a task lost with its node
    finds what the lost attempt wrote (on a shared folder) and removes it, keeping the inputs the engine
    placed there before (a remote job's fetched files), listed in a marker beside the folder."""
    for _stage, _kwargs, wd in items:
        marker = Path(wd + _ATTEMPT_SUFFIX)
        try:
            keep = set(json.loads(marker.read_text()))
        except FileNotFoundError:
            keep = None
        except ValueError:  # a marker cut short by the node's death: nothing was placed there before
            keep = set()
        if keep is None:
            names = os.listdir(wd) if os.path.isdir(wd) else []
            marker.write_text(json.dumps(names))
            continue
        for name in os.listdir(wd) if os.path.isdir(wd) else []:
            if name not in keep:
                p = os.path.join(wd, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(p)


def run_task(payload: bytes, init: dict[str, Any]) -> Any:
    """The body of every Ray task: set this worker up like a local pool worker, then run the call.

    ``payload`` is the pickled ``(fn, args)``; it is unpickled only after the driver's import folders are on
    ``sys.path``, so stage functions from modules outside the installed packages (tests, benchmarks) load.
    """
    import gen3deval

    if init["version"] != gen3deval.__version__ or tuple(init["python"]) != tuple(sys.version_info[:2]):
        raise DependencyError(
            f"Ray node {socket.gethostname()}: gen3deval {gen3deval.__version__} on Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}, but the driver runs gen3deval {init['version']} "
            f"on Python {init['python'][0]}.{init['python'][1]}; install the same versions on every node"
        )
    for var in ("OMP_NUM_THREADS", "LP_NUM_THREADS"):
        os.environ.setdefault(var, str(init["threads"]))
    for p in init["sys_path"]:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    from gen3deval.engine.stages import set_render_backend

    set_render_backend(init["render_backend"])
    from ray import cloudpickle

    fn, args = cloudpickle.loads(payload)
    items = args[0] if args and isinstance(args[0], list) else []
    batch = [it for it in items if isinstance(it, tuple) and len(it) == 3 and isinstance(it[2], str)]
    _fresh_workdirs(batch)
    out = fn(*args)
    for _stage, _kwargs, wd in batch:
        with contextlib.suppress(FileNotFoundError):
            os.remove(wd + _ATTEMPT_SUFFIX)
    return out


def _driver_paths() -> list[str]:
    """The driver's import folders outside its Python installation (test and benchmark modules)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for p in sys.path:
        rp = os.path.realpath(p or os.getcwd())
        if os.path.isdir(rp) and not any(rp == q or rp.startswith(q + os.sep) for q in prefixes):
            out.append(rp)
    return list(dict.fromkeys(out))


def check_shared_dir(run_dir: Path, shared_dir: str | None) -> None:
    """Refuse a run folder outside ``shared_dir`` (every node must see the run folder's paths)."""
    if shared_dir is None:
        return
    shared = Path(shared_dir).resolve()
    if not shared.is_dir():
        raise ConfigError(f"ray_shared_dir: {shared_dir} is not a folder")
    if not Path(run_dir).resolve().is_relative_to(shared):
        raise ConfigError(
            f"out: the run folder {run_dir} is not inside ray_shared_dir {shared}; put --out in the folder "
            "every Ray node mounts"
        )


class RayExecutor:
    """An executor running ``fn(*args)`` as Ray tasks (``num_cpus=1`` each).

    Args:
        address: None starts a Ray instance on this machine (``num_cpus`` CPUs; none when Ray is already
            initialised in this process: that one is used); ``"auto"`` joins the cluster of this machine
            (``ray start``); ``"ray://HOST:PORT"`` a remote one through Ray Client.
        shared_dir: the folder every node mounts at the same path, holding the run folder; None when all
            nodes are this machine (refused otherwise, see :meth:`check_nodes`).
        render_backend: the renderer every worker is pinned to ("auto", "gl", "raycast").
        model_systems / model_scores: the labels of systems that run a local model (their generate stages)
            and whether score stages run CLIP. When the cluster has GPUs, these stages go to long-lived
            actors, one per GPU (``num_gpus=1``), so the weights load once per GPU and stay loaded; other
            stages stay ``num_cpus=1`` tasks. An actor lost with its node is restarted once (its calls retried).
    """

    def __init__(
        self,
        address: str | None = None,
        shared_dir: str | None = None,
        num_cpus: int | None = None,
        render_backend: str = "auto",
        model_systems: frozenset[str] = frozenset(),
        model_scores: bool = False,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,  # stage output would break the progress display
                "logging_level": logging.WARNING,
            }
            if address is None:
                kwargs.update(address="local", num_cpus=num_cpus)
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(f"ray_address {address}: cannot connect to a Ray cluster ({exc})") from None
            self._owns = True
        self.shared_dir = shared_dir
        try:
            if address is not None and address.startswith("ray://") and shared_dir is None:
                raise ConfigError(
                    f"ray_address {address}: a Ray Client cluster runs on other machines; give "
                    "--ray-shared-dir (a folder every node and this machine mount at the same path) and put "
                    "--out in it"
                )
            self.check_nodes()
        except BaseException:
            self.shutdown()
            raise
        # A task per CPU of the cluster: each runs one-threaded native code, as local workers do.
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._init = {
            "version": __import__("gen3deval").__version__,
            "python": list(sys.version_info[:2]),
            "threads": 1,
            "sys_path": _driver_paths(),
            "render_backend": render_backend,
        }
        self._remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(run_task)
        self.model_systems, self.model_scores = frozenset(model_systems), bool(model_scores)
        gpus = int(ray.cluster_resources().get("GPU", 0)) if (model_systems or model_scores) else 0
        actor = ray.remote(_ModelActor)
        self._actors = [
            actor.options(
                num_cpus=0, num_gpus=1, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES
            ).remote()
            for _ in range(gpus)
        ]
        self._next_actor = 0
        self._pending: dict[Any, tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="gen3deval-ray", daemon=True)
        self._thread.start()

    def check_nodes(self) -> None:
        """Refuse a cluster with nodes on other machines when no shared folder was given: they would not
        find the run folder's files."""
        if self.shared_dir is not None:
            return
        here = self._ray.util.get_node_ip_address()
        others = sorted(
            {n["NodeManagerAddress"] for n in self._ray.nodes() if n.get("Alive")} - {here, "127.0.0.1"}
        )
        if others:
            raise ConfigError(
                f"the Ray cluster has nodes on other machines ({', '.join(others)}): give --ray-shared-dir, "
                "a folder every node mounts at the same path, and put --out (and the suites' data) in it"
            )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        from ray import cloudpickle

        if self._closed:
            raise RuntimeError("cannot submit to a RayExecutor after shutdown")
        payload = cloudpickle.dumps((fn, args))
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()
        if self._actors and args and self.runs_model(args[0]):
            actor = self._actors[self._next_actor % len(self._actors)]
            self._next_actor += 1
            ref = actor.run.remote(payload, self._init)
        else:
            ref = self._remote.remote(payload, self._init)
        with self._lock:
            self._pending[ref] = (fut, fn, args)
        self._wake.set()
        return fut

    def runs_model(self, items: Any) -> bool:
        """Whether a ``work_batch`` call's items need a model on a GPU: generate stages of a local model system,
        or score stages when CLIP scores."""
        try:
            stages = {(stage, (kw.get("system") or {}).get("label")) for stage, kw, _wd in items}
        except (TypeError, ValueError, AttributeError):
            return False
        if stages and all(stage == "score" for stage, _ in stages):
            return self.model_scores
        return bool(stages) and all(st == "generate" and label in self.model_systems for st, label in stages)

    def _pump(self) -> None:
        """The driver thread: complete each future as its task finishes."""
        ray = self._ray
        while True:
            with self._lock:
                refs = list(self._pending)
            if not refs:
                if self._closed:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_POLL_S, fetch_local=True)
            except Exception:  # Ray shut down under us (an interrupted run): the futures are abandoned
                if self._closed:
                    return
                raise
            for ref in ready:
                with self._lock:
                    fut, fn, args = self._pending.pop(ref)
                self._complete(ref, fut, fn, args)

    def _complete(self, ref: Any, fut: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        ex = self._ray.exceptions
        lost = (
            ex.WorkerCrashedError,
            ex.NodeDiedError,
            ex.ObjectLostError,
            ex.LocalRayletDiedError,
            ex.OutOfMemoryError,
            ex.ActorDiedError,
            ex.ActorUnavailableError,
        )
        try:
            value = self._ray.get(ref)
        except ex.TaskCancelledError:
            fut.set_exception(RuntimeError("cancelled"))
        except ex.RayTaskError as exc:
            # The stage's own exception (e.g. DependencyError), as the local pool would raise it.
            cause = getattr(exc, "cause", None)
            fut.set_exception(cause if isinstance(cause, Exception) else exc)
        except lost:
            failed = lost_results(fn, args)
            if failed is None:
                fut.set_exception(RuntimeError(LOST_MESSAGE))
            else:
                fut.set_result(failed)
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop: with ``wait`` after the tasks in flight finish; ``cancel_futures`` kills them instead.
        A Ray instance this executor started is stopped; one it joined is left running."""
        if getattr(self, "_thread", None) is not None and not self._closed:
            if cancel_futures:
                with self._lock:
                    refs = list(self._pending)
                for ref in refs:
                    with contextlib.suppress(Exception):
                        self._ray.cancel(ref, force=True)
            self._closed = True
            self._wake.set()
            if wait or cancel_futures:
                self._thread.join(timeout=None if wait else 10)
        self._closed = True
        if self._owns:
            self._owns = False
            self._ray.shutdown()


class _ModelActor:
    """A long-lived worker holding one GPU: runs ``work_batch`` calls like a task, keeping its caches (loaded
    models) between calls."""

    def run(self, payload: bytes, init: dict[str, Any]) -> Any:
        return run_task(payload, init)

    def pid(self) -> int:
        return os.getpid()


def lost_results(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[Any] | None:
    """A failed result per stage of a ``work_batch`` call lost with its node; None for other calls."""
    from gen3deval.engine.stages import UNEXPECTED_ERROR_CLASS, StageResult
    from gen3deval.engine.workers import work_batch

    if fn is not work_batch:
        return None
    now = time.time()
    return [
        (
            StageResult.fail(UNEXPECTED_ERROR_CLASS.get(stage, "runtime"), LOST_MESSAGE),
            now,
            now,
            MAX_RETRIES + 1,
        )
        for stage, _kwargs, _wd in args[0]
    ]
