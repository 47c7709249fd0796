"""The Three.js executor: one untrusted program -> one :class:`~gen3deval.mesh.types.Mesh`, sandboxed.

The program contract (prompt templates may quote this block verbatim)::

    Write JavaScript that defines a function

        function createObject(THREE) { ... return object; }

    - THREE is the three.js module (version pinned by gen3deval); do not import anything else.
      `import * as THREE from 'three'` / `require('three')` lines are accepted and ignored.
    - Return one THREE.Object3D (a Mesh, or a Group of meshes, nested as you like). Build geometry
      from THREE's BufferGeometry classes (BoxGeometry, CylinderGeometry, ExtrudeGeometry, ...).
    - Units are free (the object is normalised before scoring); +Y is up, the front faces +Z.
    - Each mesh's material colour (material.color) is kept; textures are not.
    - No DOM, no renderer, no timers, no network, no files. createObject may be async.

What is exported: every visible ``Mesh`` (also ``InstancedMesh``, one copy per instance) under the
returned object, with its world transform baked in (``updateWorldMatrix`` on the whole tree), its
geometry's index, ``groups`` and ``drawRange`` honoured, one material colour per triangle range
(``material.color``, times ``instanceColor``; the alpha is ``opacity`` for transparent materials).
Points, lines, sprites, invisible objects and morph/skin deformations are ignored. The result is in
three's frame: +Y up, right-handed (the canonical gen3deval frame, PROTOCOLS.md section 1).

How it runs (``docs/threejs-contract.md`` has the full story):

- a fresh ``node`` per program, from a V8 startup snapshot that already holds three (the scaffold
  ``threejs_scaffold/runner.js`` bundled with three's ESM build; built once per Node/three version
  into a cache directory, see :mod:`~gen3deval.execute.threejs_runtime`), falling back to the plain
  bundle where snapshots fail;
- before the program is read, the scaffold freezes every intrinsic of the host realm (reachable
  through three's classes) and the THREE namespace; its exporter reads the program's objects
  defensively with captured primordials, so a program cannot change how its object is exported;
- Node's permission model (``--permission``: no file reads beyond what Node needs to start, no file
  writes, no child processes, no workers), ``--disallow-code-generation-from-strings`` (so
  ``X.constructor.constructor('return process')`` fails outside the vm), the program inside a ``vm``
  context with a timeout and ``microtaskMode: 'afterEvaluate'``;
- from :mod:`gen3deval.execute.sandbox`, per ``GEN3DEVAL_SANDBOX`` (``full`` by default): a jail
  (read-only minimal root: system directories, node, the one snapshot/bundle file; a private quota'd
  ``/tmp``; ``/proc`` showing only the program), one cgroup (memory, pids, CPU), a seccomp filter
  (no fork, no namespaces), plus always its own process group killed at the wall limit, rlimits, an
  empty network namespace where permitted, a scrubbed environment and a throw-away uid when root.
  The ``sandbox`` description of the result is built by the parent from what it set up.

The GLB comes back on stdout (the child cannot write files) after one JSON header line, and is read
as untrusted input (:mod:`~gen3deval.execute.threejs_glb`: every accessor used once, ranges and the
face/vertex limits checked before anything is copied); whatever the child wrote, :func:`run_threejs`
returns a classified result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import textwrap
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from gen3deval.errors import ConfigError, ExecutionError
from gen3deval.execute import sandbox
from gen3deval.execute.result import ERROR_CLASSES, ExecResult, Limits
from gen3deval.execute.threejs_glb import GLBError, glb_to_mesh, linear_to_srgb
from gen3deval.execute.threejs_runtime import (
    INSTALL_HINT,
    MIN_NODE,
    NODE_HINT,
    RUNNER_JS,
    SCAFFOLD_DIR,
    Runtime,
    _specifiers,
    build_bundle,
    cache_dir,
    install_hint,
    node_binary,
    node_flags,
    others_can_reach,
    parse_node_version,
    runtime,
    scaffold_dir,
    three_build_dir,
    three_version,
    v8_flags,
)
from gen3deval.mesh.types import Mesh

# Node refuses to start below ~600 MiB of address space (it reserves a 128 MiB code range and more).
MIN_MEMORY_MB = 768
DEFAULT_LIMITS = Limits(wall_s=10.0, cpu_s=10.0, memory_mb=2048, file_mb=64, processes=64, network=False)
DEFAULT_MAX_TRIANGLES = 5_000_000

# The contract block of the module docstring, dedented: what prompt templates quote.
CONTRACT = (
    textwrap.dedent(__doc__.split("::", 1)[1].split("What is exported", 1)[0]).strip() + "\n"
    if __doc__
    else ""
)


# --------------------------------------------------------------------------------------------------
# program text: accept the ESM/CJS spellings models write
# --------------------------------------------------------------------------------------------------

_SPEC = r"""(?P<q>['"])(?P<spec>[^'"\n]+)(?P=q)"""
_IMPORT_NAMED = re.compile(rf"^([ \t]*)import\s+\{{([^}}]*)\}}\s*from\s*{_SPEC}[ \t]*;?[ \t]*$", re.M)
_IMPORT_NS = re.compile(
    rf"^([ \t]*)import\s+(?:\*\s*as\s+)?([A-Za-z_$][\w$]*)\s+from\s*{_SPEC}[ \t]*;?[ \t]*$", re.M
)
_IMPORT_DEFAULT_AND_NAMED = re.compile(
    rf"^([ \t]*)import\s+([A-Za-z_$][\w$]*)\s*,\s*(?:\{{([^}}]*)\}}|\*\s*as\s+([A-Za-z_$][\w$]*))\s*from\s*{_SPEC}[ \t]*;?[ \t]*$",
    re.M,
)
_IMPORT_BARE = re.compile(rf"^([ \t]*)import\s*{_SPEC}[ \t]*;?[ \t]*$", re.M)
_EXPORT_DEFAULT_FN = re.compile(r"^([ \t]*)export\s+default\s+(?=(?:async\s+)?function\b|class\b)", re.M)
_EXPORT_DECL = re.compile(r"^([ \t]*)export\s+(?=(?:async\s+)?function\b|const\b|let\b|var\b|class\b)", re.M)
_EXPORT_LIST = re.compile(r"^[ \t]*export\s*\{[^}]*\}\s*;?[ \t]*$", re.M)
_EXPORT_DEFAULT_NAME = re.compile(r"^[ \t]*export\s+default\s+([A-Za-z_$][\w$]*)\s*;?[ \t]*$", re.M)
_EXPORT_DEFAULT_EXPR = re.compile(r"^([ \t]*)export\s+default\s+", re.M)


def _quoted(m: re.Match[str]) -> str:
    return f"{m.group('q')}{m.group('spec')}{m.group('q')}"


def _destructure(specs: str) -> str:
    return ", ".join(name if name == alias else f"{name}: {alias}" for name, alias in _specifiers(specs))


def prepare_program(source: str) -> str:
    """Rewrite the ES-module syntax models write into the classic script the vm runs, keeping every
    line where it was (line numbers in error messages stay right).

    - ``import * as THREE from 'three'`` -> ``const THREE = require('three');`` (the sandbox's
      ``require`` returns THREE for ``'three'``, refuses Node's modules as a sandbox violation and
      reports any other module, e.g. ``three/addons/...``, as not found: a runtime error);
    - ``import { Mesh, BoxGeometry as Box } from 'three'`` -> ``const { Mesh, BoxGeometry: Box } = require('three');``
    - ``export function`` / ``export const`` / ``export default function`` -> the declaration;
      ``export { createObject };`` and ``export default createObject;`` -> removed;
      ``export default (THREE) => ...`` -> ``module.exports.default = ...``.
    """

    def _named(m: re.Match[str]) -> str:
        return f"{m.group(1)}const {{ {_destructure(m.group(2))} }} = require({_quoted(m)});"

    def _ns(m: re.Match[str]) -> str:
        return f"{m.group(1)}const {m.group(2)} = require({_quoted(m)});"

    def _both(m: re.Match[str]) -> str:
        rest = (
            f"const {{ {_destructure(m.group(3))} }} = {m.group(2)};"
            if m.group(3)
            else f"const {m.group(4)} = {m.group(2)};"
        )
        return f"{m.group(1)}const {m.group(2)} = require({_quoted(m)}); {rest}"

    def _bare(m: re.Match[str]) -> str:
        return f"{m.group(1)}require({_quoted(m)});"

    out = _IMPORT_DEFAULT_AND_NAMED.sub(_both, source)
    out = _IMPORT_NAMED.sub(_named, out)
    out = _IMPORT_NS.sub(_ns, out)
    out = _IMPORT_BARE.sub(_bare, out)
    out = _EXPORT_DEFAULT_FN.sub(r"\1", out)
    out = _EXPORT_DECL.sub(r"\1", out)
    out = _EXPORT_LIST.sub("", out)
    out = _EXPORT_DEFAULT_NAME.sub("", out)
    out = _EXPORT_DEFAULT_EXPR.sub(r"\1module.exports.default = ", out)
    return out


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------

_slot_lock = threading.Lock()
_free_slots = list(range(63, -1, -1))


@contextlib.contextmanager
def _uid_slot() -> Iterator[int | None]:
    """A sandbox uid unique to this running program, or None when we cannot switch users.

    sandbox.sandbox_uid(slot) defaults to slot = pid, one uid per process; threads of one process
    running programs side by side need distinct uids (the sweep after a program kills every process
    of its uid). Slots here live above pid_max (2**22), so they never meet another process's pid slot.
    """
    if not sandbox.can_switch_user():
        yield None
        return
    with _slot_lock:
        if not _free_slots:
            raise ExecutionError("more than 64 Three.js programs at once in one process")
        k = _free_slots.pop()
    try:
        yield sandbox.sandbox_uid((1 << 22) + ((os.getpid() << 6) | k) % (1 << 30))
    finally:
        with _slot_lock:
            _free_slots.append(k)


def _check_limits(limits: Limits) -> None:
    if limits.wall_s <= 0:
        raise ConfigError(f"limits.wall_s must be > 0, got {limits.wall_s}")
    if 0 < limits.memory_mb < MIN_MEMORY_MB:
        raise ConfigError(
            f"limits.memory_mb must be >= {MIN_MEMORY_MB} for Node (Three.js), got {limits.memory_mb}"
        )


def _heap_mb(limits: Limits) -> int:
    # V8's heap limit must bite before RLIMIT_AS so that a memory bomb dies with Node's own clear
    # "heap out of memory" instead of an mmap failure somewhere; Node needs ~600 MiB of address space
    # besides the heap.
    if limits.memory_mb <= 0:
        return 4096
    return max(64, min(limits.memory_mb - 640, limits.memory_mb // 2))


# Out-of-memory evidence in Node's stderr (V8's heap, array buffers, WebAssembly memories).
_OOM = re.compile(
    r"heap out of memory|Fatal process out of memory|Allocation failed|OOM|"
    r"WebAssembly\.Memory(?:\.grow)?\(\): (?:could not allocate memory|Maximum memory size exceeded|Unable to grow)",
    re.I,
)
# The header line: logs (64 KiB) + message, JSON-escaped; anything longer is not the scaffold's.
MAX_HEADER_BYTES = 1 << 20


def run_threejs(
    program: str,
    limits: Limits | None = None,
    *,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    snapshot: bool = True,
) -> ExecResult:
    """Run one Three.js program (see the module docstring for the contract) and return its mesh or a
    classified error. Never raises for a bad program; raises DependencyError when Node or three is
    missing, ConfigError for impossible limits, ExecutionError when the sandbox cannot be set up."""
    limits = limits or DEFAULT_LIMITS
    outcome, info = run_scaffold(program, limits, max_triangles=max_triangles, snapshot=snapshot)
    return _result(outcome, limits, info, max_triangles=max_triangles)


def run_scaffold(
    program: str,
    limits: Limits | None = None,
    *,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    snapshot: bool = True,
) -> tuple[sandbox.ProcessOutcome, dict[str, Any]]:
    """The raw run behind :func:`run_threejs`: the sandboxed Node's outcome (stdout = a JSON header
    line, then the GLB bytes) and the sandbox description (built here, in the parent)."""
    limits = limits or DEFAULT_LIMITS
    _check_limits(limits)
    rt = runtime(snapshot=snapshot)
    heap = _heap_mb(limits)
    argv = rt.argv(heap)
    source = prepare_program(program)
    # The vm deadline (ms since Node started) falls just before our wall-clock kill, so a program
    # that runs too long is usually reported by the scaffold itself, with its console output.
    options = {"timeout_ms": max(50, int(limits.wall_s * 1000) - 150), "max_triangles": int(max_triangles)}
    stdin = json.dumps(options).encode() + b"\n" + source.encode("utf-8", "surrogatepass")
    max_out = max(1, limits.file_mb) * 1024 * 1024 + 256 * 1024 if limits.file_mb > 0 else 1 << 30
    snap = "--snapshot-blob" in argv
    # The one file node reads: the blob after --snapshot-blob, or the bundle (the last argument).
    needed = argv[argv.index("--snapshot-blob") + 1] if snap else argv[-1]
    outcome = _sandboxed(argv, stdin, limits, rt, files=(needed,), max_stdout_bytes=max_out)
    info = dict(outcome.sandbox)
    info.update(
        {
            "runtime": "node " + rt.node_version,
            "three": rt.three_version,
            "startup": "snapshot" if snap else "bundle",
            "node_permissions": f"fs-read: {'none' if snap else 'the bundle only'}; no fs-write, child_process, worker",
            "code_generation": "refused outside the vm context",
            "host_realm": "intrinsics and the THREE namespace frozen before the program runs",
            "heap_mb": heap,
        }
    )
    return outcome, info


def jail_spec(
    rt: Runtime, files: tuple[str, ...] = (), isolation: sandbox.Isolation | None = None
) -> sandbox.JailSpec:
    """What a Node program sees in its jail: the system directories, node's install prefix and
    ``files`` (the snapshot blob or the bundle its argv names, bound read-only at the same path so the
    argv and ``--allow-fs-read`` stay valid); nothing of the project, the scaffold, the cache's other
    files or the data. Its private work tmpfs is ``isolation.work_mb`` MiB."""
    iso = isolation or sandbox.default_isolation()
    ro: list[str] = []
    for p in (*sandbox.system_ro_paths(), *sandbox.node_ro_paths(rt.node), *files):
        if p not in ro:
            ro.append(p)
    return sandbox.JailSpec(ro_paths=tuple(ro), work_mb=iso.work_mb)


# Node makes threads (clone with CLONE_THREAD), never processes; the filter is installed before exec.
NODE_SECCOMP = sandbox.SeccompPolicy(allow_fork=False, allow_exec=True)


def _sandboxed(
    argv: list[str],
    stdin: bytes,
    limits: Limits,
    rt: Runtime,
    *,
    files: tuple[str, ...] = (),
    max_stdout_bytes: int = 1 << 30,
) -> sandbox.ProcessOutcome:
    """Run ``argv`` confined by :mod:`~gen3deval.execute.sandbox` (own uid, netns, rlimits, scrubbed
    env, wall-clock kill of the group, sweep of the uid's processes and files) plus the layers of
    :func:`sandbox.default_isolation`: the jail of :func:`jail_spec` (with ``files``), a cgroup,
    seccomp (no fork)."""
    iso = sandbox.default_isolation()
    spec = jail_spec(rt, files, iso) if iso.filesystem else None
    with _uid_slot() as uid, sandbox.private_tmpdir(prefix="gen3deval-js-", owner_uid=uid) as tmp:
        try:
            return sandbox.run_limited(
                argv,
                limits,
                cwd=tmp,
                env=sandbox.scrubbed_env(tmp),
                stdin=stdin,
                uid=uid,
                address_space=limits.memory_mb > 0,
                max_stdout_bytes=max_stdout_bytes,
                isolation=iso,
                jail=spec,
                seccomp=NODE_SECCOMP,
            )
        except OSError as exc:
            raise ExecutionError(f"cannot start node for a Three.js program: {exc}") from exc
        finally:
            if uid is not None:
                sandbox.sweep_uid_files(uid)


def run_node_script(
    script: str, limits: Limits | None = None, *, stdin: bytes = b"", node_permissions: bool = True
) -> sandbox.ProcessOutcome:
    """Run ``script`` as a plain Node script (no vm, full ``process`` and ``require``) under exactly the
    sandbox Three.js programs get: the same Node flags and permission model (no file reads: the
    script comes on the command line), jail, cgroup, seccomp, uid, network namespace, rlimits and
    environment. This is what a program that escaped the vm would face; tests use it to probe the
    boundary. ``node_permissions=False`` leaves Node's permission model out: what a program that also
    got past Node's own checks would face (the OS layers alone)."""
    limits = limits or DEFAULT_LIMITS
    _check_limits(limits)
    heap = _heap_mb(limits)
    rt = runtime()
    flags = node_flags(rt.node_version) if node_permissions else ["--disable-warning=ExperimentalWarning"]
    argv = [rt.node, *flags, *v8_flags(heap), "-e", script]
    return _sandboxed(argv, stdin, limits, rt)


def _result(
    outcome: sandbox.ProcessOutcome,
    limits: Limits,
    info: dict[str, Any],
    *,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
) -> ExecResult:
    """Turn what the sandboxed Node did into an ExecResult (the header's class when there is one).
    Never raises for anything the child wrote: what cannot be read is a ``sandbox_violation``."""
    stderr = ""
    with contextlib.suppress(Exception):
        stderr = sandbox.tail(outcome.stderr.decode("utf-8", "replace"), 4000) if outcome.stderr else ""

    def result(cls: str | None, message: str = "", logs: str = "", mesh: Mesh | None = None) -> ExecResult:
        return ExecResult(
            executable=cls is None,
            mesh=mesh,
            error_class=cls,
            message=message[:800],
            stdout=logs,
            stderr=stderr,
            wall_s=round(outcome.wall_s, 4),
            peak_mb=round(outcome.peak_mb, 1),
            language="threejs",
            limits=limits,
            sandbox=info,
        )

    try:
        return _classify(outcome, limits, info, stderr, result, max_triangles)
    except Exception as exc:  # anything the child wrote that the checks above did not foresee
        return result(
            "sandbox_violation",
            f"the scaffold's output could not be read ({type(exc).__name__}): corrupt or forged",
        )


def _classify(
    outcome: sandbox.ProcessOutcome,
    limits: Limits,
    info: dict[str, Any],
    stderr: str,
    result: Callable[..., ExecResult],
    max_triangles: int,
) -> ExecResult:
    out = outcome.stdout
    nl = out.find(b"\n", 0, MAX_HEADER_BYTES)
    header: dict[str, Any] | None = None
    if nl >= 0:
        try:
            parsed = json.loads(out[:nl])
        except (ValueError, RecursionError):
            parsed = None
        header = parsed if isinstance(parsed, dict) else None
    oom = bool(getattr(outcome, "oom_killed", False))
    if header is None:
        # No header from the scaffold: Node died or was killed (or something else wrote to stdout).
        if outcome.timed_out:
            return result("timeout", f"killed at the wall-clock limit of {limits.wall_s:g} s")
        if outcome.stdout_truncated:
            return result("memory", f"output exceeded the limit of {limits.file_mb} MiB")
        if oom or _OOM.search(stderr) or outcome.returncode in (134, -6):
            heap = info.get("heap_mb")
            return result(
                "memory", f"out of memory (limit {limits.memory_mb} MiB address space, {heap} MiB heap)"
            )
        if "ERR_ACCESS_DENIED" in stderr:
            return result(
                "sandbox_violation", "the program used a resource the sandbox forbids: " + _last_line(stderr)
            )
        if out:
            return result(
                "sandbox_violation",
                "the scaffold's output is corrupt: the program tampered with the host's built-ins or left the vm",
            )
        # A SIGKILL is 'memory' only with evidence (cgroup OOM kill, OOM text): else 'runtime'.
        cls = (
            sandbox.classify_signal(
                outcome.returncode, limits, cpu_s=outcome.cpu_s, oom_killed=oom, stderr=stderr
            )
            or "runtime"
        )
        how = sandbox.signal_name(outcome.returncode)
        return result(cls, f"node ended with {how} without a result: {_last_line(stderr)}")
    raw_logs = header.get("logs", "")
    logs = raw_logs[:65536] if isinstance(raw_logs, str) else ""
    if header.get("ok") is not True:
        child_cls = header.get("error_class")
        message = header.get("message", "")
        return result(
            child_cls if isinstance(child_cls, str) and child_cls in ERROR_CLASSES else "runtime",
            message if isinstance(message, str) else "",
            logs,
        )
    glb = out[nl + 1 :]
    if outcome.stdout_truncated:
        return result("memory", f"the exported mesh exceeded the output limit of {limits.file_mb} MiB", logs)
    declared = header.get("glb_bytes")
    if type(declared) is not int or len(glb) != declared:
        return result(
            "sandbox_violation", "the scaffold's output was tampered with (GLB length mismatch)", logs
        )
    try:
        mesh = glb_to_mesh(glb, source="threejs program", max_triangles=max_triangles)
    except (GLBError, ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
        return result("sandbox_violation", f"the scaffold's GLB is malformed ({exc})", logs)
    if mesh.n_faces == 0:
        return result("no_geometry", "the program produced no triangles", logs)
    if not np.isfinite(mesh.vertices).all():
        return result("invalid_geometry", "the mesh has NaN or infinite vertices", logs)
    return result(None, "", logs, mesh)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "Error" in ln or "ERR_" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no message)"


def iter_threejs(
    programs: Iterable[str],
    limits: Limits | None = None,
    *,
    jobs: int | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
) -> Iterator[ExecResult]:
    """Run programs ``jobs`` at a time (default: the CPU count), yielding results in input order with
    at most 2 x ``jobs`` programs queued (the input may be a generator). Threads suffice: each
    program is its own Node process."""
    limits = limits or DEFAULT_LIMITS
    _check_limits(limits)
    runtime().snapshot(_heap_mb(limits))  # build the snapshot once, before the threads race for it
    jobs = max(1, min(int(jobs or os.cpu_count() or 1), 64))

    def one(program: str) -> ExecResult:
        return run_threejs(program, limits, max_triangles=max_triangles)

    if jobs == 1:
        yield from map(one, programs)
        return
    pending: deque[Future[ExecResult]] = deque()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gen3deval-js") as pool:
        for program in programs:
            pending.append(pool.submit(one, program))
            while len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def run_threejs_many(
    programs: Iterable[str],
    limits: Limits | None = None,
    *,
    jobs: int | None = None,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
) -> list[ExecResult]:
    """:func:`iter_threejs` collected into a list (same order as ``programs``)."""
    return list(iter_threejs(programs, limits, jobs=jobs, max_triangles=max_triangles))


def default_limits() -> Limits:
    """The default limits for Three.js programs (10 s, 2 GiB address space, no network)."""
    return replace(DEFAULT_LIMITS)


__all__ = [
    "CONTRACT",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_TRIANGLES",
    "INSTALL_HINT",
    "MIN_MEMORY_MB",
    "MIN_NODE",
    "NODE_HINT",
    "RUNNER_JS",
    "SCAFFOLD_DIR",
    "GLBError",
    "Runtime",
    "build_bundle",
    "cache_dir",
    "default_limits",
    "glb_to_mesh",
    "install_hint",
    "iter_threejs",
    "jail_spec",
    "linear_to_srgb",
    "node_binary",
    "node_flags",
    "others_can_reach",
    "parse_node_version",
    "prepare_program",
    "run_node_script",
    "run_scaffold",
    "run_threejs",
    "run_threejs_many",
    "runtime",
    "scaffold_dir",
    "three_build_dir",
    "three_version",
    "v8_flags",
]
