"""OS-level sandbox primitives shared by the executors (no CadQuery or Node in here).

The boundary is the operating system, never Python: a program runs in its own session/process group,
under rlimits (address space, CPU, file size, process count, no core files), with a scrubbed
environment, inside a private temporary directory, without network (a fresh network namespace where
the kernel permits it) and, when we run as root, as an unprivileged throw-away uid (so root-only files
such as ``/root`` or ``/proc/<parent>/environ`` are unreadable and RLIMIT_NPROC applies). Python audit
hooks used by the executors are a tripwire for *classifying* violations, not a boundary.

Typical use with :mod:`subprocess`::

    with private_tmpdir(owner_uid=uid) as tmp:
        out = run_limited(argv, limits, cwd=tmp, env=scrubbed_env(tmp), uid=uid)
        cls = classify_exit(out, limits)

Every function here is Linux-only (``/proc``, ``unshare``); on other systems isolation degrades and
the ``sandbox`` description says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen3deval.execute.result import Limits
from gen3deval.execute.sandbox.policy import Isolation, default_isolation, sandbox_description

if TYPE_CHECKING:
    from gen3deval.execute.sandbox.cgroups import ProgramCgroup
    from gen3deval.execute.sandbox.jail import JailSpec
    from gen3deval.execute.sandbox.seccomp import SeccompPolicy

# Linux clone flags (sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Throw-away sandbox uids live far above any real account (uid_t is 32-bit); ``sandbox_uid(slot)``
# adds a slot (the worker's pid) so concurrent workers never share a uid and a sweep of one uid's
# processes cannot touch another worker's program.
SANDBOX_UID_BASE = 2_000_000_000

# Only these variables of the parent survive into a program's environment.
_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def unshare(flags: int) -> None:
    """Call unshare(2) in the current process; raises OSError on failure."""
    if _libc().unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def isolate_network() -> str:
    """Move the current process into a new, empty network namespace (only a down loopback).

    Returns how: ``"netns"`` (CLONE_NEWNET, needs root/CAP_SYS_ADMIN), ``"userns+netns"`` (an
    unprivileged user namespace; the process then looks like root in that namespace only), or
    ``"not isolated"`` when neither is permitted. Call it before dropping privileges.
    """
    try:
        unshare(CLONE_NEWNET)
        return "netns"
    except OSError:
        pass
    if os.geteuid() != 0:
        try:
            uid, gid = os.geteuid(), os.getegid()
            unshare(CLONE_NEWUSER | CLONE_NEWNET)
            # Map ourselves so files keep their owner; without the map we would be 'nobody'.
            with contextlib.suppress(OSError):
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
                Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
            return "userns+netns"
        except OSError:
            pass
    return "not isolated"


def probe_in_child(check: Callable[[], int], timeout_s: float = 10.0) -> int:
    """Run ``check`` in a forked child (so that what it changes, e.g. namespaces or a seccomp filter, stays
    there) and return its result as the child's exit code: 0 for success. A child that hangs past
    ``timeout_s`` is killed (-SIGKILL); one that raises gives 1."""
    _libc()  # load libc before forking
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the probe child
        code = 1
        try:
            code = int(check())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    status, _ru, killed = wait_with_deadline(pid, time.monotonic() + timeout_s)
    return -signal.SIGKILL if killed else os.waitstatus_to_exitcode(status)


@lru_cache(maxsize=1)
def network_isolation_available() -> bool:
    """True when a child process can get its own network namespace here (probed once, cached)."""
    if not hasattr(os, "fork") or not Path("/proc/self/ns/net").exists():
        return False
    return probe_in_child(lambda: 0 if isolate_network() != "not isolated" else 1) == 0


def can_switch_user() -> bool:
    """True when we may run programs under a throw-away uid (we are root)."""
    return hasattr(os, "setuid") and os.geteuid() == 0


def sandbox_uid(slot: int | None = None) -> int | None:
    """The throw-away uid for ``slot`` (default: this process's pid), or None when not root.

    The uid has no passwd entry, owns nothing but the program's temp directory, and is unique per
    live slot, so RLIMIT_NPROC and :func:`kill_uid_processes` concern one program only.
    """
    if not can_switch_user():
        return None
    return SANDBOX_UID_BASE + (os.getpid() if slot is None else int(slot))


def drop_privileges(uid: int, gid: int | None = None) -> None:
    """setgroups([]), setgid, setuid to ``uid`` (irreversible), then forbid regaining privileges."""
    gid = uid if gid is None else gid
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    set_no_new_privs()


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): setuid binaries can no longer raise privileges (best effort)."""
    with contextlib.suppress(Exception):
        _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (best effort)."""
    with contextlib.suppress(Exception):
        _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def apply_rlimits(limits: Limits, *, address_space: bool = True) -> None:
    """Set RLIMIT_AS (``memory_mb``), RLIMIT_CPU (``cpu_s``: SIGXCPU at the soft limit, SIGKILL one
    second later), RLIMIT_FSIZE (``file_mb``), RLIMIT_CORE = 0 and, where it works, RLIMIT_NPROC
    (``processes``; counted per real uid, enforced only for unprivileged uids).

    ``address_space=False`` skips RLIMIT_AS (V8/Node reserves far more virtual memory than it uses).
    """

    def _set(which: int, value: int) -> None:
        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))

    if address_space and limits.memory_mb > 0:
        _set(resource.RLIMIT_AS, int(limits.memory_mb) * 1024 * 1024)
    if limits.cpu_s > 0:
        cpu = max(1, int(limits.cpu_s + 0.999))
        with contextlib.suppress(ValueError, OSError):
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            top = cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, top), top))
    if limits.file_mb > 0:
        _set(resource.RLIMIT_FSIZE, int(limits.file_mb) * 1024 * 1024)
    _set(resource.RLIMIT_CORE, 0)
    if limits.processes > 0:
        _set(resource.RLIMIT_NPROC, int(limits.processes))


class SandboxSetupError(OSError):
    """The sandbox could not be set up in the child; the program did not run."""


def confine_current_process(
    limits: Limits,
    *,
    uid: int | None = None,
    new_session: bool = True,
    address_space: bool = True,
    jail: JailSpec | None = None,
    cgroup: ProgramCgroup | None = None,
    seccomp: SeccompPolicy | None = None,
) -> None:
    """Confine the calling process (a fresh, single-threaded child, still root when ``uid`` is given).

    Order: setsid, ``cgroup.attach``, network namespace, ``enter_jail(jail, owner_uid=uid)``, rlimits,
    the uid drop (+ NO_NEW_PRIVS), ``install_seccomp(seccomp)``. Privileged steps come before the uid
    drop; RLIMIT_NPROC only bites once the uid is unprivileged; the seccomp filter (which refuses
    mount/unshare) comes last. Any failure raises: the caller must not run the program then. The
    ``sandbox`` description is the parent's business (:func:`sandbox_description`), never the child's.
    """
    if new_session:
        with contextlib.suppress(OSError):
            os.setsid()
    if cgroup is not None:
        cgroup.attach(0)
    if not limits.network:
        isolate_network()
    if jail is not None:
        from gen3deval.execute.sandbox.jail import enter_jail

        enter_jail(jail, owner_uid=uid)
    apply_rlimits(limits, address_space=address_space)
    if uid is not None:
        drop_privileges(uid)
    else:
        set_no_new_privs()
    if seccomp is not None:
        from gen3deval.execute.sandbox.seccomp import install_seccomp

        install_seccomp(seccomp)


def limits_preexec(
    limits: Limits,
    *,
    uid: int | None = None,
    address_space: bool = True,
    jail: JailSpec | None = None,
    cgroup: ProgramCgroup | None = None,
    seccomp: SeccompPolicy | None = None,
    error_fd: int | None = None,
) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that confines the child (see
    :func:`confine_current_process`). Do not also pass Popen's ``user=``/``start_new_session=``:
    the uid must be dropped *after* the namespaces are made. ``error_fd``: where the child writes
    why confinement failed (Popen itself only reports "Exception occurred in preexec_fn")."""

    def _preexec() -> None:
        try:
            confine_current_process(
                limits, uid=uid, address_space=address_space, jail=jail, cgroup=cgroup, seccomp=seccomp
            )
        except BaseException as exc:
            if error_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(error_fd, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
            raise

    return _preexec


def scrubbed_env(home: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: PATH, LANG/LC_ALL, HOME=TMPDIR=``home``, plus ``extra``.

    Nothing of the parent's environment (API keys, tokens, proxies) is copied.
    """
    env = dict(_SAFE_ENV)
    env["HOME"] = env["TMPDIR"] = str(home)
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def kill_process_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to process group ``pgid``; True if the group existed."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def uid_processes(uid: int, *, include_zombies: bool = True) -> list[int]:
    """Pids of processes whose real uid is ``uid`` (from /proc)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                zombie = False
                for line in fh:
                    if line.startswith(b"State:"):
                        zombie = b"Z" in line.split()[1]
                    elif line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid and (include_zombies or not zombie):
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to this process, so
    :func:`kill_uid_processes` can reap them (this machine's init does not reap zombies)."""
    try:
        return _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:
        return False


def kill_uid_processes(uid: int, *, rounds: int = 50) -> int:
    """SIGKILL every process of the sandbox ``uid`` (repeatedly, to catch ones forked meanwhile),
    then reap those that are our children (see :func:`become_subreaper`).

    Refuses real accounts (uid < SANDBOX_UID_BASE). Returns how many kills were sent.
    """
    if uid < SANDBOX_UID_BASE:
        raise ValueError(f"refusing to kill processes of uid {uid}: not a sandbox uid")
    sent = 0
    for _ in range(rounds):
        pids = uid_processes(uid, include_zombies=False)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
        time.sleep(0.002)
    for pid in uid_processes(uid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return sent


def peak_rss_mb(rusage: resource.struct_rusage) -> float:
    """ru_maxrss (KiB on Linux) in MiB. For a forked child it includes pages shared with the parent."""
    return float(rusage.ru_maxrss) / 1024.0


def wait_with_deadline(pid: int, deadline: float, *, pgid: int | None = None) -> tuple[int, Any, bool]:
    """Reap ``pid`` with os.wait4, SIGKILLing its group (``pgid``, default ``pid``) at ``deadline``
    (a time.monotonic() value). Returns (wait status, rusage, killed_for_time)."""
    killed = False
    delay = 0.001
    while True:
        try:
            got, status, ru = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return 0, None, killed
        if got == pid:
            return status, ru, killed
        if not killed and time.monotonic() >= deadline:
            kill_process_group(pgid or pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# Output that shows a program ran out of memory before it was killed (evidence for a SIGKILL).
_OOM_EVIDENCE = (
    b"MemoryError",
    b"out of memory",
    b"Out of memory",
    b"std::bad_alloc",
    b"Cannot allocate memory",
)


def classify_signal(
    returncode: int,
    limits: Limits,
    *,
    timed_out: bool = False,
    cpu_s: float | None = None,
    oom_killed: bool | None = None,
    stderr: bytes | str | None = None,
) -> str | None:
    """The error class of a process that ended with ``returncode`` (negative = killed by signal).

    ``timed_out``: the parent killed it at the wall limit. ``cpu_s``: CPU seconds it used (from
    rusage), to recognise the SIGKILL that RLIMIT_CPU's hard limit sends. A SIGKILL is ``"memory"``
    only with evidence: ``oom_killed`` (the program's cgroup saw an OOM kill) or out-of-memory text
    in ``stderr``; otherwise (e.g. a program that SIGKILLs itself) it is ``"runtime"`` (say "killed
    by SIGKILL"). Returns ``"timeout"``, ``"memory"``, ``"runtime"`` or None for a clean exit 0.
    """
    if timed_out:
        return "timeout"
    if returncode == 0:
        return None
    if returncode > 0:
        return "runtime"
    sig = -returncode
    if sig == signal.SIGXCPU:
        return "timeout"
    if sig == signal.SIGKILL:
        if cpu_s is not None and limits.cpu_s > 0 and cpu_s >= limits.cpu_s - 0.05:
            return "timeout"
        if oom_killed:
            return "memory"
        err = stderr.encode(errors="replace") if isinstance(stderr, str) else (stderr or b"")
        if any(m in err[-8192:] for m in _OOM_EVIDENCE):
            return "memory"
        return "runtime"  # no evidence of the OOM killer: the program (or a child of it) killed itself
    if sig == signal.SIGXFSZ:
        return "runtime"
    return "runtime"


def signal_name(returncode: int) -> str:
    """'SIGKILL' for -9, 'exit 3' for 3."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


def tail(data: bytes | str, limit: int = 4000) -> str:
    """The last ``limit`` characters of ``data`` (decoded leniently), marked when cut."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else "[...]" + text[-limit:]


@dataclass
class ProcessOutcome:
    """What :func:`run_limited` observed.

    returncode: exit code, or -signal when killed. timed_out: killed by us at the wall limit.
    stdout/stderr: captured bytes (stdout up to ``max_stdout_bytes``, stderr a tail).
    wall_s: seconds; peak_mb: ru_maxrss of the reaped process (or the cgroup's peak when larger);
    cpu_s: user+system CPU seconds. oom_killed: the program's cgroup recorded an OOM kill.
    sandbox: the parent-side description (:func:`sandbox_description`).
    """

    returncode: int
    timed_out: bool
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    wall_s: float = 0.0
    peak_mb: float = 0.0
    cpu_s: float = 0.0
    sandbox: dict[str, Any] = field(default_factory=dict)
    oom_killed: bool = False


def run_limited(
    argv: Sequence[str],
    limits: Limits,
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    stdin: bytes | None = None,
    uid: int | None = None,
    address_space: bool = True,
    max_stdout_bytes: int = 256 * 1024 * 1024,
    max_stderr_bytes: int = 64 * 1024,
    isolation: Isolation | None = None,
    jail: JailSpec | None = None,
    seccomp: SeccompPolicy | None = None,
) -> ProcessOutcome:
    """Run ``argv`` confined (see :func:`confine_current_process`) with a wall-clock kill.

    Layers beyond the always-on ones follow ``isolation`` (default: :func:`default_isolation`, i.e.
    ``GEN3DEVAL_SANDBOX``): a program cgroup where the host has one; ``jail`` (then ``cwd`` is
    ignored: the program starts in WORK_DIR, which is also HOME and TMPDIR) where mount namespaces
    work; ``seccomp`` (default: a filter that allows fork and exec; ``allow_exec`` must be True since
    the filter is installed before exec) where available. A layer that cannot be set up on this host is
    left out and the ``sandbox`` description says so; a layer that fails in the child raises
    :class:`SandboxSetupError` and the program does not run.

    The whole process group is SIGKILLed at ``limits.wall_s`` and again after exit (stray
    descendants), then everything in the cgroup; with ``uid`` every process of that uid is killed
    too and reaped (the calling process becomes a child subreaper for that). Output is read
    concurrently so a chatty program cannot block on a full pipe.
    """
    from gen3deval.execute.sandbox.cgroups import create_program_cgroup
    from gen3deval.execute.sandbox.jail import WORK_DIR, jail_available
    from gen3deval.execute.sandbox.seccomp import SeccompPolicy, seccomp_available

    iso = isolation if isolation is not None else default_isolation()
    use_jail = jail if jail is not None and iso.filesystem and jail_available() else None
    if iso.seccomp and seccomp is None:
        seccomp = SeccompPolicy(allow_fork=True, allow_exec=True)
    use_seccomp = seccomp if seccomp is not None and iso.seccomp and seccomp_available() else None
    if use_seccomp is not None and not use_seccomp.allow_exec:
        raise ValueError(
            "run_limited execs the program after the filter is installed: allow_exec=True needed"
        )
    env = dict(env)
    if use_jail is not None:
        env["HOME"] = env["TMPDIR"] = WORK_DIR
    if uid is not None:
        become_subreaper()  # so that orphans of the program can be reaped, not left as zombies
    cgroup = create_program_cgroup(limits) if iso.cgroup else None
    description = sandbox_description(
        limits,
        uid=uid,
        jail={"work_mb": use_jail.work_mb} if use_jail is not None else False,
        cgroup=cgroup,
        seccomp=use_seccomp,
        isolation=iso,
        address_space=address_space,
    )
    err_r, err_w = os.pipe()
    preexec = limits_preexec(
        limits,
        uid=uid,
        address_space=address_space,
        jail=use_jail,
        cgroup=cgroup,
        seccomp=use_seccomp,
        error_fd=err_w,
    )
    t0 = time.monotonic()
    deadline = t0 + limits.wall_s
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
            close_fds=True,
        )
    except subprocess.SubprocessError as exc:
        os.close(err_w)
        why = _read_all(err_r).decode(errors="replace") or str(exc)
        os.close(err_r)
        if cgroup is not None:
            cgroup.remove()
        raise SandboxSetupError(f"sandbox setup failed, the program did not run: {why}") from exc
    except BaseException:
        os.close(err_w)
        os.close(err_r)
        if cgroup is not None:
            cgroup.remove()
        raise
    os.close(err_w)
    os.close(err_r)
    try:
        outcome = _drive(proc, limits, stdin, deadline, max_stdout_bytes, max_stderr_bytes, uid)
    finally:
        if cgroup is not None:
            cgroup.kill_all()
    outcome.wall_s = time.monotonic() - t0
    outcome.sandbox = description
    if cgroup is not None:
        outcome.oom_killed = cgroup.oom_killed()
        peak = cgroup.peak_mb()
        if peak is not None:
            outcome.peak_mb = max(outcome.peak_mb, peak)
        cgroup.remove()
    return outcome


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _drive(
    proc: subprocess.Popen[bytes],
    limits: Limits,
    stdin: bytes | None,
    deadline: float,
    max_stdout_bytes: int,
    max_stderr_bytes: int,
    uid: int | None,
) -> ProcessOutcome:
    """Feed stdin, collect output, enforce the wall-clock deadline, kill and reap what is left."""
    out = bytearray()
    err = bytearray()
    truncated = False
    timed_out = False
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    if stdin is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    status, ru = 0, None
    leader_done_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                kill_process_group(proc.pid)
                break
            if leader_done_at is None:
                got, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if got == proc.pid:
                    leader_done_at = now
            elif now - leader_done_at > 0.2:
                # The program exited but a descendant still holds the pipes open: stop waiting.
                break
            timeout = min(deadline - now, 0.05 if leader_done_at is not None else 0.1)
            for key, _ in sel.select(timeout=timeout):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "out":
                    if len(out) + len(chunk) > max_stdout_bytes:
                        truncated = True
                        chunk = chunk[: max(0, max_stdout_bytes - len(out))]
                    out += chunk
                else:
                    err += chunk
                    if len(err) > 2 * max_stderr_bytes:
                        del err[: len(err) - max_stderr_bytes]
    finally:
        sel.close()
    if leader_done_at is None:
        status, ru, killed = wait_with_deadline(proc.pid, deadline, pgid=proc.pid)
        timed_out = timed_out or killed
    # The group may outlive its leader (a backgrounded grandchild): kill it and reap.
    kill_process_group(proc.pid)
    if uid is not None and uid >= SANDBOX_UID_BASE:
        kill_uid_processes(uid)
    proc.returncode = os.waitstatus_to_exitcode(status) if ru is not None else -signal.SIGKILL
    for f in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            f.close()
    return ProcessOutcome(
        returncode=proc.returncode,
        timed_out=timed_out,
        stdout=bytes(out),
        stderr=bytes(err[-max_stderr_bytes:]),
        stdout_truncated=truncated,
        peak_mb=peak_rss_mb(ru) if ru is not None else 0.0,
        cpu_s=(ru.ru_utime + ru.ru_stime) if ru is not None else 0.0,
    )
