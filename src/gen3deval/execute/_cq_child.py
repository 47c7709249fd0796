"""What runs inside the CadQuery template's forked child: confine, read and run the program, return geometry.

Imported only by the template worker process (it imports cadquery), and imported there *before* any
program runs: after the jail is entered the child can no longer read gen3deval's sources. See
:mod:`gen3deval.execute.cadquery_worker` for the contract and the protocol; this module holds the
child's life (:func:`child_main`), the result lookup, validation and tessellation.

The child talks to two parties:

- the template, over the *setup pipe*, once: ``K`` + JSON (confinement done; written after every
  layer is in place and before the program is even compiled) or ``E`` + a message (confinement
  failed: the program never runs). The pipe is closed before the program runs, so nothing the
  program writes can pass for a sandbox failure;
- the client, over the *result pipe* the client created: one frame (JSON header + the mesh arrays),
  which the client treats as untrusted input.
"""

from __future__ import annotations

import ast
import contextlib
import json
import linecache
import math
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import cadquery as cq
import numpy as np
from OCP.BRep import BRep_Tool
from OCP.BRepMesh import BRepMesh_IncrementalMesh
from OCP.TopAbs import TopAbs_Orientation
from OCP.TopLoc import TopLoc_Location

from gen3deval.execute import sandbox
from gen3deval.execute._cq_wire import encode_frame, write_all
from gen3deval.execute.result import Limits

if TYPE_CHECKING:  # the template imports these modules itself before any fork
    from gen3deval.execute.sandbox.cgroups import ProgramCgroup
    from gen3deval.execute.sandbox.jail import JailSpec
    from gen3deval.execute.sandbox.seccomp import SeccompPolicy

# Variables searched for the result, in this order (the GenCAD convention is ``solid``).
RESULT_NAMES = ("solid", "result", "shape", "part", "model", "obj")
PROGRAM_FILENAME = "<program>"
VIOLATION_EXIT = 87  # exit status of a child stopped by the audit tripwire
SANDBOX_ERROR_EXIT = 88  # the child could not be confined (a sandbox failure, not the program's)
SETUP_OK = b"K"  # first byte on the setup pipe: confined, the program is about to run
SETUP_FAILED = b"E"  # first byte on the setup pipe: confinement failed, the program never ran
MAX_PROGRAM_BYTES = 64 * 1024 * 1024

# Canonical frame: CadQuery is +Z up; gen3deval is +Y up: (x, y, z) -> (x, z, -y), a proper rotation.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class ProgramFailure(Exception):
    """A classified failure of the program (error_class is one of ERROR_CLASSES)."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


# --------------------------------------------------------------------------------------------------
# Result lookup
# --------------------------------------------------------------------------------------------------
def _is_cq(value: Any) -> bool:
    if isinstance(value, cq.Workplane | cq.Shape | cq.Assembly):
        return True
    if isinstance(value, list | tuple) and value:
        return all(isinstance(v, cq.Workplane | cq.Shape | cq.Assembly) for v in value)
    return False


def assignment_order(tree: ast.Module) -> list[str]:
    """Module-level names in the order of their *last* assignment in the source text.

    Function and class bodies are skipped (their names are local); loops, ``with`` and ``if``
    blocks at module level count, since they bind module globals.
    """
    last: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            if not isinstance(node, ast.Lambda):
                last[node.name] = (node.lineno, node.col_offset)
            return
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            last[node.id] = (node.lineno, node.col_offset)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [name for name, _ in sorted(last.items(), key=lambda kv: kv[1])]


def find_result(namespace: dict[str, Any], shown: list[Any], order: list[str]) -> tuple[str, Any]:
    """The program's result: the first of RESULT_NAMES holding a CadQuery object, else the last
    object passed to ``show_object``, else the last-assigned module variable holding one."""
    for name in RESULT_NAMES:
        if name in namespace and _is_cq(namespace[name]):
            return name, namespace[name]
    cq_shown = [v for v in shown if _is_cq(v)]
    if cq_shown:
        return "show_object", cq_shown[-1]
    for name in reversed(order):
        if name in namespace and _is_cq(namespace[name]):
            return name, namespace[name]
    present = [n for n in RESULT_NAMES if n in namespace]
    hint = f" ({', '.join(f'{n} is a {type(namespace[n]).__name__}' for n in present)})" if present else ""
    raise ProgramFailure(
        "no_geometry",
        f"no result: set `solid` (or result/shape/part/model/obj) to a cq.Workplane, Shape or Assembly{hint}",
    )


def _shapes_of(value: Any) -> list[cq.Shape]:
    """Every cq.Shape a result value stands for (Workplane stack, Assembly parts, lists)."""
    if isinstance(value, list | tuple):
        return [s for v in value for s in _shapes_of(v)]
    if isinstance(value, cq.Assembly):
        return [value.toCompound()]
    if isinstance(value, cq.Shape):
        return [value]
    if isinstance(value, cq.Workplane):
        shapes = [v for v in value.vals() if isinstance(v, cq.Shape)]
        if not any(isinstance(s, cq.Solid | cq.Compound) for s in shapes):
            # A selection (`box(...).faces(">Z")`, `.workplane()`): the part is the solid in context.
            # A Compound on the stack, even an empty one, is an operation's result and stands.
            try:
                found = value.findSolid()
            except (ValueError, AttributeError, IndexError):
                found = None
            if isinstance(found, cq.Shape):
                shapes.append(found)
        return shapes
    return []


def result_solids(value: Any) -> list[cq.Solid]:
    """The solids of the result; ProgramFailure(no_geometry / invalid_geometry) when there are none."""
    shapes = _shapes_of(value)
    solids = [s for sh in shapes for s in sh.Solids()]
    if solids:
        return solids
    kinds = sorted({type(sh).__name__ for sh in shapes if not sh.isNull()})
    has_content = any(sh.Faces() or sh.Edges() or sh.Vertices() for sh in shapes if not sh.isNull())
    if has_content:
        raise ProgramFailure("invalid_geometry", f"result is not a solid (contains {', '.join(kinds)})")
    raise ProgramFailure("no_geometry", "result is empty (no solid)")


# --------------------------------------------------------------------------------------------------
# Validation and tessellation
# --------------------------------------------------------------------------------------------------
def tessellate(
    solids: list[cq.Solid], linear_tolerance: float, angular_tolerance: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Validate and mesh the solids: (vertices (V,3) f64 in +Y-up, faces (F,3) i64, info).

    Linear deflection = ``linear_tolerance`` x the bounding-box diagonal (absolute), angular
    deflection ``angular_tolerance`` rad; meshed serially (no OCCT thread pool in the child).
    Coincident vertices along shared edges are welded; triangles that collapse are dropped.
    """
    compound = cq.Compound.makeCompound(solids)
    bb = compound.BoundingBox()
    box = np.array([bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax], dtype=np.float64)
    if not np.all(np.isfinite(box)):
        raise ProgramFailure("invalid_geometry", "result has non-finite coordinates (NaN or inf)")
    volumes = [float(s.Volume()) for s in solids]
    if not all(math.isfinite(v) for v in volumes):
        raise ProgramFailure("invalid_geometry", "result volume is not finite")
    diag = float(np.linalg.norm(box[3:] - box[:3]))
    total = float(sum(volumes))
    if any(v < -1e-12 * max(diag, 1e-300) ** 3 for v in volumes):
        raise ProgramFailure(
            "invalid_geometry", f"a solid has negative volume ({min(volumes):.6g}): inside out"
        )
    if diag <= 0 or total <= 1e-12 * diag**3:
        raise ProgramFailure("no_geometry", f"result has zero volume ({total:.3g})")

    lin = linear_tolerance * diag
    BRepMesh_IncrementalMesh(compound.wrapped, lin, False, angular_tolerance, False)
    verts: list[np.ndarray] = []
    tris: list[np.ndarray] = []
    offset = 0
    for solid in solids:
        for face in solid.Faces():
            loc = TopLoc_Location()
            poly = BRep_Tool.Triangulation_s(face.wrapped, loc)
            if poly is None:
                continue
            trsf = loc.Transformation()
            nn = poly.NbNodes()
            pts = np.empty((nn, 3), dtype=np.float64)
            for i in range(1, nn + 1):
                p = poly.Node(i).Transformed(trsf)
                pts[i - 1] = (p.X(), p.Y(), p.Z())
            nt = poly.NbTriangles()
            tri = np.empty((nt, 3), dtype=np.int64)
            for i in range(1, nt + 1):
                t = poly.Triangle(i)
                tri[i - 1] = (t.Value(1), t.Value(2), t.Value(3))
            if face.wrapped.Orientation() == TopAbs_Orientation.TopAbs_REVERSED:
                tri = tri[:, ::-1]
            verts.append(pts)
            tris.append(tri - 1 + offset)
            offset += nn
    if not tris:
        raise ProgramFailure("invalid_geometry", "the solid could not be tessellated (no triangles)")
    v = np.concatenate(verts)
    f = np.concatenate(tris)
    if not np.all(np.isfinite(v)):
        raise ProgramFailure("invalid_geometry", "tessellation produced non-finite vertices")
    v, f = weld(v, f, 1e-9 * diag)
    if len(f) == 0:
        raise ProgramFailure("invalid_geometry", "tessellation produced only degenerate triangles")
    v = v @ Z_UP_TO_Y_UP.T
    info = {
        "n_solids": len(solids),
        "volume": total,
        "linear_deflection": lin,
        "angular_deflection": angular_tolerance,
    }
    return np.ascontiguousarray(v), np.ascontiguousarray(f), info


def weld(v: np.ndarray, f: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices that coincide after rounding to ``tol``; drop triangles that collapse."""
    q = np.round(v / tol).astype(np.int64) if tol > 0 else v
    _, first, inverse = np.unique(q, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    f2 = inverse[f]
    keep = (f2[:, 0] != f2[:, 1]) & (f2[:, 1] != f2[:, 2]) & (f2[:, 0] != f2[:, 2])
    return v[first], f2[keep]


# --------------------------------------------------------------------------------------------------
# The child's life
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildSpec:
    """What the template decided for one program (trusted: none of it comes from the program).

    workdir: the program's cwd (:data:`~gen3deval.execute.sandbox.jail.WORK_DIR` inside a jail, else
    a fresh job directory). read_roots: directories the tripwire lets the program read (the jail's
    library directories). tripwire: install the audit hook (tests of the OS layers turn it off).
    """

    limits: Limits
    uid: int | None
    workdir: str
    jail: JailSpec | None
    cgroup: ProgramCgroup | None
    seccomp: SeccompPolicy | None
    tripwire: bool
    read_roots: tuple[str, ...]
    linear_tolerance: float
    angular_tolerance: float


def _message(exc: BaseException) -> str:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == PROGRAM_FILENAME:
            line = lineno
    text = f"{type(exc).__name__}: {exc}"
    if line is not None:
        text += f" (program line {line})"
    return text[:600]


def _program_tb(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the program's first frame on: the executor's own frames are left out (their
    source is not in the jail, and reading it would trip the audit hook)."""
    while tb is not None and tb.tb_frame.f_code.co_filename != PROGRAM_FILENAME:
        tb = tb.tb_next
    return tb


def _classify_exception(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    text = f"{type(exc).__name__} {exc}"
    if "bad_alloc" in text or "OutOfMemory" in text or "Cannot allocate memory" in text:
        return "memory"
    return "runtime"


def _send(fd: int, header: dict[str, Any], blobs: tuple[bytes, ...] = ()) -> None:
    write_all(fd, encode_frame(header, blobs))


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def is_under(path: str, roots: list[str] | tuple[str, ...]) -> bool:
    """True when ``path`` is one of ``roots`` or inside one."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def read_roots(exposed: tuple[str, ...] | None = None) -> list[str]:
    """Directories a program may read (so lazy imports work): the interpreter's library dirs.

    ``exposed``: the jail's read-only paths (only their library directories count); default: the
    interpreter's prefixes and the absolute entries of sys.path.
    """
    if exposed is None:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        roots.update(p for p in sys.path if p and os.path.isabs(p))
    else:
        roots = set(exposed)
    out = []
    for r in roots:
        real = os.path.realpath(r)
        # Never a broad root such as "/" or "/usr": only library directories.
        if os.path.isdir(real) and len(Path(real).parts) > 2 and real not in out:
            out.append(real)
    return sorted(out)


def _read_program(fd: int) -> str:
    """The program text from the client's sealed memory file (read from offset 0, bounded)."""
    size = os.fstat(fd).st_size
    if size > MAX_PROGRAM_BYTES:
        raise ValueError(f"program of {size} bytes")
    chunks, pos = [], 0
    while pos < size:
        chunk = os.pread(fd, min(1 << 20, size - pos), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks).decode("utf-8")


def _close_all_but(keep: set[int]) -> None:
    lo = 0
    for k in sorted(keep):
        if k > lo:
            os.closerange(lo, k)
        lo = k + 1
    os.closerange(lo, 1 << 16)


def child_main(
    spec: ChildSpec, *, prog_fd: int, result_fd: int, out_fd: int, err_fd: int, setup_fd: int
) -> NoReturn:
    """Body of the forked child. Never returns.

    Confines itself (session, cgroup, network namespace, jail, rlimits, uid, seccomp, then the audit
    tripwire), reports ``K`` on ``setup_fd`` and closes it, then compiles and runs the program and
    writes one result frame to ``result_fd`` (the client's pipe) and _exits. A confinement failure
    is reported as ``E`` + message on ``setup_fd`` and the program never runs.
    """
    limits = spec.limits
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize writes fail with EFBIG instead
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        # Nothing of the template (its control socket, other descriptors) stays reachable.
        _close_all_but({0, 1, 2, result_fd, setup_fd, prog_fd})
        program = _read_program(prog_fd)
        os.close(prog_fd)
        if spec.jail is None:
            os.chdir(spec.workdir)
        sandbox.confine_current_process(
            limits, uid=spec.uid, new_session=True, jail=spec.jail, cgroup=spec.cgroup, seccomp=spec.seccomp
        )
        os.umask(0o077)  # after the jail: its directories must stay traversable (0755) for the uid
        sandbox.set_parent_death_signal(signal.SIGKILL)  # after the uid change, which clears it
        os.environ.clear()
        os.environ.update(sandbox.scrubbed_env(spec.workdir))
    except BaseException as exc:  # the sandbox failed, not the program
        with contextlib.suppress(BaseException):
            write_all(setup_fd, SETUP_FAILED + f"{type(exc).__name__}: {exc}"[:2000].encode())
        os._exit(SANDBOX_ERROR_EXIT)

    shown: list[Any] = []

    def show_object(obj: Any, *args: Any, **kwargs: Any) -> None:
        shown.append(obj)

    def debug(obj: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def on_violation(event: str, detail: str) -> None:
        _flush_std()
        try:
            _send(result_fd, {"status": "error", "error_class": "sandbox_violation", "message": detail[:600]})
        finally:
            os._exit(VIOLATION_EXIT)

    try:
        linecache.cache[PROGRAM_FILENAME] = (len(program), None, program.splitlines(True), PROGRAM_FILENAME)
        namespace: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": __builtins__,
            "show_object": show_object,
            "debug": debug,
        }
        sys.argv = [PROGRAM_FILENAME]
        if spec.tripwire:
            sandbox.install_audit_tripwire(
                [spec.workdir], list(spec.read_roots), on_violation, allow_network=limits.network
            )
        write_all(setup_fd, SETUP_OK + json.dumps({"pid": os.getpid()}).encode())
        os.close(setup_fd)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            write_all(setup_fd, SETUP_FAILED + f"{type(exc).__name__}: {exc}"[:2000].encode())
        os._exit(SANDBOX_ERROR_EXIT)
    # ---- from here on, everything is the program's (nothing it does can reach the setup pipe) ----
    header: dict[str, Any]
    blobs: tuple[bytes, ...] = ()
    try:
        try:
            code = compile(program, PROGRAM_FILENAME, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise ProgramFailure("syntax", f"{type(exc).__name__}: {exc}") from None
        try:
            exec(code, namespace)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise ProgramFailure("runtime", f"program called exit({exc.code!r})") from None
        order = assignment_order(ast.parse(program))
        name, value = find_result(namespace, shown, order)
        solids = result_solids(value)
        v, f, tinfo = tessellate(solids, spec.linear_tolerance, spec.angular_tolerance)
        header = {"status": "ok", "result_name": name, **tinfo}
        header["dtype_v"], header["dtype_f"] = "<f8", "<i8"
        header["n_vertices"], header["n_faces"] = len(v), len(f)
        blobs = (v.astype("<f8").tobytes(), f.astype("<i8").tobytes())
    except ProgramFailure as exc:
        header = {"status": "error", "error_class": exc.error_class, "message": exc.message[:600]}
    except BaseException as exc:
        if isinstance(exc, MemoryError):
            namespace.clear()  # free what the program holds so that reporting can allocate
            shown.clear()
        with contextlib.suppress(BaseException):
            traceback.print_exception(type(exc), exc, _program_tb(exc.__traceback__))
        header = {"status": "error", "error_class": _classify_exception(exc), "message": _message(exc)}
    _flush_std()
    try:
        _send(result_fd, header, blobs)
        code_out = 0
    except BaseException:
        code_out = 3
    os._exit(code_out)
