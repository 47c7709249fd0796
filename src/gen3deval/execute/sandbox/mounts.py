"""The private mount namespace used by the warm CadQuery workers (moved unchanged from sandbox.py)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gen3deval.execute.sandbox.cleanup import WORLD_WRITABLE_DIRS
from gen3deval.execute.sandbox.process import CLONE_NEWNS, _libc, unshare

# --- Private mount namespace ----------------------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    if _libc().mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _first_blocker(path: str) -> str | None:
    """The first ancestor of ``path`` (or itself) that other users may not traverse (no o+x)."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        p = os.path.join(*parts[:i])
        try:
            if not os.stat(p).st_mode & 0o001:
                return p
        except OSError:
            return None
    return None


def private_mount_namespace(
    expose: Sequence[str | os.PathLike[str]],
    tmpfs_dirs: Sequence[str] = WORLD_WRITABLE_DIRS,
    *,
    tmpfs_size_mb: int = 512,
) -> dict[str, Any]:
    """Move the calling process (root) into a private mount namespace, inherited by its children:

    - every directory in ``expose`` becomes reachable by unprivileged uids: an ancestor they cannot
      traverse (e.g. ``/root``, mode 0700, holding a pyenv Python) is covered by an empty tmpfs that
      holds only a read-only bind mount of the path leading to the exposed directory, so the rest
      of that ancestor (keys, dotfiles) disappears from view;
    - each of ``tmpfs_dirs`` (default /tmp, /var/tmp, /dev/shm) becomes a fresh, private tmpfs, so
      what a program writes there is invisible to the host and vanishes with the namespace.

    Returns a description for ``ExecResult.sandbox``; raises OSError where mounts are not permitted.
    """
    unshare(CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    exposed: list[str] = []
    for raw in expose:
        target = os.path.realpath(os.fspath(raw))
        for _ in range(16):
            blocker = _first_blocker(target)
            if blocker is None:
                break
            rel = os.path.relpath(target, blocker)
            if rel == ".":
                raise OSError(errno.EACCES, f"{target} itself is not traversable by other users")
            first = rel.split(os.sep)[0]
            fd = os.open(blocker, os.O_PATH | os.O_DIRECTORY)
            try:
                keep = [e for e in exposed if e.startswith(blocker + os.sep)]
                _mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
                for name in {first, *(os.path.relpath(e, blocker).split(os.sep)[0] for e in keep)}:
                    dst = os.path.join(blocker, name)
                    src = f"/proc/self/fd/{fd}/{name}"
                    if os.path.isdir(src):
                        os.makedirs(dst, exist_ok=True)
                    else:
                        Path(dst).touch()
                    _mount(src, dst, None, MS_BIND | MS_REC)
                    _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            finally:
                os.close(fd)
        exposed.append(target)
    private = []
    for d in tmpfs_dirs:
        if not os.path.isdir(d):
            continue
        real_d = os.path.realpath(d)
        # Exposed paths inside a directory about to be covered (a checkout or virtualenv under /tmp, as in a
        # CI clone) are kept: held open across the new tmpfs, then bound back read-only at the same path.
        inside = [e for e in exposed if e.startswith(real_d + os.sep)]
        fds = [os.open(e, os.O_PATH | os.O_DIRECTORY) for e in inside]
        try:
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={int(tmpfs_size_mb)}m")
            for e, fd in zip(inside, fds, strict=True):
                os.makedirs(e, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", e, None, MS_BIND | MS_REC)
                _mount(None, e, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            for fd in fds:
                os.close(fd)
        private.append(d)
    return {"filesystem": "private mount namespace", "private_tmpfs": private, "exposed": exposed}
