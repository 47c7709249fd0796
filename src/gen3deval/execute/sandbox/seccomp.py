"""A seccomp filter for generated programs: no namespaces, mounts, ptrace, kernel-attack surface; optionally
no process creation or exec.

No libseccomp binding is needed: the filter is classic BPF built here (``struct sock_filter`` /
``struct sock_fprog`` through ctypes) and installed with ``seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)``
(``prctl(PR_SET_SECCOMP)`` where that syscall is missing) after ``PR_SET_NO_NEW_PRIVS``.

The program, in order:

1. wrong architecture (not the one this table is for) -> kill the process; on x86_64, x32 syscalls
   (``nr >= 0x40000000``) -> kill;
2. always refused with EPERM: unshare, setns, mount/umount2/pivot_root/chroot and the new mount API,
   ptrace, process_vm_readv/writev, pidfd_getfd, process_madvise, bpf, perf_event_open, userfaultfd,
   keyctl/add_key/request_key, kexec_*, module loading, open_by_handle_at/name_to_handle_at, io_uring_*,
   swapon/swapoff, reboot, acct, quotactl;
3. clone3 -> ENOSYS: its flags live in memory a BPF filter cannot read, and glibc falls back to clone,
   whose flags (register argument 0, low 32 bits at offset 16 of ``seccomp_data``) it can:
   clone with any namespace flag -> EPERM; with ``allow_fork`` False, clone without CLONE_THREAD,
   fork and vfork -> EPERM (threads still work);
4. with ``allow_exec`` False, execve/execveat -> EPERM;
5. everything else is allowed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import threading
from dataclasses import dataclass

from gen3deval.execute.sandbox.process import probe_in_child

# --- kernel constants (linux/filter.h, linux/seccomp.h, linux/audit.h, linux/sched.h) ---
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_JEQ, BPF_JGE, BPF_JSET = 0x10, 0x30, 0x40

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)

# seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (little-endian on both arches)
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16

# Syscall numbers: x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h (no fork/vfork there).
_DENIED_NAMES = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd", "process_madvise", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
    "request_key", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "swapon", "swapoff", "reboot", "acct", "quotactl",
)  # fmt: skip

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "pidfd_getfd": 438, "process_madvise": 440, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179,
        "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    },
    "aarch64": {
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "pidfd_getfd": 438, "process_madvise": 440, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60,
        "clone": 220, "clone3": 435, "execve": 221, "execveat": 281,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}


@dataclass(frozen=True)
class SeccompPolicy:
    """What the filtered program may do beyond computing and file I/O.

    allow_fork: False -> clone without CLONE_THREAD, fork and vfork fail with EPERM (threads still work).
    allow_exec: False -> execve/execveat fail with EPERM (Node needs True: its filter is set before exec).
    """

    allow_fork: bool = False
    allow_exec: bool = False

    def describe(self) -> str:
        """One line for the result's ``sandbox`` field."""
        return (
            "on: no namespaces/mounts/ptrace/bpf/io_uring"
            + ("" if self.allow_fork else ", no fork")
            + ("" if self.allow_exec else ", no exec")
        )


def _arch() -> str | None:
    m = platform.machine().lower()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(m)


class _Program:
    """Classic BPF with symbolic jump targets, resolved into relative offsets (each < 256)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def stmt(self, code: int, k: int) -> None:
        self.code.append((code, 0, 0, k))

    def jump(self, op: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((BPF_JMP | op | BPF_K, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):
            offs = []
            for t in (jt, jf):
                off = t if isinstance(t, int) else self.labels[t] - i - 1
                if not 0 <= off < 256:
                    raise ValueError(f"seccomp: jump offset {off} out of range at instruction {i}")
                offs.append(off)
            out += struct.pack("=HBBI", code, offs[0], offs[1], k & 0xFFFFFFFF)
        return bytes(out)


def build_filter(policy: SeccompPolicy, arch: str | None = None) -> bytes:
    """The filter as packed ``struct sock_filter`` array (8 bytes per instruction). Raises OSError if the
    architecture has no table here."""
    arch = arch or _arch()
    if arch not in SYSCALLS:
        raise OSError(errno.ENOSYS, f"seccomp: no syscall table for architecture {platform.machine()!r}")
    nr = SYSCALLS[arch]
    p = _Program()
    p.stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_ARCH)
    p.jump(BPF_JEQ, _AUDIT_ARCH[arch], 0, "kill")
    p.stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_NR)
    if arch == "x86_64":
        # x32 ABI numbers have bit 30 set; -1 (0xffffffff, "no syscall" after a tracer) is left to the kernel.
        p.jump(BPF_JGE, X32_SYSCALL_BIT, 0, "not_x32")
        p.jump(BPF_JEQ, 0xFFFFFFFF, "not_x32", "kill")
        p.label("not_x32")
    for name in _DENIED_NAMES:
        p.jump(BPF_JEQ, nr[name], "eperm", 0)
    p.jump(BPF_JEQ, nr["clone3"], "enosys", 0)
    p.jump(BPF_JEQ, nr["clone"], "clone", 0)
    if not policy.allow_fork:
        for name in ("fork", "vfork"):
            if name in nr:
                p.jump(BPF_JEQ, nr[name], "eperm", 0)
    if not policy.allow_exec:
        for name in ("execve", "execveat"):
            p.jump(BPF_JEQ, nr[name], "eperm", 0)
    p.stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    p.label("clone")  # clone(flags, ...): flags in args[0] on x86_64 and aarch64; only the low 32 bits count
    p.stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_ARG0_LO)
    p.jump(BPF_JSET, CLONE_NAMESPACE_FLAGS, "eperm", 0)
    if not policy.allow_fork:
        p.jump(BPF_JSET, CLONE_THREAD, 0, "eperm")
    p.stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    p.label("eperm")
    p.stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    p.label("kill")
    p.stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)
    return p.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def install_seccomp(policy: SeccompPolicy) -> None:
    """Install the filter for the calling process (all its threads, via TSYNC) after setting NO_NEW_PRIVS.

    Irreversible. Call it in the confined child (forked child or preexec_fn), never in the parent.
    Raises OSError when it cannot be installed.
    """
    arch = _arch()
    code = build_filter(policy, arch)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    assert arch is not None  # build_filter raised otherwise
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    ret = syscall(
        ctypes.c_long(_SECCOMP_NR[arch]),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(prog),
    )
    if ret == 0:
        return
    e = ctypes.get_errno()
    if ret > 0:  # TSYNC: thread `ret` could not be synchronised; nothing was installed
        raise OSError(errno.EBUSY, f"seccomp: thread {ret} could not take the filter")
    if e not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(e, f"seccomp(SET_MODE_FILTER): {os.strerror(e)}")
    # Kernels without the seccomp syscall (or without TSYNC): the calling thread only.
    _check(
        _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )


_probe_lock = threading.Lock()
_probe_result: bool | None = None
_probe_reason = ""


def _probe_child() -> int:
    """In the forked child: install, check unshare(CLONE_NEWUSER) -> EPERM and that a thread still starts."""
    try:
        install_seccomp(SeccompPolicy(allow_fork=False, allow_exec=False))
    except OSError:
        return 2
    if _libc.unshare(CLONE_NEWUSER) == 0 or ctypes.get_errno() != errno.EPERM:
        return 3
    done = []
    t = threading.Thread(target=lambda: done.append(1))
    try:
        t.start()
        t.join(5)
    except RuntimeError:
        return 4
    return 0 if done else 4


def seccomp_available() -> bool:
    """True when the filter installs and works here (probed once in a forked child, cached)."""
    global _probe_result, _probe_reason
    with _probe_lock:
        if _probe_result is not None:
            return _probe_result
        if _arch() is None:
            _probe_result, _probe_reason = False, f"no syscall table for {platform.machine()!r}"
            return False
        code = probe_in_child(_probe_child)
        reasons = {
            2: "the filter could not be installed",
            3: "unshare(CLONE_NEWUSER) was not refused under the filter",
            4: "threads could not be created under the filter",
        }
        _probe_result = code == 0
        _probe_reason = "" if code == 0 else reasons.get(code, f"probe child ended with {code}")
        return _probe_result


def seccomp_unavailable_reason() -> str:
    """Why :func:`seccomp_available` is False ("" when it is True or not probed yet)."""
    return _probe_reason
