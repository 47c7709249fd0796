"""The filesystem jail: a minimal read-only root with a private, size-capped work folder.

:func:`enter_jail` moves the calling process (root, single-threaded: a forked child or a Popen
``preexec_fn``) into a private mount namespace whose root is a fresh tmpfs holding only

- read-only bind mounts of :attr:`JailSpec.ro_paths` at the *same* paths (the interpreter, its
  libraries and packages), with :attr:`JailSpec.mask_paths` hidden behind empty read-only tmpfs;
- ``/dev`` with ``null``, ``zero``, ``random``, ``urandom`` (and ``/dev/fd`` links);
- ``/proc``: a fresh procfs with ``hidepid=2``, so other users' processes are invisible;
- ``/tmp``: a tmpfs of ``work_mb`` MiB (one quota for all files together) with :data:`WORK_DIR`,
  owned by the sandbox uid, as the working directory.

No ``/run``, ``/var``, ``/home``, ``/work``, ``/dev/shm``, run folders or host ``/tmp``: nothing of the
host is writable, nothing written survives the program (the tmpfs dies with its last process), and
no unix socket of the host is reachable by path. The old root is detached after ``pivot_root``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from gen3deval.execute.sandbox.process import CLONE_NEWNS, _libc, probe_in_child, unshare

WORK_DIR = "/tmp/work"

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits that a read-only remount must keep (they may be locked by a container runtime).
_KEEP_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine(), -1)
_DEVICES = ("null", "zero", "random", "urandom")
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1"}
_DEV_LINKS["stderr"] = "/proc/self/fd/2"
# Top-level system directories (or merged-usr symlinks to them) and /etc files programs need.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
_SYSTEM_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/nsswitch.conf")


@dataclass(frozen=True)
class JailSpec:
    """What a jailed program sees.

    ro_paths: host paths (dirs or files) bound read-only at the same path inside; a path that is a
    symlink (``/bin -> usr/bin``) is recreated as the same symlink. mask_paths: paths inside
    ro_paths hidden behind an empty read-only tmpfs (e.g. data shipped inside a package).
    work_mb: size of the private tmpfs at ``/tmp`` (MiB) that holds :data:`WORK_DIR`.
    """

    ro_paths: tuple[str, ...]
    mask_paths: tuple[str, ...] = ()
    work_mb: int = 64


def _existing(paths: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for p in paths:
        if os.path.lexists(p) and p not in out:
            out.append(p)
    return tuple(out)


def system_ro_paths() -> tuple[str, ...]:
    """/usr, /lib*, /bin, /sbin (symlinks kept as symlinks) and the few /etc files a dynamically
    linked program needs (ld.so.cache, localtime, alternatives, nsswitch.conf)."""
    return _existing((*_SYSTEM_DIRS, *_SYSTEM_ETC))


def _with_real(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in out:
                out.append(q)
    return out


def python_ro_paths() -> tuple[str, ...]:
    """The running interpreter's prefixes (sys.prefix, base_prefix, exec_prefix; as given and
    resolved), e.g. a virtualenv and the Python it was made from. Not the project's sources."""
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    return _existing(_with_real(prefixes))


def gen3deval_ro_paths() -> tuple[str, ...]:
    """The ``gen3deval`` package directory (for a fresh interpreter that imports it inside the jail;
    an editable install lives in the checkout, which is otherwise hidden). Pair it with
    :func:`gen3deval_mask_paths`."""
    import gen3deval

    return _existing(_with_real([os.path.dirname(gen3deval.__file__)]))


def gen3deval_mask_paths() -> tuple[str, ...]:
    """Data shipped inside the package (suite ground truth) that a jailed program must not read."""
    import gen3deval

    pkg = os.path.realpath(os.path.dirname(gen3deval.__file__))
    return _existing([os.path.join(pkg, "suites", "data")])


def node_ro_paths(node: str) -> tuple[str, ...]:
    """The install prefix of the ``node`` binary (``<prefix>/bin/node``) when it lies outside the
    system directories of :func:`system_ro_paths`; () for /usr/bin/node."""
    real = os.path.realpath(node)
    out: list[str] = []
    for p in (os.path.abspath(node), real):
        if any(p == d or p.startswith(d + "/") for d in map(os.path.realpath, _SYSTEM_DIRS)):
            continue
        parent = os.path.dirname(p)
        prefix = os.path.dirname(parent) if os.path.basename(parent) == "bin" else parent
        if prefix not in ("", "/") and prefix not in out:
            out.append(prefix)
    return _existing(out)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    if _libc().mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"jail: mount {source or fstype} on {target}: {os.strerror(err)}")


def _umount2(target: str, flags: int) -> None:
    if _libc().umount2(target.encode(), ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"jail: umount {target}: {os.strerror(err)}")


def _pivot_root(new_root: str, put_old: str) -> None:
    if _SYS_PIVOT_ROOT < 0:
        raise OSError(errno.ENOSYS, f"jail: pivot_root unknown on {platform.machine()}")
    libc = _libc()
    if libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), new_root.encode(), put_old.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"jail: pivot_root: {os.strerror(err)}")


def _kept_flags(fd: int) -> int:
    """Mount flags of the source's mount that a read-only remount must repeat."""
    try:
        f_flag = os.fstatvfs(fd).f_flag
    except OSError:
        return 0
    return sum(ms for st, ms in _KEEP_FLAGS.items() if f_flag & st)


def _bind_ro(src: str, dst: str, keep: int, *, nodev: bool = True) -> None:
    _mount(src, dst, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep | (MS_NODEV if nodev else 0)
    _mount(None, dst, None, flags)


def _plan(ro_paths: Iterable[str]) -> list[str]:
    """Absolute, normalised ro paths without those already inside another one (same view)."""
    paths = sorted({os.path.normpath(os.path.abspath(p)) for p in ro_paths})
    out: list[str] = []
    for p in paths:
        if p == "/":
            raise ValueError("jail: '/' cannot be a read-only path (that is no jail)")
        if any(p.startswith(q + "/") for q in out):
            continue
        out.append(p)
    return out


def enter_jail(spec: JailSpec, *, owner_uid: int | None = None) -> None:
    """Move the calling process into the jail described by ``spec`` (see the module docstring).

    Call it as root in a single-threaded child, after cgroup attach and network isolation and before
    rlimits, the uid drop and seccomp. ``owner_uid`` owns :data:`WORK_DIR` (the sandbox uid). Raises
    OSError when a step is not permitted; the caller must then not run the program.
    """
    plan = _plan(spec.ro_paths)
    # Directories made here must be traversable whatever umask the caller has (a 077 one hides /root/...).
    old_umask = os.umask(0o022)
    # Open every source before anything is mounted over it: sources may live under a directory that the
    # new root hides (a CI checkout and virtualenv under /tmp); binding /proc/self/fd/N still reaches them.
    links: list[tuple[str, str]] = []
    sources: list[tuple[str, int, bool]] = []
    try:
        # The sources are opened in the new namespace: a bind from a mount of another namespace is EINVAL.
        unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        for p in plan:
            if os.path.islink(p):
                links.append((p, os.readlink(p)))
                continue
            try:
                fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            sources.append((p, fd, stat.S_ISDIR(os.fstat(fd).st_mode)))
        root = "/tmp" if os.path.isdir("/tmp") else "/mnt"
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
        # The work tmpfs goes first: read-only paths under /tmp (a CI checkout) are bound on top of it,
        # not hidden beneath it.
        os.makedirs(root + "/tmp", mode=0o755, exist_ok=True)
        work_mb = max(1, int(spec.work_mb))
        inodes = max(1024, work_mb * 256)
        opts = f"mode=1777,size={work_mb}m,nr_inodes={inodes}"
        _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
        for p, fd, is_dir in sources:
            dst = root + p
            if is_dir:
                os.makedirs(dst, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
            _bind_ro(f"/proc/self/fd/{fd}", dst, _kept_flags(fd))
        for p, target in links:
            os.makedirs(os.path.dirname(root + p), mode=0o755, exist_ok=True)
            os.symlink(target, root + p)
        for m in spec.mask_paths:
            dst = root + os.path.normpath(os.path.abspath(m))
            if os.path.isdir(dst):
                ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
                _mount("tmpfs", dst, "tmpfs", ro, "mode=0555,size=4k,nr_inodes=1")
            elif os.path.lexists(dst):
                _bind_ro("/dev/null", dst, 0)
        dev = root + "/dev"
        os.mkdir(dev, 0o755)
        for name in _DEVICES:
            node = f"/dev/{name}"
            if os.path.exists(node):
                os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
                _bind_ro(node, f"{dev}/{name}", 0, nodev=False)
        for name, target in _DEV_LINKS.items():
            os.symlink(target, f"{dev}/{name}")
        os.mkdir(root + "/proc", 0o555)
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        work = root + WORK_DIR
        os.mkdir(work, 0o700)
        if owner_uid is not None:
            os.chown(work, owner_uid, owner_uid)
        # pivot_root(".", "."): the old root ends up stacked on the new one and is detached at once.
        os.chdir(root)
        _pivot_root(".", ".")
        _umount2(".", MNT_DETACH)
        os.chdir("/")
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.chdir(WORK_DIR)
    finally:
        os.umask(old_umask)
        for _p, fd, _d in sources:
            with contextlib.suppress(OSError):
                os.close(fd)


@lru_cache(maxsize=1)
def jail_available() -> bool:
    """True when :func:`enter_jail` works here (probed once in a forked child, cached)."""
    if not hasattr(os, "fork") or os.geteuid() != 0 or _SYS_PIVOT_ROOT < 0:
        return False

    def check() -> int:
        enter_jail(JailSpec(system_ro_paths(), work_mb=1), owner_uid=None)
        ok = os.getcwd() == WORK_DIR and os.path.isdir("/proc/self") and not os.path.exists("/root")
        return 0 if ok else 1

    return probe_in_child(check) == 0


def jail_unavailable_reason() -> str:
    """Why :func:`jail_available` is False (for the ``sandbox`` description)."""
    if os.geteuid() != 0:
        return "needs root"
    if _SYS_PIVOT_ROOT < 0:
        return f"pivot_root unknown on {platform.machine()}"
    return "mount namespaces not permitted here" if not jail_available() else "available"


__all__ = [
    "WORK_DIR",
    "JailSpec",
    "enter_jail",
    "gen3deval_mask_paths",
    "gen3deval_ro_paths",
    "jail_available",
    "jail_unavailable_reason",
    "node_ro_paths",
    "python_ro_paths",
    "system_ro_paths",
]
