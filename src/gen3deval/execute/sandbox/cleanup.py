"""Files a program leaves behind: private temporary folders, hostile trees, world-writable folders.

Used where there is no jail (``GEN3DEVAL_SANDBOX=basic``, not root): inside a jail the work folder is a tmpfs
that vanishes with the program's mount namespace. :func:`remove_tree` is iterative and descends through
directory descriptors, so a program's 3000-deep tree or a symlink swapped in mid-walk cannot crash or
redirect it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from gen3deval.execute.sandbox.process import SANDBOX_UID_BASE

# World-writable places an unprivileged uid could still write to; swept after each program.
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


@contextlib.contextmanager
def private_tmpdir(prefix: str = "gen3deval-sbx-", *, owner_uid: int | None = None) -> Iterator[Path]:
    """A fresh 0700 temporary directory (owned by ``owner_uid`` when given), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if owner_uid is not None:
            os.chown(path, owner_uid, owner_uid)
        yield path
    finally:
        remove_tree(path)


def _open_dir(name: str, dir_fd: int | None) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:  # a directory left without r/x for us (only matters when not root)
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, flags, dir_fd=dir_fd)


def _remove_entry(name: str, dir_fd: int, *, is_dir: bool) -> None:
    remove = os.rmdir if is_dir else os.unlink
    try:
        remove(name, dir_fd=dir_fd)
    except PermissionError:
        os.fchmod(dir_fd, 0o700)  # a read-only directory the program left behind
        remove(name, dir_fd=dir_fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """rm -rf that never recurses and never raises (best effort).

    Walks with directory descriptors, keeping two open at a time, so 100k nested directories or
    paths longer than PATH_MAX cannot crash it; read-only directories are made writable first.
    Going up uses ``..``, checked against the (device, inode) recorded on the way down: a tree
    renamed meanwhile is left alone rather than followed elsewhere.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.lstat(path)
    except OSError:
        return
    parent, name = os.path.split(path)
    try:
        pfd = _open_dir(parent or "/", None)
    except OSError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            _empty_tree(pfd, name)
        with contextlib.suppress(OSError):
            _remove_entry(name, pfd, is_dir=stat.S_ISDIR(st.st_mode))
    finally:
        os.close(pfd)


def _empty_tree(pfd: int, name: str) -> None:
    """Delete everything below directory ``name`` of ``pfd`` (iteratively; see :func:`remove_tree`)."""
    try:
        cur = _open_dir(name, pfd)
    except OSError:
        return
    top = os.fstat(cur)
    chain: list[tuple[int, int, str]] = [(top.st_dev, top.st_ino, name)]  # (dev, ino, name) per level
    stuck: set[tuple[int, int]] = set()  # entries that could not be removed: skipped, not retried forever
    try:
        while True:
            sub: str | None = None
            dev = chain[-1][0]
            with contextlib.suppress(OSError), os.scandir(cur) as it:
                for e in it:
                    key = (dev, e.inode())
                    if key in stuck:
                        continue
                    if e.is_dir(follow_symlinks=False):
                        sub = e.name
                        break
                    try:
                        _remove_entry(e.name, cur, is_dir=False)
                    except OSError:
                        stuck.add(key)
            if sub is not None:
                try:
                    nfd = _open_dir(sub, cur)
                except OSError:
                    with contextlib.suppress(OSError):
                        st = os.stat(sub, dir_fd=cur, follow_symlinks=False)
                        stuck.add((st.st_dev, st.st_ino))
                    continue
                st = os.fstat(nfd)
                chain.append((st.st_dev, st.st_ino, sub))
                os.close(cur)
                cur = nfd
                continue
            if len(chain) == 1:
                return
            dev_ino_name = chain.pop()
            up = _open_dir("..", cur)
            st = os.fstat(up)
            if (st.st_dev, st.st_ino) != chain[-1][:2]:
                os.close(up)
                return  # moved while we worked: do not follow it anywhere else
            os.close(cur)
            cur = up
            try:
                _remove_entry(dev_ino_name[2], cur, is_dir=True)
            except OSError:
                stuck.add(dev_ino_name[:2])
    finally:
        os.close(cur)


def sweep_uid_files(
    uid: int, dirs: Sequence[str] = WORLD_WRITABLE_DIRS, *, keep: Sequence[str | os.PathLike[str]] = ()
) -> list[str]:
    """Delete top-level entries owned by ``uid`` in world-writable ``dirs`` except ``keep``;
    returns what was removed."""
    if uid < SANDBOX_UID_BASE:
        raise ValueError(f"refusing to sweep files of uid {uid}: not a sandbox uid")
    removed = []
    kept = {os.path.realpath(k) for k in keep}
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if os.path.realpath(e.path) in kept:
                continue
            with contextlib.suppress(OSError):
                if e.stat(follow_symlinks=False).st_uid == uid:
                    remove_tree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
                    removed.append(e.path)
    return removed
