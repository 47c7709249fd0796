"""The Node runtime of the Three.js executor: finding ``node`` and three, the single-script bundle
(three's ESM build + ``threejs_scaffold/runner.js``), its V8 startup snapshots and their cache folder.

Nothing here runs a program: :mod:`gen3deval.execute.threejs` does (every public name here is
re-exported there). The bundle and snapshots are keyed by a hash of the node binary, three and the
runner; they live in :func:`cache_dir`, a folder the sandbox uid can read and that the program's
jail exposes read-only (see :func:`jail_paths`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from gen3deval.errors import DependencyError, ExecutionError
from gen3deval.execute import sandbox

SCAFFOLD_DIR = Path(__file__).resolve().with_name("threejs_scaffold")
RUNNER_JS = SCAFFOLD_DIR / "runner.js"
INSTALL_HINT = f"npm ci --prefix {SCAFFOLD_DIR}"
NODE_HINT = (
    "install Node.js >= 20.11 (e.g. apt-get install nodejs npm, or https://nodejs.org) or set GEN3DEVAL_NODE"
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
