"""The filesystem jail (issue 9): checked against the kernel, by running real programs inside it.

A jailed program sees a read-only minimal root: no project, no shared data, no run folder, no host
/tmp or /run/lock (so no unix sockets there), no other users' processes; it writes only to its own
size-capped tmpfs, and nothing it writes survives it.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits
from gen3deval.execute.sandbox import jail

pytestmark = pytest.mark.skipif(
    not sandbox.jail_available(), reason=f"no filesystem jail here: {jail.jail_unavailable_reason()}"
)
REPO = Path(__file__).resolve().parents[2]
FULL = sandbox.Isolation()


def _uid(k: int) -> int:
    uid = sandbox.sandbox_uid(slot=os.getpid() + 100 + k)
    assert uid is not None
    return uid


def _sh(script: str, tmp: Path, *, work_mb: int = 16, k: int = 0) -> sandbox.ProcessOutcome:
    spec = sandbox.JailSpec(sandbox.system_ro_paths(), work_mb=work_mb)
    return sandbox.run_limited(
        ["/bin/sh", "-c", script], Limits(wall_s=20), cwd=tmp, env=sandbox.scrubbed_env(tmp),
        uid=_uid(k), jail=spec, isolation=FULL,
    )  # fmt: skip


def _py(
    code: str, tmp: Path, *, work_mb: int = 16, k: int = 1, iso: sandbox.Isolation = FULL, root: bool = False
) -> sandbox.ProcessOutcome:
    spec = sandbox.JailSpec(sandbox.system_ro_paths() + sandbox.python_ro_paths(), work_mb=work_mb)
    return sandbox.run_limited(
        [sys.executable, "-I", "-c", textwrap.dedent(code)], Limits(wall_s=30), cwd=tmp,
        env=sandbox.scrubbed_env(tmp), uid=None if root else _uid(k), jail=spec, isolation=iso,
    )  # fmt: skip


@pytest.fixture
def truths(tmp_path: Path) -> Iterator[list[Path]]:
    """'Ground truth' files: in host /tmp, in the repository and in the run folder (world-readable)."""
    files = [Path(tempfile.mkstemp(prefix="gen3deval-truth-")[1]), REPO / f".truth-{os.getpid()}.txt"]
    files.append(tmp_path / "run" / "truth.txt")
    files[-1].parent.mkdir()
    for f in files:
        f.write_text("GROUND-TRUTH")
        os.chmod(f, 0o644)
    yield files
    for f in files:
        f.unlink(missing_ok=True)


def test_host_paths_are_invisible(tmp_path: Path, truths: list[Path]) -> None:
    paths = ["/work", "/work/shared", str(REPO), "/root", "/home", "/run", "/var", "/dev/shm", str(tmp_path)]
    paths += [str(t) for t in truths]
    script = f"ls / | tr '\\n' ' '; echo; for p in {' '.join(paths)}; do [ -e $p ] && echo SEEN $p; done; "
    script += "cat " + " ".join(map(str, truths)) + " 2>/dev/null; true"
    out = _sh(script, tmp_path)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert "SEEN" not in text and "GROUND-TRUTH" not in text, text
    assert set(text.splitlines()[0].split()) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32",
                                                 "proc", "sbin", "tmp", "usr"}  # fmt: skip
    # Control (the test can fail): the same probe without the jail sees the truth files.
    base = sandbox.run_limited(
        ["/bin/sh", "-c", f"cat {truths[0]}"], Limits(wall_s=10), cwd=tmp_path, env={}, uid=_uid(9),
        isolation=sandbox.Isolation(filesystem=False),
    )  # fmt: skip
    assert b"GROUND-TRUTH" in base.stdout


def test_python_sees_its_prefix_but_not_the_truth(tmp_path: Path, truths: list[Path]) -> None:
    code = f"""
        import os, sys, json
        seen = [p for p in {[str(t) for t in truths] + ["/work/shared", str(REPO / "src"), str(REPO / "tests")]!r}
                if os.path.exists(p)]
        print(json.dumps({{"seen": seen, "cwd": os.getcwd(), "home": os.environ["HOME"], "uid": os.getuid()}}))
        """
    out = _py(code, tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads(out.stdout)
    assert got == {"seen": [], "cwd": sandbox.WORK_DIR, "home": sandbox.WORK_DIR, "uid": _uid(1)}
    assert out.sandbox["filesystem"].startswith("read-only minimal root")


def test_writes_only_to_private_tmpfs_and_nothing_survives(tmp_path: Path) -> None:
    marker = f"gen3deval-jail-{os.getpid()}"
    targets = [
        f"/{marker}",
        f"/usr/{marker}",
        f"/etc/{marker}",
        f"/dev/{marker}",
        f"/proc/{marker}",
        f"/bin/{marker}",
    ]
    script = "".join(f"echo x > {t} 2>/dev/null && echo WROTE {t}; " for t in targets)
    script += f"echo x > {sandbox.WORK_DIR}/{marker} && echo x > /tmp/{marker} && echo OK"
    out = _sh(script, tmp_path)
    assert out.stdout.decode().split() == ["OK"], out.stdout
    assert not Path(f"/tmp/{marker}").exists() and not Path(f"/{marker}").exists()
    # A second program does not see what the first one wrote.
    again = _sh(f"ls -A {sandbox.WORK_DIR} /tmp", tmp_path)
    assert marker not in again.stdout.decode(), again.stdout


def test_unix_sockets_of_the_host_are_unreachable(tmp_path: Path) -> None:
    dirs = [d for d in ("/tmp", "/run/lock") if os.path.isdir(d)]
    servers, paths = [], []
    for d in dirs:
        p = os.path.join(d, f"gen3deval-sock-{os.getpid()}")
        s = socket.socket(socket.AF_UNIX)
        s.bind(p)
        os.chmod(p, 0o777)
        s.listen(4)
        s.setblocking(False)
        servers.append(s)
        paths.append(p)
    code = f"""
        import socket
        for p in {paths!r}:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(p); print("CONNECTED", p)
            except OSError as e:
                print("refused", e.errno)
        """
    try:
        out = _py(code, tmp_path)
        # As root: the sandbox uid cannot even start this Python outside the jail (/root is 0700).
        control = _py(code, tmp_path, iso=sandbox.Isolation(filesystem=False), root=True)
        accepted = 0
        for s in servers:
            try:
                while True:
                    s.accept()[0].close()
                    accepted += 1
            except BlockingIOError:
                pass
    finally:
        for s, p in zip(servers, paths, strict=True):
            s.close()
            os.unlink(p)
    assert out.returncode == 0, out.stderr
    assert b"CONNECTED" not in out.stdout and out.stdout.count(b"refused") == len(paths)
    # Control: without the jail the same program reaches every listener (the test can fail).
    assert control.stdout.count(b"CONNECTED") == len(paths) and accepted == len(paths)


def test_other_processes_are_invisible(tmp_path: Path) -> None:
    me = os.getpid()
    out = _sh(f"[ -e /proc/{me} ] && echo SEEN; ls /proc | grep -c '^[0-9]'; echo $$", tmp_path)
    lines = out.stdout.decode().split()
    assert "SEEN" not in lines, lines
    assert int(lines[0]) <= 5  # the shell and its ls/grep/children only, not the host's processes


def test_work_quota_holds_for_all_files_together(tmp_path: Path) -> None:
    code = """
        import errno, os
        written, err = 0, None
        try:
            for i in range(20000):
                with open(f"f{i}", "wb") as fh:
                    fh.write(b"x" * 8192)
                written += 8192
        except OSError as e:
            err = e.errno
        print(written, err)
        """
    out = _py(code, tmp_path, work_mb=4)
    assert out.returncode == 0, out.stderr
    written, err = out.stdout.split()
    assert int(err) == errno.ENOSPC
    assert 2 * 2**20 < int(written) <= 4 * 2**20  # many small files, one 4 MiB quota


def test_node_starts_inside_the_jail(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    spec = sandbox.JailSpec(sandbox.system_ro_paths() + sandbox.node_ro_paths(node))
    out = sandbox.run_limited(
        [node, "-e", "console.log(6 * 7, require('fs').readdirSync('/').sort().join(','))"],
        Limits(wall_s=30, memory_mb=4096), cwd=tmp_path, env=sandbox.scrubbed_env(tmp_path), uid=_uid(3),
        address_space=False, jail=spec, isolation=FULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answer, listing = out.stdout.decode().split()
    assert answer == "42" and "work" not in listing.split(",")


def test_enter_jail_is_cheap() -> None:
    """enter_jail runs once per program: a few ms (measured in a forked child)."""
    spec = sandbox.JailSpec(sandbox.system_ro_paths() + sandbox.python_ro_paths())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            t0 = time.perf_counter()
            jail.enter_jail(spec, owner_uid=_uid(4))
            os.write(w, f"{time.perf_counter() - t0:.6f}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    took = float(os.read(r, 64) or b"nan")
    os.close(r)
    os.waitpid(pid, 0)
    assert took < 0.05, took


def test_bad_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sandbox.SandboxSetupError, match="'/' cannot be a read-only path"):
        sandbox.run_limited(
            ["/bin/true"], Limits(wall_s=5), cwd=tmp_path, env={}, uid=_uid(5),
            jail=sandbox.JailSpec(("/",)), isolation=FULL,
        )  # fmt: skip
