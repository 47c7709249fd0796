"""Run CadQuery programs in a sandbox: warm *template* workers that fork a fresh, confined child per program.

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

Error classes (PROTOCOLS.md section 9): ``no_code`` (empty program), ``syntax`` (compile() fails,
including a program too deeply nested to compile; checked before anything is forked), ``runtime``
(an exception, exit(n != 0), a crash, a SIGKILL that was not the OOM killer's), ``timeout``
(wall-clock limit: the program is killed; CPU limit: SIGXCPU/SIGKILL), ``memory`` (MemoryError,
std::bad_alloc, a kill by the OOM killer of the program's cgroup), ``no_geometry`` (no result
variable, empty result, zero volume), ``invalid_geometry`` (non-finite coordinates, negative volume,
result is not a solid), ``sandbox_violation`` (the audit tripwire saw a forbidden operation, or the
program tampered with its result channel).

Processes and channels
----------------------
The client side (:mod:`gen3deval.execute.cadquery_pool`: the API, the pools) starts each worker as
``python -m gen3deval.execute.cadquery_worker <fd> <options>`` with a scrubbed environment and one
end of a unix SOCK_SEQPACKET socketpair. The worker imports cadquery once (~2-3 s), warms up, and
becomes a **template**: it never sees a program, its output or its result. Per request the client
makes a sealed memory file holding the program, a pipe for the result and memory files for
stdout/stderr, and passes them (SCM_RIGHTS) with a small control frame (limits, tolerances: no
program). The template

1. creates the program's cgroup (memory, pids, one core) and a setup pipe, forks, and closes its
   copies of the client's descriptors at once;
2. waits for the child's setup report (``K``: confined; ``E``: confinement failed, the program never
   ran) and for the child itself, killing it (and its cgroup) at the wall limit;
3. removes the cgroup (or, without one, kills every process of the sandbox uid) and answers with a
   trusted trailer: exit status, CPU time, peak memory, timed_out, oom_killed, and the ``sandbox``
   description of what it set up (:func:`gen3deval.execute.sandbox.sandbox_description`).

The child (:mod:`gen3deval.execute._cq_child`) reads the program itself, confines itself (session,
cgroup, network namespace, the read-only minimal root of :mod:`~gen3deval.execute.sandbox.jail` with
a private size-capped tmpfs work folder, rlimits, a throw-away uid, seccomp refusing process
creation, namespaces and mounts), reports ``K`` and closes the setup pipe, installs the audit
tripwire (classification only), compiles and runs the program, and writes its result frame straight
to the client's pipe. The client reads that untrusted frame with bounds checked before each read
(:class:`~gen3deval.execute._cq_wire.FrameReader`) and classifies it with the trailer. The
``sandbox`` field of a result is built by the client from the template's ready header and trailer,
never from anything the child wrote. ``GEN3DEVAL_SANDBOX=basic`` turns the jail, cgroup and seccomp
off (the always-on layers remain: session, rlimits, netns, uid, scrubbed env, tripwire).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from gen3deval.execute import sandbox
from gen3deval.execute._cq_wire import FrameError, encode_frame, parse_frame

# The client API lives in cadquery_pool; these names stay importable from here.
from gen3deval.execute.cadquery_pool import (  # noqa: F401  (re-exports)
    DEFAULT_ANGULAR_TOLERANCE,
    DEFAULT_LINEAR_TOLERANCE,
    PROGRAM_FILENAME,
    CadQueryWorker,
    WorkerPool,
    _worker_env,
    check_program,
    get_pool,
    iter_cadquery,
    run_cadquery,
    run_cadquery_many,
    shutdown,
)
from gen3deval.execute.result import Limits
from gen3deval.execute.sandbox.policy import Isolation, sandbox_description

SETUP_TIMEOUT_S = 30.0  # bound on confinement when the wall limit is longer (it takes milliseconds)
# World-writable host folders swept after each program when there is no jail (basic isolation).
SWEEP_DIRS = (*sandbox.WORLD_WRITABLE_DIRS, "/run/lock")

# Modules imported by the template so that programs can import them, and so that the child never
# needs a file of the gen3deval checkout (it is not in the jail).
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
    # The child's own path: every sandbox layer it applies after the fork.
    "gen3deval.execute._cq_child",
    "gen3deval.execute.sandbox.process",
    "gen3deval.execute.sandbox.policy",
    "gen3deval.execute.sandbox.jail",
    "gen3deval.execute.sandbox.cgroups",
    "gen3deval.execute.sandbox.seccomp",
    "gen3deval.execute.sandbox.tripwire",
)

# A warm-up program for the template: first use of the selector grammar, sketches, extrusion and
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


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Template:
    """The worker's state: what it can set up, and the per-request fork/watch/report cycle."""

    def __init__(
        self, sock: socket.socket, isolation: Isolation, tripwire: bool, fs_info: dict[str, Any]
    ) -> None:
        from gen3deval.execute import _cq_child
        from gen3deval.execute.sandbox import jail, seccomp

        self.sock = sock
        self.isolation = isolation
        self.tripwire = tripwire
        self.uid = sandbox.sandbox_uid()
        self.fs_info = fs_info
        self.jail_ok = isolation.filesystem and jail.jail_available()
        self.seccomp_ok = isolation.seccomp and seccomp.seccomp_available()
        self.jail_spec: jail.JailSpec | None = None
        if self.jail_ok:
            ro = tuple(dict.fromkeys(jail.python_ro_paths() + jail.system_ro_paths()))
            # The child needs no file of gen3deval (all pre-imported): hide the package when an exposed
            # path holds it (a non-editable install in site-packages carries suite data).
            pkg = os.path.realpath(os.path.dirname(_cq_child.__file__ or "."))
            pkg = os.path.dirname(os.path.dirname(pkg))  # .../gen3deval
            exposed = [os.path.realpath(p) for p in ro]
            mask = (pkg,) if any(_cq_child.is_under(pkg, [p]) for p in exposed) else ()
            self.jail_spec = jail.JailSpec(ro, mask_paths=mask, work_mb=isolation.work_mb)
            self.read_roots = tuple(_cq_child.read_roots(jail.python_ro_paths()))
        else:
            self.read_roots = tuple(_cq_child.read_roots())
        # 0711: without a jail, the sandbox uid may pass through to its own job directory only.
        self.base = tempfile.mkdtemp(prefix="gen3deval-cq-")
        os.chmod(self.base, 0o711)
        self.jobs = 0

    def send(self, header: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(header))

    def ready_header(self, import_s: float, warm_s: float, version: str) -> dict[str, Any]:
        from gen3deval.execute.sandbox import cgroups, jail

        return {
            "status": "ready",
            "pid": os.getpid(),
            "uid": self.uid,
            "import_s": import_s,
            "warm_s": warm_s,
            "cadquery": version,
            "threads": len(os.listdir("/proc/self/task")),
            "network_isolation": sandbox.network_isolation_available(),
            "isolation": asdict(self.isolation),
            "jail": self.jail_ok,
            "jail_reason": "" if self.jail_ok else jail.jail_unavailable_reason(),
            "cgroup": cgroups.cgroup_support() if self.isolation.cgroup else None,
            "seccomp": self.seccomp_ok,
            "tripwire": self.tripwire,
            **self.fs_info,
        }

    # --- one request --------------------------------------------------------------------------------
    def handle(self, ctrl: dict[str, Any], fds: list[int]) -> None:
        from gen3deval.execute import _cq_child
        from gen3deval.execute.sandbox import cgroups, jail, seccomp

        if len(fds) != 4:
            _close(*fds)
            self.send({"status": "error", "message": f"expected 4 descriptors, got {len(fds)}"})
            return
        prog_fd, res_w, out_fd, err_fd = fds
        try:
            limits = Limits(**ctrl["limits"])
            lin = float(ctrl["linear_tolerance"])
            ang = float(ctrl["angular_tolerance"])
        except (KeyError, TypeError, ValueError) as exc:
            _close(*fds)
            self.send({"status": "error", "message": f"bad request: {exc}"})
            return
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:
            # Forking a multi-threaded process copies locks but not the threads holding them: a
            # child could deadlock. Never expected (programs run only in children); retire instead.
            _close(*fds)
            self.send({"status": "restart", "message": f"worker has {threads} threads"})
            raise SystemExit(0)
        cg = cgroups.create_program_cgroup(limits) if self.isolation.cgroup else None
        spec_jail = self.jail_spec
        policy = seccomp.SeccompPolicy(allow_fork=False, allow_exec=False) if self.seccomp_ok else None
        job = None
        if spec_jail is None:
            self.jobs += 1
            job = os.path.join(self.base, f"job{self.jobs}")
            os.mkdir(job, 0o700)
            if self.uid is not None:
                os.chown(job, self.uid, self.uid)
        workdir = jail.WORK_DIR if spec_jail is not None else str(job)
        spec = _cq_child.ChildSpec(
            limits=limits,
            uid=self.uid,
            workdir=workdir,
            jail=spec_jail,
            cgroup=cg,
            seccomp=policy,
            tripwire=self.tripwire,
            read_roots=self.read_roots,
            linear_tolerance=lin,
            angular_tolerance=ang,
        )
        setup_r, setup_w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # ---------------------------------------------------------------- the child
            try:
                os.close(setup_r)
                _cq_child.child_main(
                    spec, prog_fd=prog_fd, result_fd=res_w, out_fd=out_fd, err_fd=err_fd, setup_fd=setup_w
                )
            finally:
                os._exit(_cq_child.SANDBOX_ERROR_EXIT)
        # The template keeps nothing of the request: its copies of the client's descriptors go now.
        _close(prog_fd, res_w, out_fd, err_fd, setup_w)
        try:
            setup, status, ru, timed_out = self._watch(pid, setup_r, t0 + limits.wall_s, cg)
        finally:
            _close(setup_r)
        wall = time.monotonic() - t0
        oom = False
        cg_peak = None
        if cg is not None:
            cg.remove()  # kills what is left, then rmdir; oom/peak stay readable
            oom, cg_peak = cg.oom_killed(), cg.peak_mb()
        if self.uid is not None and (cg is None or spec_jail is None):
            sandbox.kill_uid_processes(self.uid)
            if spec_jail is None:
                sandbox.sweep_uid_files(self.uid, SWEEP_DIRS)
        elif cg is None:
            sandbox.kill_process_group(pid)
        if job is not None:
            sandbox.remove_tree(job)

        if setup[:1] == _cq_child.SETUP_OK:
            setup_state, setup_error = "ok", ""
        elif setup[:1] == _cq_child.SETUP_FAILED:
            setup_state, setup_error = "failed", setup[1:].decode("utf-8", "replace")
        else:
            setup_state = "failed"
            setup_error = f"the child ended before confinement completed (wait status {status})"
        desc = sandbox_description(
            limits,
            uid=self.uid,
            jail=spec_jail is not None,
            cgroup=cg,
            seccomp=policy,
            isolation=self.isolation,
        )
        rc = os.waitstatus_to_exitcode(status) if ru is not None else -signal.SIGKILL
        self.send(
            {
                "status": "done",
                "setup": setup_state,
                "setup_error": setup_error[:2000],
                "exit": rc,
                "timed_out": timed_out,
                "oom_killed": bool(oom),
                "cpu_s": (ru.ru_utime + ru.ru_stime) if ru is not None else 0.0,
                "peak_mb": sandbox.peak_rss_mb(ru) if ru is not None else 0.0,
                "cgroup_peak_mb": cg_peak,
                "wall_s": wall,
                "sandbox": desc,
                "threads": threads,
            }
        )

    def _watch(self, pid: int, setup_r: int, deadline: float, cg: Any) -> tuple[bytes, int, Any, bool]:
        """Collect the setup report and reap the child, killing it at ``deadline``.

        Returns (setup bytes, wait status, rusage or None, killed at the deadline)."""
        setup = bytearray()
        setup_open = True
        setup_deadline = min(deadline, time.monotonic() + SETUP_TIMEOUT_S)
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(pid)
        timed_out = False
        try:
            while True:
                now = time.monotonic()
                limit = setup_deadline if setup_open and not setup[:1] else deadline
                if now >= limit:
                    timed_out = now >= deadline
                    self._kill(pid, cg)
                    break
                watch = ([setup_r] if setup_open else []) + ([pidfd] if pidfd >= 0 else [])
                wait = limit - now if pidfd >= 0 else min(limit - now, 0.005)
                if watch:
                    ready = select.select(watch, [], [], wait)[0]
                else:
                    ready = []
                    time.sleep(wait)
                if setup_open and setup_r in ready:
                    chunk = os.read(setup_r, 65536)
                    if not chunk or len(setup) > 1 << 20:
                        setup_open = False
                    else:
                        setup += chunk
                if pidfd >= 0 and pidfd in ready:
                    break
                if pidfd < 0:
                    got, status, ru = os.wait4(pid, os.WNOHANG)
                    if got == pid:
                        return self._drain(setup, setup_r, setup_open), status, ru, False
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        status, ru, killed = sandbox.wait_with_deadline(pid, time.monotonic() + 5.0, pgid=pid)
        return self._drain(setup, setup_r, setup_open), status, ru, timed_out or killed

    @staticmethod
    def _drain(setup: bytearray, setup_r: int, still_open: bool) -> bytes:
        """The rest of the setup report (the child is gone, so the pipe ends at once)."""
        while still_open and len(setup) <= 1 << 20:
            ready, _, _ = select.select([setup_r], [], [], 0.5)
            chunk = os.read(setup_r, 65536) if ready else b""
            if not chunk:
                break
            setup += chunk
        return bytes(setup)

    def _kill(self, pid: int, cg: Any) -> None:
        if cg is not None:
            cg.kill_all()
        sandbox.kill_process_group(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _preimport() -> None:
    import importlib

    for name in PREIMPORT:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _private_filesystem() -> dict[str, Any]:
    """Without a jail, as root: give this worker (and so every child) a private mount namespace:
    private tmpfs on /tmp, /var/tmp, /dev/shm, and the interpreter's directories reachable by the
    sandbox uid (:func:`gen3deval.execute.sandbox.private_mount_namespace`)."""
    if not sandbox.can_switch_user():
        return {"template_filesystem": "shared (not root)"}
    import gen3deval

    # The interpreter, the virtualenv, and gen3deval itself (an editable install lives in its checkout).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(gen3deval.__file__)))
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, package_root}
    try:
        info = sandbox.private_mount_namespace(sorted(r for r in roots if os.path.isdir(r)))
        return {"template_filesystem": info.get("filesystem", "private mount namespace")}
    except OSError as exc:
        return {"template_filesystem": f"shared ({exc})"}


def serve(argv: list[str]) -> int:
    """The template's main loop: import cadquery once, then answer run requests on the socket.

    ``argv``: [socket fd, JSON options {"isolation": {...}, "tripwire": bool}].
    """
    from gen3deval.execute.sandbox import jail

    sock = socket.socket(fileno=int(argv[0]))
    opts = json.loads(argv[1]) if len(argv) > 1 else {}
    isolation = Isolation(**opts.get("isolation", {}))
    tripwire = bool(opts.get("tripwire", True))
    # stdout goes to stderr (the client's log), so that anything printed by OCCT's C++ code is kept.
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox.become_subreaper()
    # With a jail every child builds its own root from the host view; without one, the worker's
    # private mount namespace at least keeps /tmp and friends private to its programs.
    fs_info = {} if isolation.filesystem and jail.jail_available() else _private_filesystem()
    t0 = time.monotonic()
    try:
        _preimport()
        import cadquery

        from gen3deval.execute import _cq_child
    except Exception as exc:
        sock.sendall(encode_frame({"status": "failed", "message": f"{type(exc).__name__}: {exc}"}))
        return 1
    import_s = time.monotonic() - t0
    server = _Template(sock, isolation, tripwire, fs_info)
    # Drop sys.path entries outside the library roots (the start directory, an editable checkout),
    # so that an import in a program never lists a directory the tripwire forbids or the jail lacks.
    sys.path[:] = [
        p for p in sys.path if p and _cq_child.is_under(os.path.realpath(p), list(server.read_roots))
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
    server.send(server.ready_header(import_s, time.monotonic() - t0, getattr(cadquery, "__version__", "?")))
    try:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
            except OSError:
                break
            if not msg:
                _close(*fds)
                break
            try:
                req, _, _ = parse_frame(msg)
            except FrameError:
                _close(*fds)
                break
            op = req.get("op")
            if op == "run":
                server.handle(req, list(fds))
            elif op == "ping":
                _close(*fds)
                server.send({"status": "pong", "pid": os.getpid()})
            else:
                _close(*fds)
                break
    finally:
        if server.uid is not None:
            sandbox.kill_uid_processes(server.uid)
        sandbox.remove_tree(server.base)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
