"""One cgroup per program: a memory, process-count and CPU budget shared by all its processes.

rlimits are per process (16 children of one program with ``RLIMIT_AS`` 2 GiB may take 32 GiB); a cgroup
holds the program and everything it forks to one budget, lets the parent kill all of it at once, and tells
whether the kernel OOM-killed something in it.

Both hierarchies are supported:

- **v2** (unified): the group is created under our own cgroup when its ``cgroup.subtree_control`` can
  enable ``memory`` and ``pids`` (``cpu`` when offered). v2 forbids processes in a group that distributes
  resources ("no internal processes"), so when our own group holds processes we first move this process
  into a leaf we create (``gen3deval-host-<pid>``); when that is not enough (other processes left in the
  group) the hierarchy root is used. Limits: ``memory.max``, ``memory.swap.max`` = 0, ``pids.max``,
  ``cpu.max`` = one core; kill via ``cgroup.kill``.
- **v1** (one mount per controller, e.g. ``/sys/fs/cgroup/memory``): one directory per controller under
  our own group of that controller (``/proc/self/cgroup``) or, when that path is not visible under the
  mount (a cgroup-namespace quirk) or not writable, under the mount root. Limits:
  ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` where swap is accounted), ``pids.max``,
  ``cpu.cfs_quota_us`` = one core.

v2 is used when its root offers ``memory`` and ``pids``; else v1 when both are mounted; else none (the
executors fall back to rlimits and say so). The probe runs once per process (cached).

Nothing here imports the sandbox package ``__init__`` (which re-exports these names).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gen3deval.execute.result import Limits

CPU_PERIOD_US = 100_000  # a quota of one period per period = one core
KILL_WAIT_S = 2.0  # kill_all gives up after this long (a fork loop is bounded by pids.max anyway)
RMDIR_WAIT_S = 1.0  # rmdir retries on EBUSY for this long (exiting tasks leave the group asynchronously)
_MIB = 1024 * 1024
_REQUIRED = ("memory", "pids")
_OPTIONAL = ("cpu",)

_counter = itertools.count()
_probe_lock = threading.Lock()
_probe_result: tuple[_Layout | None, str] | None = None


@dataclass
class _Layout:
    """Where program groups are created.

    version "v2": ``bases["unified"]`` is the parent directory; "v1": one parent directory per controller
    (``memory``, ``pids`` and optionally ``cpu``; several keys may share a mount such as ``cpu,cpuacct``).
    """

    version: str
    bases: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- file helpers
def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    # One write() per value: cgroupfs parses each write as one command.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _try_write(path: str, value: str) -> bool:
    try:
        _write(path, value)
        return True
    except OSError:
        return False


def _keyed(path: str) -> dict[str, int]:
    """Parse a flat-keyed cgroup file ("key value" lines, e.g. memory.events); {} when unreadable."""
    out: dict[str, int] = {}
    try:
        text = _read(path)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int_file(path: str) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- discovery
def _mountinfo() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of each cgroup/cgroup2 mount."""
    out: list[tuple[str, str, str, set[str]]] = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        out.append((rfields[0], fields[3], point, set(rfields[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """Our cgroup path per v1 controller, plus "" for the v2 (unified) path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        text = _read("/proc/self/cgroup")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ctrls = parts[1].split(",") if parts[1] else [""]
        for c in ctrls:
            out[c] = parts[2]
    return out


def _under_mount(point: str, mount_root: str, path: str) -> str:
    """Our group's directory under a mount; the mount point itself when the path is not visible there."""
    rel = path
    if mount_root not in ("/", "") and (rel == mount_root or rel.startswith(mount_root.rstrip("/") + "/")):
        rel = rel[len(mount_root.rstrip("/")) :]
    candidate = os.path.normpath(os.path.join(point, rel.lstrip("/")))
    if not candidate.startswith(point.rstrip("/")) or not os.path.isdir(candidate):
        return point
    return candidate


def _v2_controllers(path: str, name: str) -> set[str]:
    try:
        return set(_read(os.path.join(path, name)).split())
    except OSError:
        return set()


def _v2_enable(mount: str, base: str, wanted: Iterable[str]) -> tuple[bool, str]:
    """Enable the wanted controllers for base's children (and base's ancestors, root first)."""
    chain = [base]
    while os.path.normpath(chain[-1]) not in (os.path.normpath(mount), "/"):
        chain.append(os.path.dirname(chain[-1]))
    chain.reverse()  # mount root ... base
    for c in wanted:
        for d in chain:
            if c not in _v2_controllers(d, "cgroup.subtree_control"):
                try:
                    _write(os.path.join(d, "cgroup.subtree_control"), f"+{c}")
                except OSError as e:
                    if c in _REQUIRED:
                        return False, f"cannot enable {c} in {d}/cgroup.subtree_control: {e.strerror}"
                    break
    have = _v2_controllers(base, "cgroup.subtree_control")
    missing = [c for c in _REQUIRED if c not in have]
    return (not missing), (f"{base}: controllers {missing} not enabled" if missing else "")


def _v2_layout(mount: str, own_path: str) -> tuple[_Layout | None, str]:
    offered = _v2_controllers(mount, "cgroup.controllers")
    missing = [c for c in _REQUIRED if c not in offered]
    if missing:
        return None, f"cgroup v2 at {mount} offers no {'/'.join(missing)} controller"
    wanted = [c for c in (*_REQUIRED, *_OPTIONAL) if c in offered]
    own = _under_mount(mount, "/", own_path)
    reasons = []
    for base in dict.fromkeys([own, mount]):
        ok, why = _v2_enable(mount, base, wanted)
        if not ok and base == own:
            # "No internal processes": move this process into a leaf of its own group, then retry.
            leaf = os.path.join(own, f"gen3deval-host-{os.getpid()}")
            try:
                os.makedirs(leaf, exist_ok=True)
                _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
                ok, why = _v2_enable(mount, base, wanted)
            except OSError as e:
                why = f"cannot move into leaf {leaf}: {e.strerror}"
        if ok:
            return _Layout("v2", {"unified": base}), ""
        reasons.append(why)
    return None, "cgroup v2: " + "; ".join(reasons)


def _v1_layout(
    mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str]
) -> tuple[_Layout | None, str]:
    bases: dict[str, str] = {}
    for c in (*_REQUIRED, *_OPTIONAL):
        for fstype, mroot, point, opts in mounts:
            if fstype == "cgroup" and c in opts:
                mine = _under_mount(point, mroot, own.get(c, "/"))
                # Prefer our own group; use the mount root when we cannot create children there.
                bases[c] = mine if os.access(mine, os.W_OK) else point
                break
    missing = [c for c in _REQUIRED if c not in bases]
    if missing:
        return None, f"cgroup v1: controller {'/'.join(missing)} not mounted"
    for c, b in bases.items():
        if not os.access(b, os.W_OK):
            return None, f"cgroup v1: {b} ({c}) not writable"
    return _Layout("v1", bases), ""


def _detect() -> tuple[_Layout | None, str]:
    mounts = _mountinfo()
    if not mounts:
        return None, "no cgroup filesystem mounted"
    own = _own_paths()
    why = []
    for fstype, _mroot, point, _opts in mounts:
        if fstype == "cgroup2":
            layout, reason = _v2_layout(point, own.get("", "/"))
            if layout is not None:
                return layout, ""
            why.append(reason)
            break
    layout, reason = _v1_layout(mounts, own)
    if layout is not None:
        return layout, ""
    why.append(reason)
    return None, "; ".join(why)


def _probe() -> tuple[_Layout | None, str]:
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            # Not only root: a delegated v2 subtree (e.g. systemd user slice) is writable by its owner.
            layout, reason = _detect()
            if layout is not None:
                try:  # a real create + remove: writable limits, not just a writable directory
                    _build(layout, Limits(memory_mb=64, processes=16)).remove()
                except OSError as e:
                    reason = f"cgroup {layout.version}: test group failed: {e}"
                    layout = None
            _probe_result = (layout, reason)
        return _probe_result


def cgroup_support() -> str | None:
    """``"v2"``, ``"v1"`` or None when no per-program cgroup can be made here (probed once, cached)."""
    layout = _probe()[0]
    return None if layout is None else layout.version


def cgroup_unavailable_reason() -> str:
    """Why :func:`cgroup_support` is None, or why the last group could not be made ("" when all is well)."""
    return _probe()[1]


# ------------------------------------------------------------------------------------------------ the group
class ProgramCgroup:
    """The cgroup of one program (one directory per v1 controller, one directory on v2).

    Create with :func:`create_program_cgroup`; ``attach`` the program (in the child, before exec),
    ``kill_all`` + ``remove`` after the run. ``oom_killed``/``peak_mb`` stay readable after ``remove``.
    """

    def __init__(
        self, version: str, dirs: dict[str, str], *, memory_mb: int | None, pids: int | None, cpu: bool
    ):
        self.version = version
        self._dirs = dirs  # controller key ("unified" on v2) -> directory
        self._memory_mb = memory_mb
        self._pids = pids
        self._cpu = cpu
        self._removed = False
        self._final: tuple[bool, float | None] | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        """The group's directories (deduplicated; v1 mounts like cpu,cpuacct may share one)."""
        return tuple(dict.fromkeys(self._dirs.values()))

    def attach(self, pid: int = 0) -> None:
        """Move process ``pid`` (0 = the caller) with all its threads into the group. Raises OSError."""
        target = str(pid or os.getpid())
        for d in self.paths:
            _write(os.path.join(d, "cgroup.procs"), target)

    def procs(self) -> set[int]:
        """Live processes in the group (union over the v1 controllers)."""
        out: set[int] = set()
        for d in self.paths:
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
        return out

    def kill_all(self) -> int:
        """SIGKILL everything in the group until it is empty (at most KILL_WAIT_S); returns processes killed."""
        killed: set[int] = set()
        kill_file = os.path.join(self._dirs.get("unified", ""), "cgroup.kill")
        has_kill = self.version == "v2" and os.path.exists(kill_file)
        deadline = time.monotonic() + KILL_WAIT_S
        while True:
            pids = self.procs()
            if not pids:
                break
            killed.update(pids)
            if not (has_kill and _try_write(kill_file, "1")):
                # Loop: a process may fork between our read and its kill; pids.max bounds how many.
                for p in pids:
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        return len(killed)

    def oom_killed(self) -> bool:
        """True when the kernel OOM-killed a process of the group (memory.events / memory.oom_control)."""
        if self._final is not None:
            return self._final[0]
        d = self._dirs.get("unified" if self.version == "v2" else "memory")
        if d is None:
            return False
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        return _keyed(os.path.join(d, name)).get("oom_kill", 0) > 0

    def peak_mb(self) -> float | None:
        """Peak memory charged to the group, MiB (memory.peak / memory.max_usage_in_bytes); None if unknown."""
        if self._final is not None:
            return self._final[1]
        d = self._dirs.get("unified" if self.version == "v2" else "memory")
        if d is None:
            return None
        value = _int_file(
            os.path.join(d, "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes")
        )
        return None if value is None else value / _MIB

    def remove(self) -> None:
        """kill_all, then remove the directories (retrying briefly on EBUSY). Idempotent; never raises."""
        if self._removed:
            return
        try:
            self.kill_all()
            self._final = (self.oom_killed(), self.peak_mb())
        except Exception:
            self._final = (False, None)
        self._removed = True
        for d in self.paths:
            deadline = time.monotonic() + RMDIR_WAIT_S
            while True:
                try:
                    os.rmdir(d)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    with contextlib.suppress(Exception):
                        self.kill_all()
                    time.sleep(0.005)

    def describe(self) -> dict[str, Any]:
        """What the group limits, for the result's ``sandbox`` field (built by the parent)."""
        return {
            "cgroup": self.version,
            "memory_mb": self._memory_mb,
            "pids": self._pids,
            "cpu": "1 core" if self._cpu else "not limited",
        }

    def __repr__(self) -> str:
        return f"ProgramCgroup({self.version}, {list(self.paths)})"


def _unique_name() -> str:
    return f"gen3deval-{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def _build(layout: _Layout, limits: Limits) -> ProgramCgroup:
    """Create and configure the directories; on any failure remove what was made and raise OSError."""
    name = _unique_name()
    memory_bytes = int(limits.memory_mb) * _MIB if limits.memory_mb and limits.memory_mb > 0 else None
    pids = int(limits.processes) if limits.processes and limits.processes > 0 else None
    dirs: dict[str, str] = {}
    made: list[str] = []
    cpu = False
    try:
        for key, base in layout.bases.items():
            d = os.path.join(base, name)
            if d not in made:
                os.mkdir(d, 0o755)
                made.append(d)
            dirs[key] = d
        if layout.version == "v2":
            d = dirs["unified"]
            if memory_bytes is not None:
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")
            if pids is not None:
                _write(os.path.join(d, "pids.max"), str(pids))
            if os.path.exists(os.path.join(d, "cpu.max")):
                cpu = _try_write(os.path.join(d, "cpu.max"), f"{CPU_PERIOD_US} {CPU_PERIOD_US}")
        else:
            if memory_bytes is not None:
                m = dirs["memory"]
                _write(os.path.join(m, "memory.limit_in_bytes"), str(memory_bytes))
                # memsw (memory + swap) exists only with swap accounting; it must be >= the memory limit.
                memsw = os.path.join(m, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _try_write(memsw, str(memory_bytes))
            if pids is not None:
                _write(os.path.join(dirs["pids"], "pids.max"), str(pids))
            if "cpu" in dirs:
                c = dirs["cpu"]
                cpu = _try_write(os.path.join(c, "cpu.cfs_period_us"), str(CPU_PERIOD_US)) and _try_write(
                    os.path.join(c, "cpu.cfs_quota_us"), str(CPU_PERIOD_US)
                )
    except OSError:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    return ProgramCgroup(
        layout.version,
        dirs,
        memory_mb=int(limits.memory_mb) if memory_bytes is not None else None,
        pids=pids,
        cpu=cpu,
    )


def create_program_cgroup(limits: Limits) -> ProgramCgroup | None:
    """A fresh, uniquely named group limited by ``limits`` (memory_mb, processes, one core of CPU).

    None when cgroups are unavailable here or the group cannot be made (see cgroup_unavailable_reason()).
    """
    global _probe_result
    layout, _reason = _probe()
    if layout is None:
        return None
    try:
        return _build(layout, limits)
    except OSError as e:
        with _probe_lock:
            _probe_result = (layout, f"cgroup {layout.version}: creating a group failed: {e}")
        return None
