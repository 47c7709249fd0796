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
  into a cache directory, see :func:`runtime`), falling back to the plain bundle where snapshots fail;
- Node's permission model (``--experimental-permission``: no file reads beyond what Node needs to
  start, no file writes, no child processes, no workers), ``--disallow-code-generation-from-strings``
  (so ``X.constructor.constructor('return process')`` fails outside the vm), the program inside a
  ``vm`` context with a timeout and ``microtaskMode: 'afterEvaluate'``;
- from :mod:`gen3deval.execute.sandbox`: its own process group killed at the wall limit, rlimits
  (address space, CPU, file size, processes), an empty network namespace where permitted, a scrubbed
  environment, a private temporary directory and a throw-away uid when we are root.

The GLB comes back on stdout (the child cannot write files) after one JSON header line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.errors import ConfigError, DependencyError, ExecutionError
from gen3deval.execute import sandbox
from gen3deval.execute.result import ERROR_CLASSES, ExecResult, Limits
from gen3deval.mesh.types import Material, Mesh

SCAFFOLD_DIR = Path(__file__).resolve().with_name("threejs_scaffold")
RUNNER_JS = SCAFFOLD_DIR / "runner.js"
INSTALL_HINT = f"npm ci --prefix {SCAFFOLD_DIR}"
NODE_HINT = (
    "install Node.js >= 20.11 (e.g. apt-get install nodejs npm, or https://nodejs.org) or set GEN3DEVAL_NODE"
)

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
# runtime: node, the bundle and its snapshot
# --------------------------------------------------------------------------------------------------


# V8 flags are part of a snapshot's identity: a blob only loads under the flags it was built with.
def v8_flags(heap_mb: int) -> list[str]:
    """The V8 flags every program runs with (and its snapshot is built with)."""
    return ["--disallow-code-generation-from-strings", f"--max-old-space-size={int(heap_mb)}"]


# Node (not V8) flags: they may differ between building and loading a snapshot.
def node_flags(version: str) -> list[str]:
    """The permission model flag for this Node (``--permission`` from 22.13, experimental before) and
    no ExperimentalWarning on stderr."""
    return [
        "--permission" if parse_node_version(version) >= (22, 13) else "--experimental-permission",
        "--disable-warning=ExperimentalWarning",
    ]


def parse_node_version(version: str) -> tuple[int, int]:
    """``'v20.20.2'`` -> (20, 20); (0, 0) when unreadable."""
    m = re.match(r"v?(\d+)\.(\d+)", version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# The oldest Node with everything used here: the permission model, userland snapshots, --disable-warning.
MIN_NODE = (20, 11)


@dataclass
class Runtime:
    """How programs are started: ``node`` plus the bundle file, and V8 startup snapshots of it (one
    per heap size, built on first use) where Node can make them."""

    node: str
    node_version: str
    three_version: str
    bundle: Path
    key: str
    use_snapshot: bool = True
    snapshot_error: str = ""
    _blobs: dict[int, Path | None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self, heap_mb: int) -> Path | None:
        """The snapshot blob for ``heap_mb`` (built now if needed), or None where it cannot be built."""
        if not self.use_snapshot:
            return None
        with self._lock:
            blob = self._blobs.get(heap_mb)
            # Re-check the file each time: a cache cleanup elsewhere must not break every later run.
            if heap_mb not in self._blobs or (blob is not None and not blob.exists()):
                if not self.bundle.exists():
                    _write_atomic(self.bundle, build_bundle().encode("utf-8"))
                self._blobs[heap_mb] = self._build_snapshot(heap_mb)
            return self._blobs[heap_mb]

    def _build_snapshot(self, heap_mb: int) -> Path | None:
        blob = self.bundle.with_name(f"{self.bundle.stem}-heap{heap_mb}.blob")
        if blob.exists():
            return blob
        tmp = blob.with_name(f".{blob.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            proc = subprocess.run(
                [
                    self.node,
                    *v8_flags(heap_mb),
                    "--snapshot-blob",
                    str(tmp),
                    "--build-snapshot",
                    str(self.bundle),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.bundle.parent,
                env=sandbox.scrubbed_env(self.bundle.parent),
            )
            if proc.returncode == 0 and tmp.exists():
                os.chmod(tmp, 0o644)
                os.replace(tmp, blob)
                return blob
            self.snapshot_error = (proc.stderr or proc.stdout).strip()[-500:] or f"exit {proc.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            self.snapshot_error = str(exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return None

    def argv(self, heap_mb: int) -> list[str]:
        """The node command line for one program (the program itself comes on stdin)."""
        blob = self.snapshot(heap_mb)
        if blob is not None:
            return [
                self.node,
                *node_flags(self.node_version),
                *v8_flags(heap_mb),
                "--snapshot-blob",
                str(blob),
            ]
        # Without a snapshot Node must read the bundle: that one file is all it may read.
        return [
            self.node,
            *node_flags(self.node_version),
            *v8_flags(heap_mb),
            f"--allow-fs-read={self.bundle}",
            str(self.bundle),
        ]


def node_binary() -> str:
    """The ``node`` to use: ``$GEN3DEVAL_NODE`` or the first on PATH; DependencyError if none."""
    env = os.environ.get("GEN3DEVAL_NODE")
    node = env or shutil.which("node")
    if not node:
        raise DependencyError(
            f"Node.js is required for Three.js programs but `node` is not on PATH: {NODE_HINT}"
        )
    if env and not (os.path.isfile(env) and os.access(env, os.X_OK)):
        raise DependencyError(f"GEN3DEVAL_NODE={env} is not an executable file: {NODE_HINT}")
    return node


def scaffold_dir() -> Path:
    """The folder whose ``node_modules/three`` programs use: ``$GEN3DEVAL_THREEJS_SCAFFOLD`` (e.g. a writable
    copy of the scaffold for a read-only installation) or the package's ``threejs_scaffold``. The
    runner (``runner.js``) always comes from the package."""
    env = os.environ.get("GEN3DEVAL_THREEJS_SCAFFOLD")
    return Path(env).expanduser().resolve() if env else SCAFFOLD_DIR


def install_hint(scaffold: Path | None = None) -> str:
    """The command that installs three's pinned npm package into ``scaffold`` (default :func:`scaffold_dir`)."""
    where = scaffold or scaffold_dir()
    if where == SCAFFOLD_DIR:
        return f"{INSTALL_HINT} (in a checkout: make setup)"
    if (where / "package-lock.json").is_file():
        return f"npm ci --prefix {where}"
    return (
        f"cp {SCAFFOLD_DIR}/package.json {SCAFFOLD_DIR}/package-lock.json {where}/ && npm ci --prefix {where}"
    )


def three_build_dir() -> Path:
    """``node_modules/three/build`` of the scaffold; DependencyError with the install command if absent."""
    scaffold = scaffold_dir()
    build = scaffold / "node_modules" / "three" / "build"
    if not (build / "three.core.js").is_file() or not (build / "three.module.js").is_file():
        raise DependencyError(
            f"three.js is not installed for the Three.js executor (no {build}); run: {install_hint(scaffold)}"
        )
    return build


def three_version() -> str:
    pkg = scaffold_dir() / "node_modules" / "three" / "package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


_IMPORT_CORE = re.compile(r"^import\s*\{([^}]*)\}\s*from\s*'\./three\.core\.js';[ \t]*$", re.M)
_EXPORT_FROM_CORE = re.compile(r"^export\s*\{([^}]*)\}\s*from\s*'\./three\.core\.js';[ \t]*$", re.M)
_EXPORT_LOCAL = re.compile(r"^export\s*\{([^}]*)\};[ \t]*$", re.M)
_ANY_MODULE_SYNTAX = re.compile(r"^(?:import|export)\b", re.M)


def _specifiers(text: str) -> list[tuple[str, str]]:
    """``a, b as c`` -> [(a, a), (b, c)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, alias = part.partition(" as ")
        out.append((name.strip(), (alias or name).strip()))
    return out


def build_bundle(build_dir: Path | None = None) -> str:
    """One classic script: three's ESM build (``three.core.js`` + ``three.module.js``) turned into a
    namespace object ``__gen3devalTHREE``, followed by ``runner.js``.

    Node 20 can snapshot only a single classic script, hence this small, checked transformation of
    the module syntax (the only module syntax in those files is the import/export lists handled here;
    anything else raises DependencyError).
    """
    build = build_dir or three_build_dir()
    core = (build / "three.core.js").read_text(encoding="utf-8")
    module = (build / "three.module.js").read_text(encoding="utf-8")

    core_exports = _EXPORT_LOCAL.findall(core)
    if len(core_exports) != 1 or len(_ANY_MODULE_SYNTAX.findall(core)) != 1:
        raise DependencyError(
            f"unexpected module syntax in {build / 'three.core.js'}; reinstall: {install_hint()}"
        )
    core_body = _EXPORT_LOCAL.sub("", core)
    core_obj = ", ".join(f"{exported}: {local}" for local, exported in _specifiers(core_exports[0]))

    imports = _IMPORT_CORE.findall(module)
    reexports = _EXPORT_FROM_CORE.findall(module)
    body = _EXPORT_FROM_CORE.sub("", _IMPORT_CORE.sub("", module))
    local_exports = _EXPORT_LOCAL.findall(body)
    body = _EXPORT_LOCAL.sub("", body)
    n_syntax = len(_ANY_MODULE_SYNTAX.findall(module))
    if n_syntax != len(imports) + len(reexports) + len(local_exports) or _ANY_MODULE_SYNTAX.search(body):
        raise DependencyError(
            f"unexpected module syntax in {build / 'three.module.js'}; reinstall: {install_hint()}"
        )
    destructure = ", ".join(f"{name}: {alias}" for spec in imports for name, alias in _specifiers(spec))
    ns_parts = [f"{exported}: __core.{name}" for spec in reexports for name, exported in _specifiers(spec)]
    ns_parts += [f"{exported}: {local}" for spec in local_exports for local, exported in _specifiers(spec)]
    if not RUNNER_JS.is_file():
        raise DependencyError(
            f"{RUNNER_JS} is missing: the gen3deval installation is incomplete; reinstall it"
        )
    runner = RUNNER_JS.read_text(encoding="utf-8")
    return (
        "'use strict';\n"
        f"// Generated by gen3deval.execute.threejs.build_bundle from three {three_version()}: do not edit.\n"
        "const __gen3devalTHREE = (function () {\n"
        "const __core = (function () {\n"
        f"{core_body}\n"
        f"return {{ {core_obj} }};\n"
        "})();\n"
        f"const {{ {destructure} }} = __core;\n"
        f"{body}\n"
        "const __ns = Object.create(null);\n"
        f"Object.assign(__ns, {{ {', '.join(ns_parts)} }});\n"
        "return __ns;\n"
        "})();\n"
        f"{runner}"
    )


def others_can_reach(path: Path, *, execute: bool = False) -> bool:
    """True when a user with no relation to the file (the sandbox uid) can read it (or execute it)
    and traverse every directory above it."""
    p = Path(os.path.realpath(path))
    try:
        mode = p.stat().st_mode
        if not mode & (0o001 if execute else 0o004) or (p.is_dir() and not mode & 0o001):
            return False
        return all(parent.stat().st_mode & 0o001 for parent in p.parents)
    except OSError:
        return False


def cache_dir() -> Path:
    """Where the bundle and snapshots live: ``$GEN3DEVAL_THREEJS_CACHE``, else ``threejs_scaffold/.build``
    when writable, else a per-user directory under the system temp dir. When programs run as a
    sandbox uid the directory must be reachable by it, so it is created 0755 and checked."""
    env = os.environ.get("GEN3DEVAL_THREEJS_CACHE")
    candidates = (
        [Path(env)]
        if env
        else [SCAFFOLD_DIR / ".build", Path(tempfile.gettempdir()) / f"gen3deval-threejs-{os.geteuid()}"]
    )
    need_others = sandbox.can_switch_user()
    for c in candidates:
        with contextlib.suppress(OSError):
            c.mkdir(mode=0o755, parents=True, exist_ok=True)
            st = c.lstat()
            if c.is_symlink() or st.st_uid != os.geteuid():
                continue  # someone else's directory (e.g. planted in /tmp): do not trust it
            if os.access(c, os.W_OK):
                os.chmod(c, 0o755)
                if need_others and not others_can_reach(c):
                    continue  # e.g. a checkout under /root: the sandbox uid could not read the snapshot
                return c
    raise ExecutionError(
        "no cache directory for the Three.js runtime that we can write and the sandbox uid can read "
        f"(tried {', '.join(map(str, candidates))}); set GEN3DEVAL_THREEJS_CACHE"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_runtime_lock = threading.Lock()


def runtime(*, snapshot: bool = True) -> Runtime:
    """The Node runtime for Three.js programs, writing the bundle on first use (snapshots are built
    per heap size by :meth:`Runtime.snapshot`). Files are keyed by a hash of the node binary, three
    and the runner, so an upgrade of any of them rebuilds. ``snapshot=False`` gives the plain bundle
    (slower start, same behaviour)."""
    with _runtime_lock:
        # Keyed by where node and three come from, so that a changed environment is looked at again.
        node = node_binary()
        return _runtime(snapshot, node, str(scaffold_dir()))


@lru_cache(maxsize=8)
def _runtime(snapshot: bool, node: str, scaffold: str) -> Runtime:
    # ``scaffold`` is part of the cache key only (three_build_dir() reads the same environment).
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise DependencyError(f"cannot run {node} --version ({exc}): {NODE_HINT}") from None
    if parse_node_version(version) < MIN_NODE:
        raise DependencyError(
            f"Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]} is required (permission model, snapshots); "
            f"found {version!r} at {node}: {NODE_HINT}"
        )
    if sandbox.can_switch_user() and not others_can_reach(Path(node), execute=True):
        raise DependencyError(
            f"{node} cannot be run by other users, but programs run as an unprivileged sandbox uid: "
            "install Node.js system-wide or point GEN3DEVAL_NODE to a world-executable node"
        )
    bundle_text = build_bundle()
    st = os.stat(node)
    key = hashlib.sha256(
        f"{version}\0{os.path.realpath(node)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
        + bundle_text.encode()
    ).hexdigest()[:20]
    three = three_version()
    bundle = cache_dir() / f"three-{three}-{key}.js"
    if not bundle.exists():
        _write_atomic(bundle, bundle_text.encode("utf-8"))
        _remove_stale(bundle.parent, key)
    return Runtime(node, version, three, bundle, key, use_snapshot=snapshot)


def _remove_stale(cdir: Path, key: str, min_age_s: float = 3600.0) -> None:
    """Delete bundles/snapshots of other versions (node, three or runner changed) older than an hour."""
    now = time.time()
    for f in cdir.glob("three-*"):
        with contextlib.suppress(OSError):
            if key not in f.name and f.suffix in (".js", ".blob") and now - f.stat().st_mtime > min_age_s:
                f.unlink()


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
# the GLB the scaffold writes -> Mesh
# --------------------------------------------------------------------------------------------------

_GLB_MAGIC = 0x46546C67
_CHUNK_JSON = 0x4E4F534A
_CHUNK_BIN = 0x004E4942
_COMPONENT = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def linear_to_srgb(c: float) -> float:
    """One linear-light channel in [0, 1] -> sRGB-encoded (the IEC 61966-2-1 curve three uses)."""
    c = min(max(float(c), 0.0), 1.0)
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def glb_to_mesh(data: bytes, *, source: str = "threejs") -> Mesh:
    """Parse a GLB made by the scaffold (one node, triangle primitives with POSITION and indices) into a
    Mesh; glTF's linear ``baseColorFactor`` becomes the sRGB ``Material.base_color``. Raises
    ValueError on anything malformed."""
    if len(data) < 20:
        raise ValueError("GLB shorter than its header")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2 or total > len(data):
        raise ValueError("not a GLB 2.0 stream")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != _CHUNK_JSON:
        raise ValueError("GLB without a JSON chunk")
    doc = json.loads(data[20 : 20 + jlen])
    off = 20 + jlen
    bin_chunk = b""
    if off + 8 <= total:
        blen, btype = struct.unpack_from("<II", data, off)
        if btype == _CHUNK_BIN:
            bin_chunk = data[off + 8 : off + 8 + blen]

    def accessor(i: int) -> np.ndarray[Any, Any]:
        acc = doc["accessors"][i]
        view = doc["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(_COMPONENT[acc["componentType"]]).newbyteorder("<")
        width = _WIDTH[acc["type"]]
        start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
        count = int(acc["count"]) * width
        if start + count * dtype.itemsize > len(bin_chunk):
            raise ValueError("accessor runs past the binary chunk")
        arr = np.frombuffer(bin_chunk, dtype=dtype, count=count, offset=start)
        return arr.reshape(-1, width) if width > 1 else arr

    verts: list[np.ndarray[Any, Any]] = []
    faces: list[np.ndarray[Any, Any]] = []
    face_mat: list[np.ndarray[Any, Any]] = []
    materials: list[Material] = []
    offset = 0
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            if prim.get("mode", 4) != 4:
                continue
            v = accessor(prim["attributes"]["POSITION"]).astype(np.float64)
            idx = accessor(prim["indices"]).astype(np.int64) if "indices" in prim else np.arange(len(v))
            f = idx[: len(idx) - len(idx) % 3].reshape(-1, 3)
            if f.size and (f.min() < 0 or f.max() >= len(v)):
                raise ValueError("face index out of range")
            mat = doc.get("materials", [])[prim["material"]] if "material" in prim else {}
            factor = mat.get("pbrMetallicRoughness", {}).get("baseColorFactor")
            if factor is None:
                material = Material(name=str(mat.get("name", "")))
            else:
                r, g, b, a = (float(x) for x in factor)
                material = Material(
                    base_color=(
                        linear_to_srgb(r),
                        linear_to_srgb(g),
                        linear_to_srgb(b),
                        min(max(a, 0.0), 1.0),
                    ),
                    name=str(mat.get("name", "")),
                )
            verts.append(v)
            faces.append(f + offset)
            face_mat.append(np.full(len(f), len(materials), dtype=np.int32))
            materials.append(material)
            offset += len(v)
    if not verts:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int32), source=source)
    return Mesh(
        vertices=np.concatenate(verts),
        faces=np.concatenate(faces),
        face_material=np.concatenate(face_mat),
        materials=tuple(materials),
        source=source,
    )


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


_OOM = re.compile(r"heap out of memory|Fatal process out of memory|Allocation failed|OOM", re.I)


def run_threejs(
    program: str,
    limits: Limits | None = None,
    *,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    snapshot: bool = True,
) -> ExecResult:
    """Run one Three.js program (see the module docstring for the contract) and return its mesh or a
    classified error. Never raises for a bad program; raises DependencyError when Node or three is
    missing, ConfigError for impossible limits."""
    limits = limits or DEFAULT_LIMITS
    outcome, info = run_scaffold(program, limits, max_triangles=max_triangles, snapshot=snapshot)
    return _result(outcome, limits, info)


def run_scaffold(
    program: str,
    limits: Limits | None = None,
    *,
    max_triangles: int = DEFAULT_MAX_TRIANGLES,
    snapshot: bool = True,
) -> tuple[sandbox.ProcessOutcome, dict[str, Any]]:
    """The raw run behind :func:`run_threejs`: the sandboxed Node's outcome (stdout = a JSON header
    line, then the GLB bytes) and the sandbox description."""
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
    outcome = _sandboxed(lambda tmp: argv, stdin, limits, max_stdout_bytes=max_out)
    info = dict(outcome.sandbox)
    snap = "--snapshot-blob" in argv
    info.update(
        {
            "runtime": "node " + rt.node_version,
            "three": rt.three_version,
            "startup": "snapshot" if snap else "bundle",
            "node_permissions": f"fs-read: {'none' if snap else 'the bundle only'}; no fs-write, child_process, worker",
            "code_generation": "refused outside the vm context",
            "heap_mb": heap,
        }
    )
    return outcome, info


def _sandboxed(
    make_argv: Callable[[Path], list[str]],
    stdin: bytes,
    limits: Limits,
    *,
    files: dict[str, str] | None = None,
    max_stdout_bytes: int = 1 << 30,
) -> sandbox.ProcessOutcome:
    """Run ``make_argv(private_tmp_dir)`` confined by :mod:`~gen3deval.execute.sandbox` (own uid, netns,
    rlimits, scrubbed env, wall-clock kill of the group, sweep of the uid's processes and files).
    ``files`` (name -> text) are written into the private directory first, readable by the program."""
    with _uid_slot() as uid, sandbox.private_tmpdir(prefix="gen3deval-js-", owner_uid=uid) as tmp:
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
            os.chmod(tmp / name, 0o644)
        try:
            return sandbox.run_limited(
                make_argv(tmp),
                limits,
                cwd=tmp,
                env=sandbox.scrubbed_env(tmp),
                stdin=stdin,
                uid=uid,
                address_space=limits.memory_mb > 0,
                max_stdout_bytes=max_stdout_bytes,
            )
        except OSError as exc:
            raise ExecutionError(f"cannot start node for a Three.js program: {exc}") from exc
        finally:
            if uid is not None:
                sandbox.sweep_uid_files(uid)


def run_node_script(
    script: str, limits: Limits | None = None, *, stdin: bytes = b""
) -> sandbox.ProcessOutcome:
    """Run ``script`` as a plain Node script (no vm, full ``process`` and ``require``) under exactly the
    sandbox Three.js programs get: the same Node flags and permission model (it may read only its own
    file), uid, network namespace, rlimits and environment. This is what a program that escaped the
    vm would face; tests use it to probe the boundary."""
    limits = limits or DEFAULT_LIMITS
    _check_limits(limits)
    heap = _heap_mb(limits)
    rt = runtime()

    def argv(tmp: Path) -> list[str]:
        path = tmp / "probe.js"
        return [rt.node, *node_flags(rt.node_version), *v8_flags(heap), f"--allow-fs-read={path}", str(path)]

    return _sandboxed(argv, stdin, limits, files={"probe.js": script})


def _result(outcome: sandbox.ProcessOutcome, limits: Limits, info: dict[str, Any]) -> ExecResult:
    """Turn what the sandboxed Node did into an ExecResult (the header's class when there is one)."""
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

    out = outcome.stdout
    nl = out.find(b"\n")
    header: dict[str, Any] | None = None
    if nl >= 0:
        with contextlib.suppress(ValueError):
            parsed = json.loads(out[:nl])
            header = parsed if isinstance(parsed, dict) else None
    if header is None:
        # No header from the scaffold: Node died or was killed (or something else wrote to stdout).
        if outcome.timed_out:
            return result("timeout", f"killed at the wall-clock limit of {limits.wall_s:g} s")
        if outcome.stdout_truncated:
            return result("memory", f"output exceeded the limit of {limits.file_mb} MiB")
        if _OOM.search(stderr) or outcome.returncode in (134, -6):
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
        cls = sandbox.classify_signal(outcome.returncode, limits, cpu_s=outcome.cpu_s) or "runtime"
        how = sandbox.signal_name(outcome.returncode)
        return result(cls, f"node ended with {how} without a result: {_last_line(stderr)}")
    logs = str(header.get("logs", ""))[:65536]
    if not header.get("ok"):
        cls = str(header.get("error_class") or "runtime")
        return result(cls if cls in ERROR_CLASSES else "runtime", str(header.get("message", "")), logs)
    glb = out[nl + 1 :]
    if outcome.stdout_truncated:
        return result("memory", f"the exported mesh exceeded the output limit of {limits.file_mb} MiB", logs)
    if len(glb) != int(header.get("glb_bytes", -1)):
        return result(
            "sandbox_violation", "the scaffold's output was tampered with (GLB length mismatch)", logs
        )
    try:
        mesh = glb_to_mesh(glb, source="threejs program")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
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
    "Runtime",
    "build_bundle",
    "default_limits",
    "glb_to_mesh",
    "iter_threejs",
    "linear_to_srgb",
    "others_can_reach",
    "prepare_program",
    "run_node_script",
    "run_scaffold",
    "run_threejs",
    "run_threejs_many",
    "runtime",
]
