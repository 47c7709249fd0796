"""Python audit-hook tripwire: classifies what a sandboxed Python program must not do."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

# --- Python audit-hook tripwire -------------------------------------------------------------------
# Events that a geometry program never needs: processes, network, native code, introspection of the
# interpreter's heap (a way to find and disable the hook's state), limits, links, signals.
FLAGGED_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "subprocess.Popen",
        "pty.spawn",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "urllib.Request",
        "http.client.connect",
        "smtplib.connect",
        "ftplib.connect",
        "webbrowser.open",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.dlsym/handle",
        "ctypes.cdata",
        "ctypes.cdata/buffer",
        "ctypes.call_function",
        "ctypes.addressof",
        "ctypes.string_at",
        "ctypes.wstring_at",
        "ctypes.PyObj_FromPtr",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "resource.setrlimit",
        "resource.prlimit",
        "os.symlink",
        "os.link",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "sys.remote_exec",
    }
)
# Events whose first argument(s) are paths that may only be *read* inside the read roots.
_READ_PATH_EVENTS = {"os.listdir": 1, "os.scandir": 1, "glob.glob": 1, "glob.glob/2": 1, "os.chdir": 1}
# Events that change the file system: every path argument must lie inside the write roots.
_WRITE_PATH_EVENTS = {
    "os.remove": 1,
    "os.rmdir": 1,
    "os.rename": 2,
    "os.mkdir": 1,
    "os.chmod": 1,
    "os.chown": 1,
    "os.truncate": 1,
    "os.utime": 1,
    "os.setxattr": 1,
    "os.removexattr": 1,
    "shutil.rmtree": 1,
    "shutil.copyfile": 2,
    "shutil.copytree": 2,
    "shutil.move": 2,
    "sqlite3.connect": 1,
}
_OPEN_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVICE_OK = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


NETWORK_EVENTS = frozenset(
    e for e in FLAGGED_EVENTS if e.startswith(("socket.", "urllib.", "http.", "smtplib.", "ftplib."))
)


def install_audit_tripwire(
    write_roots: Sequence[str | os.PathLike[str]],
    read_roots: Sequence[str | os.PathLike[str]],
    on_violation: Callable[[str, str], None],
    *,
    allow_network: bool = False,
) -> None:
    """Install a ``sys.addaudithook`` that reports what a sandboxed Python program must not do.

    Reported (``on_violation(event, detail)``): any event in :data:`FLAGGED_EVENTS` (processes,
    sockets, ctypes, gc heap walks, rlimits, links, signals); opening a file for writing, or
    changing the file system, outside ``write_roots``; reading or listing outside ``read_roots`` |
    ``write_roots`` (give the interpreter's library directories so imports keep working). If
    ``on_violation`` returns, the operation is blocked with PermissionError.

    ``allow_network=True`` (``Limits.network``) lets :data:`NETWORK_EVENTS` through.

    The hook cannot be switched off from inside the program: every function and constant it uses is
    captured here, at install time, as closure state (the C functions ``os.lstat``/``os.readlink``/
    ``os.getcwd``/``os.fspath`` and built-in type methods), and paths are resolved by its own small
    realpath built on them, so replacing ``os.path.realpath``, ``os.lstat``, ``posixpath`` or
    builtins changes nothing. There is no re-entrance bypass: events raised while the hook runs
    (e.g. by a path-like object's ``__fspath__``) are checked like any other. ``on_violation`` must
    not itself do what the hook flags.

    This is a classification tripwire, not a boundary: the OS limits are the boundary. Hooks
    cannot be removed once installed; install it last, just before running the program.
    """
    import stat as _stat_mod
    import sys

    # Captured now: the program can rebind module attributes and builtins, not these closure cells.
    lstat, readlink, getcwd, fspath = os.lstat, os.readlink, os.getcwd, os.fspath
    s_islnk = _stat_mod.S_ISLNK
    str_t, bytes_t, int_t, tuple_t, list_t = str, bytes, int, tuple, list
    type_of, length, perm_error, os_error = type, len, PermissionError, OSError
    is_inst, bool_t = isinstance, bool
    str_copy = str.__getitem__  # str_copy(s, slice(None)): an exact str, no subclass method runs
    full = slice(None)
    int_and = int.__and__
    decode = bytes.decode
    str_repr, bytes_repr, int_repr = str.__repr__, bytes.__repr__, int.__repr__
    startswith, split, join, rstrip = str.startswith, str.split, str.join, str.rstrip
    write_flags = _OPEN_WRITE_FLAGS
    device_ok = frozenset(_DEVICE_OK)
    read_events = dict(_READ_PATH_EVENTS)
    write_events = dict(_WRITE_PATH_EVENTS)
    flagged = frozenset(FLAGGED_EVENTS - NETWORK_EVENTS if allow_network else FLAGGED_EVENTS)

    def _text(p: Any) -> str | None:
        """An exact str for path ``p``; None for a descriptor; '' when it is no path at all."""
        t = type_of(p)
        if p is None or t is int_t or t is bool_t:
            return None
        if t is not str_t and t is not bytes_t:
            if is_inst(p, int_t):
                return None
            p = fspath(p)  # may run the program's __fspath__: events it raises are still checked
            t = type_of(p)
        if is_inst(p, str_t):
            return str_copy(p, full)
        if is_inst(p, bytes_t):
            return str_copy(decode(bytes_t(p), "utf-8", "surrogateescape"), full)
        return ""

    def _realpath(path: str) -> str:
        """os.path.realpath (non-strict) on captured C functions only."""
        if not startswith(path, "/"):
            path = str_copy(getcwd(), full) + "/" + path
        pending = split(path, "/")
        pending.reverse()
        resolved: list[str] = []
        hops = 0
        while pending:
            name = pending.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/" + join("/", resolved) + ("/" if resolved else "") + name
            try:
                mode = lstat(candidate).st_mode
            except (os_error, ValueError):
                resolved.append(name)  # does not exist (yet): keep the rest literally
                continue
            if s_islnk(mode):
                hops += 1
                if hops > 40:
                    return "<symlink loop>"
                target = str_copy(readlink(candidate), full)
                if startswith(target, "/"):
                    resolved = []
                more = split(target, "/")
                more.reverse()
                pending.extend(more)
                continue
            resolved.append(name)
        return "/" + join("/", resolved)

    def _resolve(p: Any) -> str | None:
        try:
            text = _text(p)
        except (TypeError, ValueError, os_error):
            return "<unresolvable path>"
        if text is None:
            return None  # an already-open descriptor: it was opened under the same rules
        if text == "" or "\0" in text:
            return "<unresolvable path>"
        try:
            return _realpath(text)
        except (TypeError, ValueError, os_error):
            return "<unresolvable path>"

    writes = tuple_t(_resolve(p) or "/nonexistent" for p in write_roots)
    reads = writes + tuple_t(_resolve(p) or "/nonexistent" for p in read_roots)

    def _under(path: str, roots: tuple[str, ...]) -> bool:
        for r in roots:  # noqa: SIM110 - any() is a builtin the program could replace
            if path == r or startswith(path, rstrip(r, "/") + "/"):
                return True
        return False

    def _short(args: tuple[Any, ...], limit: int = 160) -> str:
        parts: list[str] = []
        for a in args:
            t = type_of(a)
            if t is str_t:
                parts.append(str_repr(a))
            elif t is bytes_t:
                parts.append(bytes_repr(a))
            elif t is int_t:
                parts.append(int_repr(a))
            elif a is None:
                parts.append("None")
            else:
                parts.append("<object>")  # never call the program's __repr__ from the hook
        text = "(" + join(", ", parts) + ")"
        return text if length(text) <= limit else text[:limit] + "...)"

    def _check(event: str, args: tuple[Any, ...]) -> str | None:
        if type_of(event) is not str_t:
            event = str_copy(event, full)
        if event in flagged:
            return event + _short(args)
        if event == "open" and length(args):
            path = _resolve(args[0])
            if path is None or path in device_ok:
                return None
            mode: Any = args[1] if length(args) > 1 else None
            flags = args[2] if length(args) > 2 and is_inst(args[2], int_t) else 0
            write = False
            if is_inst(mode, str_t):
                m = str_copy(mode, full)
                write = "w" in m or "a" in m or "x" in m or "+" in m
            if int_and(flags, write_flags):
                write = True
            if not _under(path, writes if write else reads):
                return f"open {str_repr(path)} for {'writing' if write else 'reading'} outside the sandbox directory"
            return None
        n = read_events.get(event)
        if n:
            for p in args[:n]:
                path = _resolve(p) if p is not None else _resolve(".")
                if path is not None and not _under(path, reads):
                    return f"{event} {str_repr(path)} outside the sandbox directory"
            return None
        n = write_events.get(event)
        if n:
            for p in args[:n]:
                path = _resolve(p)
                if path is not None and not _under(path, writes):
                    return f"{event} {str_repr(path)} outside the sandbox directory"
        return None

    def _hook(event: str, args: tuple[Any, ...]) -> None:
        # No 'busy' flag: an event raised while the hook runs (a program's __fspath__) is checked too.
        detail = _check(event, args if type_of(args) is tuple_t else tuple_t(list_t(args)))
        if detail is not None:
            on_violation(event, detail)
            raise perm_error(f"sandbox: {detail}")

    sys.addaudithook(_hook)
