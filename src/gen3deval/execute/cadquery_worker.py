"""Run CadQuery programs in a sandbox: warm "zygote" workers that fork a fresh child per program.

The contract (docs/cadquery-contract.md)
----------------------------------------
A program is Python that imports ``cadquery`` and leaves its result in a module-level variable.
The result is looked up in this order:

1. the first of ``solid``, ``result``, ``shape``, ``part``, ``model``, ``obj`` that holds a
   ``cq.Workplane``, ``cq.Shape``, ``cq.Assembly`` (or a non-empty list/tuple of them);
2. else the last object passed to ``show_object(...)`` (a CQ-editor habit; provided as a builtin,
   ``debug(...)`` is a no-op);
3. else the module variable whose last assignment comes last in the source text and holds one.

A Workplane stands for the shapes on its stack; if none of them is a solid (``box().faces(">Z")``)
the solid in its chain (``findSolid``) is used. An Assembly is flattened with ``toCompound()``.
The result must contain >= 1 solid with positive total volume. It is meshed with OCCT's
BRepMesh: absolute linear deflection ``linear_tolerance`` x bounding-box diagonal (default 1e-3),
angular deflection ``angular_tolerance`` rad (default 0.1); vertices shared by faces are welded.
CadQuery is +Z up; the mesh is mapped to gen3deval's +Y-up frame by (x, y, z) -> (x, z, -y).

Error classes (PROTOCOLS.md section 9): ``no_code`` (empty program), ``syntax`` (compile() fails;
checked before anything is forked), ``runtime`` (an exception, exit(n != 0), a crash), ``timeout``
(wall-clock limit: the process group is killed; CPU limit: SIGXCPU/SIGKILL), ``memory``
(MemoryError, std::bad_alloc, killed by the OOM killer), ``no_geometry`` (no result variable, empty
result, zero volume), ``invalid_geometry`` (non-finite coordinates, negative volume, result is not
a solid), ``sandbox_violation`` (the audit tripwire saw a forbidden operation).

Isolation
---------
Each worker is a ``python -m gen3deval.execute.cadquery_worker`` process started with a scrubbed
environment; it imports cadquery once (~2-3 s, ~470 MB) and then serves requests. Each program
runs in a child ``os.fork()``-ed from the warm worker, so programs never see each other's state.
In the child, before the program runs: new session, a new network namespace (no network), rlimits
(address space ``memory_mb``, CPU ``cpu_s``, file size ``file_mb``, no core, ``processes``), stdin
/dev/null, stdout/stderr to memory files, every other descriptor closed, cwd = a private temporary
directory, ``os.environ`` scrubbed, then (as root) a switch to a throw-away uid with no files of its
own (root-only files, ``/proc/<parent>/environ`` and other users' processes are out of reach, and
RLIMIT_NPROC is enforced), then a Python audit hook that stops the program with
``sandbox_violation`` on processes, sockets, ctypes, heap walks, writes outside its directory and
reads outside it and the Python library directories (``/etc/passwd``). The worker kills the
child's process group at the wall limit and, after each program, every process of the sandbox uid
and every file that uid left in /tmp, /var/tmp, /dev/shm. Results come back over a pipe as JSON
plus raw arrays (never pickle). Without root the uid switch is skipped and ``sandbox["user"]``
says ``not isolated``; without namespaces ``sandbox["network"]`` says ``not isolated``.

Known limit: a program may forge its own result frame (it shares the child's memory); that can
fake its own score but cannot reach anything outside the sandbox.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gen3deval.errors import DependencyError, ExecutionError
from gen3deval.execute import sandbox
from gen3deval.execute._cq_wire import FrameError, encode_frame, parse_frame
from gen3deval.execute.cadquery_executor import INSTALL_HINT, import_failure
from gen3deval.execute.result import ExecResult, Limits
from gen3deval.mesh.types import Mesh

DEFAULT_LINEAR_TOLERANCE = 1e-3  # x bounding-box diagonal
DEFAULT_ANGULAR_TOLERANCE = 0.1  # radians
PROGRAM_FILENAME = "<program>"
TAIL_CHARS = 4000
STARTUP_TIMEOUT_S = 180.0
# Extra seconds the client waits for a worker beyond the program's wall limit before declaring the
# worker itself dead (it enforces the wall limit on the program; this only guards against bugs).
WORKER_GRACE_S = 60.0

# Modules imported by the warm worker so that programs can import them: as the sandbox uid a
# program may be unable to read the interpreter's files (e.g. a Python under /root).
PREIMPORT = (
    "math",
    "cmath",
    "random",
    "itertools",
    "functools",
    "collections",
    "collections.abc",
    "copy",
    "json",
    "re",
    "string",
    "typing",
    "dataclasses",
    "enum",
    "decimal",
    "fractions",
    "numbers",
    "operator",
    "statistics",
    "datetime",
    "time",
    "textwrap",
    "warnings",
    "sysconfig",
    "hashlib",
    "glob",
    "queue",
    "secrets",
    "colorsys",
    "unicodedata",
    "heapq",
    "bisect",
    "struct",
    "pathlib",
    "traceback",
    "numpy",
    "numpy.linalg",
    "cadquery",
    "cadquery.occ_impl.shapes",
    "cadquery.occ_impl.geom",
    "cadquery.occ_impl.exporters",
    "cadquery.occ_impl.importers",
    "cadquery.occ_impl.sketch_solver",
    "cadquery.selectors",
    "cadquery.sketch",
    "cadquery.func",
    "OCP",
)

# A warm-up program for the zygote: first use of the selector grammar, sketches, extrusion and
# meshing happens once here instead of in every child. Kept to operations that start no OCCT
# thread pool (booleans do), because a forked child inherits no threads.
_WARMUP = """
import cadquery as cq
wp = cq.Workplane("XY").rect(2.0, 1.0).extrude(0.5)
top = wp.faces(">Z").workplane().center(0.1, 0.0)
sk = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))
loop = sk.moveTo(0, 0).lineTo(1, 0).lineTo(1, 1).threePointArc((0.5, 1.5), (0, 1)).close()
solid = sk.add(loop).extrude(0.25)
c = cq.Workplane("XY").circle(0.3).extrude(0.2).edges(">Z").fillet(0.05)
"""


# ==================================================================================================
# Client side
# ==================================================================================================
def check_program(program: str | None, limits: Limits) -> ExecResult | None:
    """The ExecResult for a program that cannot start (``no_code`` or ``syntax``), else None."""
    if program is None or not program.strip():
        return ExecResult(
            executable=False,
            error_class="no_code",
            message="empty program",
            language="cadquery",
            limits=limits,
        )
    try:
        compile(program, PROGRAM_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        if isinstance(exc, SyntaxError):
            msg = f"SyntaxError: {exc.msg} (program line {exc.lineno})"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return ExecResult(
            executable=False, error_class="syntax", message=msg[:600], language="cadquery", limits=limits
        )
    return None


def _worker_env() -> dict[str, str]:
    extra = {
        # One thread each: workers already run one per core, and the zygote must fork thread-free.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if os.environ.get("PYTHONPATH"):
        extra["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return sandbox.scrubbed_env(tempfile.gettempdir(), extra)


class _FdReader:
    """Reads frames from a pipe descriptor with a deadline (select + os.read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read_frame(self, deadline: float) -> tuple[dict[str, Any], list[bytes]]:
        while True:
            try:
                header, blobs, used = parse_frame(bytes(self.buf))
            except FrameError:
                header = None
            if header is not None:
                del self.buf[:used]
                return header, blobs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("worker did not answer in time")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    raise EOFError("worker closed its pipe")
                self.buf += chunk


class CadQueryWorker:
    """Client handle of one warm worker process (used by one thread at a time)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._reader: _FdReader | None = None
        self._log: Any = None

    def spawn(self) -> None:
        """Start the process (returns at once; :meth:`wait_ready` waits for cadquery's import)."""
        # The worker's stderr, kept to explain a failed start; closed in close().
        self._log = tempfile.TemporaryFile(prefix="gen3deval-cq-worker-")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gen3deval.execute.cadquery_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_worker_env(),
            cwd=tempfile.gettempdir(),
            start_new_session=True,  # terminal Ctrl-C goes to the client, which shuts workers down
            close_fds=True,
        )
        assert self.proc.stdout is not None
        self._reader = _FdReader(self.proc.stdout.fileno())

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            return sandbox.tail(self._log.read(), 2000)
        return ""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        assert self._reader is not None
        try:
            header, _ = self._reader.read_frame(time.monotonic() + timeout)
        except (EOFError, TimeoutError) as exc:
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

    def request(self, header: dict[str, Any], timeout: float) -> tuple[dict[str, Any], list[bytes]]:
        assert self.proc is not None and self.proc.stdin is not None and self._reader is not None
        self.proc.stdin.write(encode_frame(header))
        self.proc.stdin.flush()
        return self._reader.read_frame(time.monotonic() + timeout)

    def run(
        self,
        program: str,
        limits: Limits,
        *,
        linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
        angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
    ) -> ExecResult:
        req = {
            "op": "run",
            "program": program,
            "limits": limits.to_dict(),
            "linear_tolerance": float(linear_tolerance),
            "angular_tolerance": float(angular_tolerance),
        }
        header, blobs = self.request(req, limits.wall_s + WORKER_GRACE_S)
        if header.get("status") == "restart":
            raise EOFError(f"worker retired itself: {header.get('message', '')}")
        return _to_result(header, blobs, limits)

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin); kill it if it does not."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def _to_result(header: dict[str, Any], blobs: list[bytes], limits: Limits) -> ExecResult:
    status = header.get("status")
    if status == "sandbox_error":
        raise ExecutionError(f"CadQuery sandbox failed: {header.get('message', '')}")
    common: dict[str, Any] = {
        "stdout": str(header.get("stdout", "")),
        "stderr": str(header.get("stderr", "")),
        "wall_s": float(header.get("wall_s", 0.0)),
        "peak_mb": float(header.get("peak_mb", 0.0)),
        "language": "cadquery",
        "limits": limits,
        "sandbox": dict(header.get("sandbox", {})),
    }
    if status == "ok":
        nv, nf = int(header["n_vertices"]), int(header["n_faces"])
        v = np.frombuffer(blobs[0], dtype="<f8").reshape(nv, 3).astype(np.float64)
        f = np.frombuffer(blobs[1], dtype="<i8").reshape(nf, 3).astype(np.int64)
        mesh = Mesh.from_arrays(v, f, source=f"cadquery program (variable {header.get('result_name', '?')})")
        return ExecResult(executable=True, mesh=mesh, **common)
    return ExecResult(
        executable=False,
        error_class=str(header.get("error_class", "runtime")),
        message=str(header.get("message", ""))[:600],
        **common,
    )


class WorkerPool:
    """A lazily grown pool of warm workers, reused across calls; at most ``max_workers`` exist."""

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max(1, max_workers or os.cpu_count() or 1)
        self._idle: queue.LifoQueue[CadQueryWorker] = queue.LifoQueue()
        self._all: list[CadQueryWorker] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._all)

    def warm(self, n: int) -> None:
        """Start workers (in parallel) until ``n`` exist (capped by max_workers)."""
        with self._lock:
            self.max_workers = max(self.max_workers, n)
            new = [CadQueryWorker() for _ in range(max(0, n - len(self._all)))]
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
                    worker = CadQueryWorker()
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
            except (EOFError, TimeoutError, BrokenPipeError, OSError, FrameError) as exc:
                self._discard(worker)
                if attempt == 1:
                    raise ExecutionError(f"CadQuery worker died twice running a program: {exc}") from None
                continue
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


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> WorkerPool:
    """The module-level pool (created on first use, stopped at exit or by :func:`shutdown`)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
        return _POOL


def shutdown() -> None:
    """Stop all warm workers of the module-level pool; the next call starts fresh ones."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()


atexit.register(shutdown)


def run_cadquery(
    program: str,
    limits: Limits | None = None,
    *,
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> ExecResult:
    """Run one CadQuery program in the sandbox; the mesh (if any) is +Y up.

    Raises ExecutionError only when the sandbox itself fails; every failure of the program is an
    ExecResult with an ``error_class``.
    """
    limits = limits or Limits()
    early = check_program(program, limits)
    if early is not None:
        return early
    return get_pool().run(
        program, limits, linear_tolerance=linear_tolerance, angular_tolerance=angular_tolerance
    )


def iter_cadquery(
    programs: Iterable[str],
    limits: Limits | None = None,
    jobs: int | None = None,
    *,
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> Iterator[ExecResult]:
    """Run programs on ``jobs`` warm workers (default: one per core); yields results in input order,
    with at most 2 x ``jobs`` programs queued at any time (the input may be a generator)."""
    limits = limits or Limits()
    jobs = max(1, jobs or os.cpu_count() or 1)
    pool = get_pool()
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
    linear_tolerance: float = DEFAULT_LINEAR_TOLERANCE,
    angular_tolerance: float = DEFAULT_ANGULAR_TOLERANCE,
) -> list[ExecResult]:
    """:func:`iter_cadquery` collected into a list (same order as ``programs``)."""
    return list(
        iter_cadquery(
            programs, limits, jobs, linear_tolerance=linear_tolerance, angular_tolerance=angular_tolerance
        )
    )


# ==================================================================================================
# Worker side (python -m gen3deval.execute.cadquery_worker)
# ==================================================================================================
def _memfd(name: str) -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, 0)
    fd, path = tempfile.mkstemp(prefix="gen3deval-cq-")
    os.unlink(path)
    return fd


def _read_tail(fd: int, limit: int = TAIL_CHARS) -> str:
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - 4 * limit), os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        return sandbox.tail(data, limit)
    except OSError:
        return ""


class _Server:
    def __init__(self, proto_in: int, proto_out: int) -> None:
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.uid = sandbox.sandbox_uid()
        # 0711: the sandbox uid may pass through to its own job directory but not list others.
        self.base = tempfile.mkdtemp(prefix="gen3deval-cq-")
        os.chmod(self.base, 0o711)
        self.roots: list[str] = []
        self.fs_info: dict[str, Any] = {}
        self.jobs = 0

    def send(self, header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
        from gen3deval.execute._cq_wire import write_all

        write_all(self.proto_out, encode_frame(header, blobs))

    def handle(self, req: dict[str, Any]) -> None:
        from gen3deval.execute import _cq_child

        program = str(req.get("program", ""))
        limits = Limits(**req.get("limits", {}))
        lin = float(req.get("linear_tolerance", DEFAULT_LINEAR_TOLERANCE))
        ang = float(req.get("angular_tolerance", DEFAULT_ANGULAR_TOLERANCE))
        try:
            code = compile(program, PROGRAM_FILENAME, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            self.send({"status": "error", "error_class": "syntax", "message": str(exc)[:600]})
            return
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:
            # Forking a multi-threaded process copies locks but not the threads holding them: a
            # child could deadlock. Never expected (programs run only in children); retire instead.
            self.send({"status": "restart", "message": f"worker has {threads} threads"})
            raise SystemExit(0)
        self.jobs += 1
        job = os.path.join(self.base, f"job{self.jobs}")
        os.mkdir(job, 0o700)
        if self.uid is not None:
            os.chown(job, self.uid, self.uid)
        out_fd, err_fd = _memfd("stdout"), _memfd("stderr")
        r, w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # ---------------------------------------------------------------- the child
            try:
                os.close(r)
                _cq_child.child_main(
                    program=program,
                    code=code,
                    limits=limits,
                    workdir=job,
                    uid=self.uid,
                    result_fd=w,
                    out_fd=out_fd,
                    err_fd=err_fd,
                    linear_tolerance=lin,
                    angular_tolerance=ang,
                    roots=self.roots,
                )
            finally:
                os._exit(_cq_child.SANDBOX_ERROR_EXIT)
        os.close(w)
        deadline = t0 + limits.wall_s
        cap = max(256, 4 * limits.file_mb) * 1024 * 1024
        data = bytearray()
        timed_out = overflow = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([r], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    break
                data += chunk
                if len(data) > cap:
                    overflow = True
                    break
        finally:
            os.close(r)
        if timed_out or overflow:
            sandbox.kill_process_group(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status, ru, killed = sandbox.wait_with_deadline(pid, deadline, pgid=pid)
        wall = time.monotonic() - t0
        timed_out = timed_out or killed
        # Stray descendants: every process of the sandbox uid (or the group, without a uid).
        if self.uid is not None:
            sandbox.kill_uid_processes(self.uid)
            sandbox.sweep_uid_files(self.uid)
        else:
            sandbox.kill_process_group(pid)
        stdout, stderr = _read_tail(out_fd), _read_tail(err_fd)
        os.close(out_fd)
        os.close(err_fd)
        sandbox.remove_tree(job)

        rc = os.waitstatus_to_exitcode(status) if ru is not None else -signal.SIGKILL
        cpu = (ru.ru_utime + ru.ru_stime) if ru is not None else 0.0
        header, blobs = self._classify(bytes(data), rc, cpu, limits, timed_out, overflow, stderr)
        info = dict(header.pop("sandbox", None) or sandbox.sandbox_description(limits, uid=self.uid))
        info.update(
            {
                "process": "fork of a warm worker",
                "audit_hook": True,
                "tessellation": {"linear": lin, "linear_relative_to": "bbox diagonal", "angular_rad": ang},
                "zygote_threads": threads,
                "worker_pid": os.getpid(),
                "filesystem": self.fs_info.get("filesystem", "shared"),
            }
        )
        for key in ("result_name", "volume", "n_solids", "linear_deflection"):
            if key in header:
                info.setdefault("result", {})[key] = header[key]
        header.update(
            {
                "stdout": stdout,
                "stderr": stderr,
                "wall_s": wall,
                "peak_mb": sandbox.peak_rss_mb(ru) if ru is not None else 0.0,
                "cpu_s": cpu,
                "sandbox": info,
            }
        )
        self.send(header, tuple(blobs))

    def _classify(
        self,
        data: bytes,
        rc: int,
        cpu: float,
        limits: Limits,
        timed_out: bool,
        overflow: bool,
        stderr: str,
    ) -> tuple[dict[str, Any], list[bytes]]:
        from gen3deval.execute import _cq_child

        def err(cls: str, msg: str) -> tuple[dict[str, Any], list[bytes]]:
            return {"status": "error", "error_class": cls, "message": msg[:600]}, []

        header: dict[str, Any] | None = None
        blobs: list[bytes] = []
        parse_error = ""
        if data:
            try:
                header, blobs, used = parse_frame(data)
                if used != len(data):
                    header, parse_error = None, "extra bytes after the result"
            except FrameError as exc:
                parse_error = str(exc)
        if timed_out:
            return err("timeout", f"exceeded the wall-clock limit of {limits.wall_s:g} s")
        if overflow:
            return err("sandbox_violation", "flooded the result channel")
        if rc == _cq_child.VIOLATION_EXIT:
            msg = str(header.get("message", "")) if header else ""
            return err("sandbox_violation", msg or "stopped by the sandbox tripwire")
        if rc == _cq_child.SANDBOX_ERROR_EXIT and header and header.get("status") == "sandbox_error":
            return {"status": "sandbox_error", "message": str(header.get("message", ""))}, []
        if rc < 0:
            cls = sandbox.classify_signal(rc, limits, cpu_s=cpu) or "runtime"
            if cls == "runtime" and any(s in stderr for s in ("bad_alloc", "MemoryError", "Cannot allocate")):
                cls = "memory"
            what = sandbox.signal_name(rc)
            if cls == "timeout":
                return err(cls, f"killed by {what}: CPU limit of {limits.cpu_s:g} s")
            return err(cls, f"killed by {what}")
        if header is None:
            if parse_error:
                return err(
                    "sandbox_violation", f"the program tampered with the result channel ({parse_error})"
                )
            return err("runtime", f"the program ended the process (exit code {rc}) before a result was made")
        if rc != 0:
            return err("runtime", f"exit code {rc}")
        if header.get("status") == "ok":
            try:
                nv, nf = int(header["n_vertices"]), int(header["n_faces"])
                if len(blobs) != 2 or len(blobs[0]) != nv * 24 or len(blobs[1]) != nf * 24 or nf < 1:
                    raise ValueError("array sizes do not match")
                faces = np.frombuffer(blobs[1], dtype="<i8")
                verts = np.frombuffer(blobs[0], dtype="<f8")
                if faces.min() < 0 or faces.max() >= nv or not np.all(np.isfinite(verts)):
                    raise ValueError("face indices out of range or non-finite vertices")
            except (KeyError, ValueError, TypeError) as exc:
                return err("sandbox_violation", f"the program tampered with the result channel ({exc})")
            return header, blobs
        cls = str(header.get("error_class", "runtime"))
        if cls not in (
            "runtime",
            "memory",
            "no_geometry",
            "invalid_geometry",
            "sandbox_violation",
            "timeout",
        ):
            cls = "runtime"
        return err(cls, str(header.get("message", "")))


def _preimport() -> None:
    import importlib

    for name in PREIMPORT:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _private_filesystem() -> dict[str, Any]:
    """As root, give this worker (and so every child) a private mount namespace: private tmpfs on
    /tmp, /var/tmp, /dev/shm, and the interpreter's directories reachable by the sandbox uid."""
    if not sandbox.can_switch_user():
        return {"filesystem": "shared (not root)"}
    import gen3deval

    # The interpreter, the virtualenv, and gen3deval itself (an editable install lives in its checkout).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gen3deval.__file__)))
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, package_root}
    try:
        return sandbox.private_mount_namespace(sorted(r for r in roots if os.path.isdir(r)))
    except OSError as exc:
        return {"filesystem": f"shared ({exc})"}


def serve() -> int:
    """The worker's main loop: import cadquery once, then answer run requests on stdin/stdout."""
    # The protocol keeps private copies of stdin/stdout; fd 1 goes to stderr so that anything
    # printed by OCCT's C++ code cannot corrupt a frame.
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox.become_subreaper()
    fs_info = _private_filesystem()
    t0 = time.monotonic()
    try:
        from gen3deval.execute import _cq_child

        _preimport()
        import cadquery
    except Exception as exc:
        from gen3deval.execute._cq_wire import write_all

        write_all(proto_out, encode_frame({"status": "failed", "message": f"{type(exc).__name__}: {exc}"}))
        return 1
    import_s = time.monotonic() - t0
    server = _Server(proto_in, proto_out)
    server.fs_info = fs_info
    server.roots = _cq_child.read_roots()
    # Drop sys.path entries outside the library roots (e.g. the start directory), so that an
    # import in a program never lists a directory the tripwire forbids.
    sys.path[:] = [
        p for p in sys.path if p and any(_cq_child.is_under(os.path.realpath(p), [r]) for r in server.roots)
    ]
    sys.path_importer_cache.clear()
    try:
        ns: dict[str, Any] = {}
        exec(compile(_WARMUP, "<warmup>", "exec"), ns)
        solids = _cq_child.result_solids(ns["solid"])
        _cq_child.tessellate(solids, DEFAULT_LINEAR_TOLERANCE, DEFAULT_ANGULAR_TOLERANCE)
        del ns, solids
    except Exception as exc:  # a warm-up failure only costs speed
        print(f"gen3deval cadquery worker: warm-up failed: {exc}", file=sys.stderr)
    import gc

    gc.collect()
    gc.freeze()  # keep the warm heap out of the children's collections (fewer copied pages)
    server.send(
        {
            "status": "ready",
            "pid": os.getpid(),
            "uid": server.uid,
            "import_s": import_s,
            "warm_s": time.monotonic() - t0,
            "cadquery": getattr(cadquery, "__version__", "?"),
            "threads": len(os.listdir("/proc/self/task")),
            "network_isolation": sandbox.network_isolation_available(),
            **fs_info,
        }
    )
    from gen3deval.execute._cq_wire import read_frame

    stream = os.fdopen(proto_in, "rb", buffering=0)
    try:
        while True:
            try:
                req, _ = read_frame(stream)
            except (EOFError, FrameError, OSError):
                break
            op = req.get("op")
            if op == "run":
                server.handle(req)
            elif op == "ping":
                server.send({"status": "pong", "pid": os.getpid()})
            else:
                break
    finally:
        if server.uid is not None:
            sandbox.kill_uid_processes(server.uid)
        sandbox.remove_tree(server.base)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
