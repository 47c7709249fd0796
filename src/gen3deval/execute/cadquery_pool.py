"""The client side of the CadQuery executor: the API, the pools of warm template workers, the result reader.

::

    from gen3deval.execute.cadquery_pool import run_cadquery, run_cadquery_many, shutdown
    r = run_cadquery(program, Limits(wall_s=10))              # ExecResult, mesh +Y up
    rs = run_cadquery_many(programs, Limits(), jobs=4, role="reference")

Reference programs (``role="reference"``) and candidates (``role="candidate"``) run on different
pools, so no worker ever serves both. Each worker is a template (:mod:`.cadquery_worker`) that never
sees a program: per request this client creates the program's sealed memory file, the result pipe and
the stdout/stderr memory files, hands them over with a control frame, reads the child's result frame
itself (untrusted: bounded, linear, every malformed input classified) and builds ``ExecResult.sandbox``
from the template's ready header and trailer only. ``run()`` never raises for a bad program;
ExecutionError means the sandbox itself failed (a worker that cannot start or confine a child).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from gen3deval.errors import DependencyError, ExecutionError
from gen3deval.execute import sandbox
from gen3deval.execute._cq_wire import FrameError, FrameReader, encode_frame, parse_frame, write_all
from gen3deval.execute.base import check_role
from gen3deval.execute.cadquery_executor import INSTALL_HINT, import_failure
from gen3deval.execute.result import ExecResult, Limits
from gen3deval.execute.sandbox.policy import Isolation, default_isolation
from gen3deval.mesh.types import Mesh

DEFAULT_LINEAR_TOLERANCE = 1e-3  # x bounding-box diagonal
DEFAULT_ANGULAR_TOLERANCE = 0.1  # radians
PROGRAM_FILENAME = "<program>"
TAIL_CHARS = 4000
STARTUP_TIMEOUT_S = 180.0
# Extra seconds the client waits for a worker beyond the program's wall limit before declaring the
# worker itself dead (it enforces the wall limit on the program; this only guards against bugs).
WORKER_GRACE_S = 60.0
# After the trailer the child is gone: what is left in the result pipe is read within this bound.
DRAIN_S = 2.0
MAX_PROGRAM_BYTES = 64 * 1024 * 1024
# Exit statuses the child uses (mirrors gen3deval.execute._cq_child, which imports cadquery).
VIOLATION_EXIT = 87
_MEMORY_SIGNS = ("bad_alloc", "MemoryError", "Cannot allocate", "Standard_OutOfMemory")
_PROGRAM_CLASSES = (
    "runtime",
    "memory",
    "no_geometry",
    "invalid_geometry",
    "sandbox_violation",
    "timeout",
    "syntax",
)


def check_program(program: str | None, limits: Limits) -> ExecResult | None:
    """The ExecResult for a program that cannot start (``no_code`` or ``syntax``), else None.

    A program too deeply nested or too large to compile (RecursionError, MemoryError from
    ``compile()``) is ``syntax`` too: it is classified here, never raised."""

    def fail(cls: str, msg: str) -> ExecResult:
        return ExecResult(
            executable=False, error_class=cls, message=msg[:600], language="cadquery", limits=limits
        )

    if program is None or not program.strip():
        return fail("no_code", "empty program")
    if len(program) > MAX_PROGRAM_BYTES:
        return fail("syntax", f"program too large to compile ({len(program)} characters)")
    try:
        compile(program, PROGRAM_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return fail("syntax", f"SyntaxError: {exc.msg} (program line {exc.lineno})")
    except ValueError as exc:
        return fail("syntax", f"{type(exc).__name__}: {exc}")
    except (RecursionError, MemoryError) as exc:
        return fail(
            "syntax", f"{type(exc).__name__}: the program is too deeply nested or too large to compile"
        )
    return None


def _worker_env() -> dict[str, str]:
    extra = {
        # One thread each: workers already run one per core, and the template must fork thread-free.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if os.environ.get("PYTHONPATH"):
        extra["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return sandbox.scrubbed_env(tempfile.gettempdir(), extra)


def _memfd(name: str, *, sealing: bool = False) -> int:
    if hasattr(os, "memfd_create"):
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
        return os.memfd_create(name, flags)
    fd, path = tempfile.mkstemp(prefix="gen3deval-cq-")
    os.unlink(path)
    return fd


def _program_fd(program: str) -> int:
    """A memory file holding the program, sealed against changes (the child reads it from offset 0)."""
    fd = _memfd("program", sealing=True)
    write_all(fd, program.encode("utf-8"))
    with contextlib.suppress(OSError, AttributeError):
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _read_tail(fd: int, limit: int = TAIL_CHARS) -> str:
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - 4 * limit)
        return sandbox.tail(os.pread(fd, size - start, start), limit)
    except OSError:
        return ""


def _result_bound(limits: Limits) -> int:
    """Bound on the mesh arrays a result may declare (bytes), checked before they are read."""
    return max(256, 4 * int(limits.file_mb)) * 1024 * 1024


class CadQueryWorker:
    """Client handle of one warm template worker process (used by one thread at a time)."""

    def __init__(self, isolation: Isolation | None = None, *, tripwire: bool = True) -> None:
        self.isolation = isolation if isolation is not None else default_isolation()
        self.tripwire = tripwire
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.info: dict[str, Any] = {}
        self._log: Any = None

    def spawn(self) -> None:
        """Start the process (returns at once; :meth:`wait_ready` waits for cadquery's import)."""
        # The worker's stderr, kept to explain a failed start; closed in close().
        self._log = tempfile.TemporaryFile(prefix="gen3deval-cq-worker-")  # noqa: SIM115
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        opts = json.dumps({"isolation": asdict(self.isolation), "tripwire": self.tripwire})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gen3deval.execute.cadquery_worker", str(theirs.fileno()), opts],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=_worker_env(),
                cwd=tempfile.gettempdir(),
                start_new_session=True,  # terminal Ctrl-C goes to the client, which shuts workers down
                close_fds=True,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.sock = ours

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            return sandbox.tail(self._log.read(), 2000)
        return ""

    def _recv(self, deadline: float) -> dict[str, Any]:
        """The next message from the worker (trusted: the template wrote it)."""
        assert self.sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            raise TimeoutError("worker did not answer in time")
        msg = self.sock.recv(1 << 20)
        if not msg:
            raise EOFError("worker closed its socket")
        return parse_frame(msg)[0]

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        try:
            header = self._recv(time.monotonic() + timeout)
        except (EOFError, TimeoutError, OSError, FrameError) as exc:
            log = self._log_tail()
            self.close()
            if "No module named 'cadquery'" in log:
                raise DependencyError(f"cadquery is not installed: {INSTALL_HINT}") from None
            raise ExecutionError(f"CadQuery worker failed to start ({exc}): {log}") from None
        if header.get("status") != "ready":
            self.close()
            msg = str(header.get("message", header))
            # An import that fails (not installed, a missing system library) is the environment's fault.
            dep = import_failure(msg)
            if dep is not None:
                raise dep
            raise ExecutionError(f"CadQuery worker failed to start: {msg}")
        self.info = header

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(
        self,
        program: str,
        limits: Limits,
        *,
        linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
        angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
    ) -> ExecResult:
        """Run one program: hand the template the descriptors, read the result pipe while it runs."""
        assert self.sock is not None
        ctrl = {
            "op": "run",
            "limits": limits.to_dict(),
            "linear_tolerance": float(linear_tolerance),
            "angular_tolerance": float(angular_tolerance),
        }
        fds: list[int] = []
        res_r = -1
        try:
            prog_fd = _program_fd(program)
            fds.append(prog_fd)
            res_r, res_w = os.pipe2(os.O_CLOEXEC)
            fds.append(res_w)
            out_fd, err_fd = _memfd("stdout"), _memfd("stderr")
            fds += [out_fd, err_fd]
            socket.send_fds(self.sock, [encode_frame(ctrl)], fds)
            for fd in (prog_fd, res_w):  # the child holds its own copies now
                os.close(fd)
            fds.remove(prog_fd)
            fds.remove(res_w)
            reader = FrameReader(max_blobs=_result_bound(limits))
            trailer = self._collect(reader, res_r, time.monotonic() + limits.wall_s + WORKER_GRACE_S)
            stdout, stderr = _read_tail(out_fd), _read_tail(err_fd)
        finally:
            for fd in [*fds, res_r]:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if trailer.get("status") == "restart":
            raise EOFError(f"worker retired itself: {trailer.get('message', '')}")
        if trailer.get("status") != "done":
            raise EOFError(f"worker refused the request: {trailer.get('message', trailer)}")
        if trailer.get("setup") != "ok":
            raise ExecutionError(f"CadQuery sandbox failed: {trailer.get('setup_error', '')}")
        return _to_result(
            reader, trailer, stdout, stderr, limits, self.info, linear_tolerance, angular_tolerance
        )

    def _collect(self, reader: FrameReader, res_r: int, deadline: float) -> dict[str, Any]:
        """Read the result pipe until the template's trailer arrives (and the pipe ends)."""
        assert self.sock is not None
        res_open = True
        trailer: dict[str, Any] | None = None
        drain_deadline = deadline
        while True:
            now = time.monotonic()
            if trailer is not None and (not res_open or now >= drain_deadline):
                return trailer
            if now >= deadline:
                raise TimeoutError("worker did not answer in time")
            watch: list[Any] = [res_r] if res_open else []
            if trailer is None:
                watch.append(self.sock)
            ready, _, _ = select.select(watch, [], [], min(deadline, drain_deadline) - now)
            if res_open and res_r in ready:
                try:
                    more = reader.read_from(res_r)
                except OSError:
                    more = False
                if not more or reader.error:
                    # Stop reading: a writer still trying gets EPIPE; the template reaps it.
                    res_open = False
            if trailer is None and self.sock in ready:
                trailer = self._recv(deadline)
                drain_deadline = time.monotonic() + DRAIN_S

    def close(self) -> None:
        """Ask the worker to exit (EOF on its socket); kill it if it does not."""
        proc, self.proc = self.proc, None
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def _err(cls: str, msg: str, common: dict[str, Any]) -> ExecResult:
    return ExecResult(executable=False, error_class=cls, message=msg[:600], **common)


def _to_result(
    reader: FrameReader,
    trailer: dict[str, Any],
    stdout: str,
    stderr: str,
    limits: Limits,
    info: dict[str, Any],
    lin: float,
    ang: float,
) -> ExecResult:
    """Classify one run from the untrusted result frame and the template's trusted trailer."""
    sb = dict(trailer.get("sandbox") or {})
    sb.update(
        {
            "process": "fork of a warm worker",
            "template": "never sees programs or results",
            "audit_hook": bool(info.get("tripwire", True)),
            "tessellation": {"linear": lin, "linear_relative_to": "bbox diagonal", "angular_rad": ang},
            "zygote_threads": int(trailer.get("threads", 0)),
            "worker_pid": info.get("pid"),
            "oom_killed": bool(trailer.get("oom_killed")),
        }
    )
    common: dict[str, Any] = {
        "stdout": stdout,
        "stderr": stderr,
        "wall_s": float(trailer.get("wall_s", 0.0)),
        "peak_mb": float(trailer.get("peak_mb", 0.0)),
        "language": "cadquery",
        "limits": limits,
        "sandbox": sb,
    }
    rc = int(trailer.get("exit", 0))
    cpu = float(trailer.get("cpu_s", 0.0))
    header = reader.header if reader.done else None
    if trailer.get("timed_out"):
        return _err("timeout", f"exceeded the wall-clock limit of {limits.wall_s:g} s", common)
    if reader.error:
        return _err(
            "sandbox_violation", f"the program tampered with the result channel ({reader.error})", common
        )
    if rc == VIOLATION_EXIT:
        msg = str(header.get("message", "")) if header else ""
        return _err("sandbox_violation", msg or "stopped by the sandbox tripwire", common)
    if rc < 0:
        what = sandbox.signal_name(rc)
        if rc == -signal.SIGXCPU or (
            rc == -signal.SIGKILL and limits.cpu_s > 0 and cpu >= limits.cpu_s - 0.05
        ):
            return _err("timeout", f"killed by {what}: CPU limit of {limits.cpu_s:g} s", common)
        if trailer.get("oom_killed"):
            return _err("memory", f"killed by {what}: out of memory ({limits.memory_mb} MiB)", common)
        if any(s in stderr for s in _MEMORY_SIGNS):
            return _err("memory", f"killed by {what} (out of memory)", common)
        return _err("runtime", f"killed by {what}", common)
    if header is None:
        if reader.received:
            return _err(
                "sandbox_violation", "the program tampered with the result channel (truncated)", common
            )
        return _err(
            "runtime", f"the program ended the process (exit code {rc}) before a result was made", common
        )
    if rc != 0:
        return _err("runtime", f"exit code {rc}", common)
    if header.get("status") == "ok":
        try:
            mesh, result_info = _mesh_of(header, reader.blobs)
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            return _err("sandbox_violation", f"the program tampered with the result channel ({exc})", common)
        sb["result"] = result_info
        return ExecResult(executable=True, mesh=mesh, **common)
    cls = header.get("error_class")
    cls = cls if isinstance(cls, str) and cls in _PROGRAM_CLASSES else "runtime"
    return _err(cls, str(header.get("message", "")), common)


def _mesh_of(header: dict[str, Any], blobs: list[memoryview]) -> tuple[Mesh, dict[str, Any]]:
    """The mesh of an ``ok`` result, validated (sizes, index range, finiteness), and its summary."""
    nv, nf = int(header["n_vertices"]), int(header["n_faces"])
    if len(blobs) != 2 or len(blobs[0]) != nv * 24 or len(blobs[1]) != nf * 24 or nf < 1:
        raise ValueError("array sizes do not match")
    verts = np.frombuffer(blobs[0], dtype="<f8").reshape(nv, 3).astype(np.float64)
    faces = np.frombuffer(blobs[1], dtype="<i8").reshape(nf, 3).astype(np.int64)
    if faces.min() < 0 or faces.max() >= nv or not np.all(np.isfinite(verts)):
        raise ValueError("face indices out of range or non-finite vertices")
    name = header.get("result_name", "?")
    name = name if isinstance(name, str) else "?"
    info: dict[str, Any] = {"result_name": name[:80]}
    for key in ("volume", "linear_deflection", "angular_deflection"):
        if isinstance(header.get(key), int | float):
            info[key] = float(header[key])
    if type(header.get("n_solids")) is int:
        info["n_solids"] = int(header["n_solids"])
    mesh = Mesh.from_arrays(verts, faces, source=f"cadquery program (variable {info['result_name']})")
    return mesh, info


class WorkerPool:
    """A lazily grown pool of warm template workers, reused across calls; at most ``max_workers`` exist.

    isolation: the sandbox layers (default: ``GEN3DEVAL_SANDBOX``). tripwire: install the audit hook
    in children (tests of the OS layers alone turn it off)."""

    def __init__(
        self, max_workers: int | None = None, *, isolation: Isolation | None = None, tripwire: bool = True
    ) -> None:
        self.max_workers = max(1, max_workers or os.cpu_count() or 1)
        self.isolation = isolation if isolation is not None else default_isolation()
        self.tripwire = tripwire
        self._idle: queue.LifoQueue[CadQueryWorker] = queue.LifoQueue()
        self._all: list[CadQueryWorker] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._all)

    def _new(self) -> CadQueryWorker:
        return CadQueryWorker(self.isolation, tripwire=self.tripwire)

    def warm(self, n: int) -> None:
        """Start workers (in parallel) until ``n`` exist (capped by max_workers)."""
        with self._lock:
            self.max_workers = max(self.max_workers, n)
            new = [self._new() for _ in range(max(0, n - len(self._all)))]
            self._all.extend(new)
        for w in new:
            w.spawn()
        errors = []
        for w in new:
            try:
                w.wait_ready()
                self._idle.put(w)
            except Exception as exc:
                errors.append(exc)
                self._discard(w)
        if errors:
            raise errors[0]

    def _discard(self, worker: CadQueryWorker) -> None:
        worker.close()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _checkout(self) -> CadQueryWorker:
        while True:
            if self._closed:
                raise ExecutionError("the CadQuery worker pool was shut down")
            with contextlib.suppress(queue.Empty):
                return self._idle.get_nowait()
            with self._lock:
                grow = len(self._all) < self.max_workers
                if grow:
                    worker = self._new()
                    self._all.append(worker)
            if grow:
                break
            # Wait for an idle worker, re-checking capacity (a discarded worker frees a slot).
            with contextlib.suppress(queue.Empty):
                return self._idle.get(timeout=0.5)
        try:
            worker.spawn()
            worker.wait_ready()
        except Exception:
            self._discard(worker)
            raise
        return worker

    def run(self, program: str, limits: Limits, **tolerances: float) -> ExecResult:
        """Run one (already syntax-checked) program on an idle worker; one retry on a dead worker."""
        for attempt in range(2):
            worker = self._checkout()
            try:
                result = worker.run(program, limits, **tolerances)
            except (EOFError, TimeoutError, OSError, FrameError) as exc:
                self._discard(worker)
                if attempt == 1:
                    raise ExecutionError(f"CadQuery worker died twice running a program: {exc}") from None
                continue
            except BaseException:
                self._discard(worker)
                raise
            self._idle.put(worker)
            return result
        raise AssertionError("unreachable")

    def shutdown(self) -> None:
        """Stop every worker (their children are killed by the workers or die with them)."""
        self._closed = True
        with self._lock:
            workers, self._all = list(self._all), []
        while not self._idle.empty():
            with contextlib.suppress(queue.Empty):
                self._idle.get_nowait()
        for w in workers:
            w.close()


_POOLS: dict[str, WorkerPool] = {}
_POOL_LOCK = threading.Lock()


def get_pool(role: str = "candidate") -> WorkerPool:
    """The module-level pool of ``role`` (created on first use, stopped at exit or by :func:`shutdown`).
    Reference programs and candidates never share a worker."""
    check_role(role)
    with _POOL_LOCK:
        if role not in _POOLS:
            _POOLS[role] = WorkerPool()
        return _POOLS[role]


def shutdown() -> None:
    """Stop all warm workers of the module-level pools; the next call starts fresh ones."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown()


atexit.register(shutdown)


def run_cadquery(
    program: str,
    limits: Limits | None = None,
    *,
    role: str = "candidate",
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> ExecResult:
    """Run one CadQuery program in the sandbox (on the pool of ``role``); the mesh (if any) is +Y up.

    Raises ExecutionError only when the sandbox itself fails; every failure of the program is an
    ExecResult with an ``error_class``.
    """
    limits = limits or Limits()
    pool = get_pool(role)
    early = check_program(program, limits)
    if early is not None:
        return early
    return pool.run(program, limits, linear_tolerance=linear_tolerance, angular_tolerance=angular_tolerance)


def iter_cadquery(
    programs: Iterable[str],
    limits: Limits | None = None,
    jobs: int | None = None,
    *,
    role: str = "candidate",
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> Iterator[ExecResult]:
    """Run programs on ``jobs`` warm workers of the ``role`` pool (default: one per core); yields
    results in input order, with at most 2 x ``jobs`` programs queued (the input may be a generator)."""
    limits = limits or Limits()
    jobs = max(1, jobs or os.cpu_count() or 1)
    pool = get_pool(role)
    with _POOL_LOCK:
        pool.max_workers = max(pool.max_workers, jobs)
    tol = {"linear_tolerance": linear_tolerance, "angular_tolerance": angular_tolerance}

    def one(program: str) -> ExecResult:
        early = check_program(program, limits)
        return early if early is not None else pool.run(program, limits, **tol)

    pending: list[Any] = []
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cq-client") as ex:
        for program in programs:
            pending.append(ex.submit(one, program))
            while len(pending) >= 2 * jobs:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()


def run_cadquery_many(
    programs: Iterable[str],
    limits: Limits | None = None,
    jobs: int | None = None,
    *,
    role: str = "candidate",
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> list[ExecResult]:
    """:func:`iter_cadquery` collected into a list (same order as ``programs``)."""
    return list(
        iter_cadquery(
            programs,
            limits,
            jobs,
            role=role,
            linear_tolerance=linear_tolerance,
            angular_tolerance=angular_tolerance,
        )
    )
