"""The generic sandbox primitives, checked against the kernel's own view (/proc/<pid>/limits, uids,
network interfaces, process tables) rather than against our own bookkeeping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits
from netprobe import listening_server

ROOT = sandbox.can_switch_user()
needs_root = pytest.mark.skipif(not ROOT, reason="uid switching needs root")
needs_netns = pytest.mark.skipif(
    not sandbox.network_isolation_available(), reason="no network namespaces here"
)


def _run_sh(script: str, limits: Limits, tmp: Path, uid: int | None = None) -> sandbox.ProcessOutcome:
    return sandbox.run_limited(
        ["/bin/sh", "-c", script], limits, cwd=tmp, env=sandbox.scrubbed_env(tmp), uid=uid
    )


def _limits_of(text: str) -> dict[str, str]:
    """Parse /proc/<pid>/limits into {'Max cpu time': '3', ...} (soft limits)."""
    out = {}
    for line in text.splitlines()[1:]:
        name = line[:26].strip()
        out[name] = line[26:].split()[0]
    return out


def test_scrubbed_env_carries_nothing_of_the_parent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    env = sandbox.scrubbed_env(tmp_path, {"NODE_OPTIONS": "--x"})
    assert "OPENAI_API_KEY" not in env
    assert set(env) == {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "NODE_OPTIONS"}
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)


def test_rlimits_as_the_kernel_reports_them(tmp_path: Path) -> None:
    limits = Limits(wall_s=10, cpu_s=3, memory_mb=700, file_mb=5, processes=33)
    out = _run_sh("cat /proc/self/limits", limits, tmp_path)
    assert out.returncode == 0, out.stderr
    got = _limits_of(out.stdout.decode())
    assert got["Max cpu time"] == "3"
    assert got["Max address space"] == str(700 * 1024 * 1024)
    assert got["Max file size"] == str(5 * 1024 * 1024)
    assert got["Max core file size"] == "0"
    assert got["Max processes"] == "33"


def test_private_tmpdir_is_owned_and_removed() -> None:
    uid = sandbox.sandbox_uid()
    with sandbox.private_tmpdir(owner_uid=uid) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f.txt").write_text("x")
        os.chmod(tmp / "sub", 0o500)  # a read-only directory left behind must not block removal
        if uid is not None:
            assert tmp.stat().st_uid == uid
        assert oct(tmp.stat().st_mode & 0o777) == "0o700"
    assert not tmp.exists()


def test_wall_clock_kill_takes_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    t0 = time.monotonic()
    out = _run_sh(f"(sleep 1.2; touch {marker}) & sleep 30", Limits(wall_s=0.5), tmp_path)
    assert out.timed_out and time.monotonic() - t0 < 1.2
    assert sandbox.classify_signal(out.returncode, Limits(), timed_out=out.timed_out) == "timeout"
    time.sleep(1.5)
    assert not marker.exists(), "a backgrounded grandchild survived the group kill"


def test_cpu_limit_is_a_timeout(tmp_path: Path) -> None:
    limits = Limits(wall_s=20, cpu_s=1)
    out = _run_sh("while :; do :; done", limits, tmp_path)
    assert not out.timed_out
    assert out.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert 0.5 <= out.cpu_s < 3.0  # the kernel samples CPU time per tick: a little under 1 s is normal
    assert sandbox.classify_signal(out.returncode, limits, cpu_s=out.cpu_s) == "timeout"


def test_classify_signal_table() -> None:
    lim = Limits(cpu_s=5)
    assert sandbox.classify_signal(0, lim) is None
    assert sandbox.classify_signal(1, lim) == "runtime"
    assert sandbox.classify_signal(-signal.SIGXCPU, lim) == "timeout"
    assert sandbox.classify_signal(-signal.SIGKILL, lim, cpu_s=5.0) == "timeout"
    # A SIGKILL is 'memory' only with evidence: the cgroup's OOM record or out-of-memory output.
    assert sandbox.classify_signal(-signal.SIGKILL, lim, cpu_s=0.2, oom_killed=True) == "memory"
    assert sandbox.classify_signal(-signal.SIGKILL, lim, cpu_s=0.2, stderr=b"MemoryError\n") == "memory"
    assert sandbox.classify_signal(-signal.SIGKILL, lim, cpu_s=0.2) == "runtime"
    assert sandbox.classify_signal(-signal.SIGKILL, lim, cpu_s=0.2, oom_killed=False) == "runtime"
    assert sandbox.classify_signal(-signal.SIGSEGV, lim) == "runtime"
    assert sandbox.classify_signal(0, lim, timed_out=True) == "timeout"
    assert sandbox.signal_name(-9) == "SIGKILL" and sandbox.signal_name(3) == "exit 3"


@needs_root
def test_runs_as_throwaway_uid_that_cannot_read_root_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_dir = Path(tempfile.mkdtemp(prefix="gen3deval-secret-"))
    try:
        (secret_dir / "key").write_text("TOPSECRET-FILE")
        os.chmod(secret_dir / "key", 0o600)
        monkeypatch.setenv("GEN3DEVAL_PARENT_SECRET", "TOPSECRET-ENV")
        uid = sandbox.sandbox_uid(slot=os.getpid() + 7)
        assert uid is not None
        with sandbox.private_tmpdir(owner_uid=uid) as tmp:
            script = (
                f"id -u; echo ok > mine.txt && cat mine.txt; cat {secret_dir}/key; "
                f"cat /proc/{os.getpid()}/environ; env; echo x > /root/gen3deval-should-not-exist"
            )
            out = _run_sh(script, Limits(wall_s=10), tmp, uid=uid)
        text = out.stdout.decode() + out.stderr.decode()
        assert out.stdout.decode().splitlines()[:2] == [str(uid), "ok"]
        assert "TOPSECRET" not in text
        assert "Permission denied" in out.stderr.decode()
        assert not Path("/root/gen3deval-should-not-exist").exists()
        assert sandbox.uid_processes(uid) == []
    finally:
        sandbox.remove_tree(secret_dir)


@needs_root
def test_fork_bomb_is_capped_and_swept(tmp_path: Path) -> None:
    uid = sandbox.sandbox_uid(slot=os.getpid() + 11)
    assert uid is not None
    with sandbox.private_tmpdir(owner_uid=uid) as tmp:
        # Each process spawns two more, forever; RLIMIT_NPROC (per uid) stops it at 20.
        bomb = "b() { b | b & }; b; sleep 5"
        t0 = time.monotonic()
        out = _run_sh(bomb, Limits(wall_s=2, processes=20), tmp, uid=uid)
        assert time.monotonic() - t0 < 10
    assert sandbox.uid_processes(uid) == [], "fork bomb processes survived"
    assert out.returncode != 0 or out.timed_out


@needs_root
def test_sweep_removes_files_a_uid_left_in_tmp(tmp_path: Path) -> None:
    uid = sandbox.sandbox_uid(slot=os.getpid() + 13)
    assert uid is not None
    stray = Path("/tmp") / f"gen3deval-stray-{os.getpid()}"
    with sandbox.private_tmpdir(owner_uid=uid) as tmp:
        out = _run_sh(f"echo x > {stray}; mkdir -p {stray}.d/a", Limits(wall_s=5), tmp, uid=uid)
        assert out.returncode == 0, out.stderr
        assert stray.exists()
        removed = sandbox.sweep_uid_files(uid, keep=[tmp])
        assert tmp.exists()
    assert str(stray) in removed and not stray.exists() and not Path(f"{stray}.d").exists()
    with pytest.raises(ValueError):
        sandbox.sweep_uid_files(0)
    with pytest.raises(ValueError):
        sandbox.kill_uid_processes(os.getuid() if os.getuid() < sandbox.SANDBOX_UID_BASE else 0)


@needs_netns
def test_network_namespace_blocks_a_real_local_server(tmp_path: Path) -> None:
    with listening_server() as (port, accepted):
        code = textwrap.dedent(
            f"""
            import socket, os
            print(sorted(n for _, n in socket.if_nameindex()))
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(('127.0.0.1', {port})); print('CONNECTED')
            except OSError as e:
                print('blocked', e.errno)
            """
        )
        out = sandbox.run_limited(
            [sys.executable, "-c", code], Limits(wall_s=15), cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}
        )
    text = out.stdout.decode()
    assert "CONNECTED" not in text and "blocked" in text, (text, out.stderr)
    assert text.splitlines()[0] == "['lo']"
    assert accepted == []
    # Control: the same probe with network allowed does connect (the test can fail).
    srv2 = socket.socket()
    srv2.bind(("127.0.0.1", 0))
    srv2.listen(1)
    code2 = f"import socket; socket.create_connection(('127.0.0.1', {srv2.getsockname()[1]}), 2); print('CONNECTED')"
    out2 = sandbox.run_limited(
        [sys.executable, "-c", code2],
        Limits(wall_s=15, network=True),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    srv2.close()
    assert b"CONNECTED" in out2.stdout


def test_audit_tripwire_in_a_fresh_interpreter(tmp_path: Path) -> None:
    # Hooks cannot be removed, so this runs in a child interpreter, never in the test process.
    allowed = tmp_path / "box"
    allowed.mkdir()
    outside = tmp_path / "outside.txt"
    code = textwrap.dedent(
        f"""
        import os, sys
        from gen3deval.execute import sandbox
        seen = []
        sandbox.install_audit_tripwire([{str(allowed)!r}], [], lambda ev, d: seen.append(ev))
        def attempt(label, fn):
            try:
                fn(); print(label, 'allowed')
            except PermissionError:
                print(label, 'blocked')
        os.chdir({str(allowed)!r})
        attempt('write-inside', lambda: open('in.txt', 'w').write('x'))
        attempt('read-inside', lambda: open('in.txt').read())
        attempt('write-outside', lambda: open({str(outside)!r}, 'w').write('x'))
        attempt('write-dotdot', lambda: open('../dotdot.txt', 'w').write('x'))
        attempt('read-passwd', lambda: open('/etc/passwd').read())
        attempt('system', lambda: os.system('true'))
        attempt('listdir-root', lambda: os.listdir('/'))
        attempt('symlink', lambda: os.symlink('/etc/passwd', 'p'))
        print('events', sorted(set(seen)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if not line.startswith("events"))
    assert lines == {
        "write-inside": "allowed",
        "read-inside": "allowed",
        "write-outside": "blocked",
        "write-dotdot": "blocked",
        "read-passwd": "blocked",
        "system": "blocked",
        "listdir-root": "blocked",
        "symlink": "blocked",
    }
    assert not outside.exists() and not (tmp_path / "dotdot.txt").exists()
    assert (allowed / "in.txt").read_text() == "x"


@needs_root
def test_private_mount_namespace_exposes_python_and_hides_tmp(tmp_path: Path) -> None:
    marker = f"/tmp/gen3deval-mntns-{os.getpid()}"
    uid = sandbox.SANDBOX_UID_BASE + os.getpid() + 17
    code = textwrap.dedent(
        f"""
        import os, sys
        from gen3deval.execute import sandbox
        info = sandbox.private_mount_namespace([sys.base_prefix])
        open({marker!r}, "w").write("x")
        print("tmp", sorted(os.listdir("/tmp")))
        sandbox.drop_privileges({uid})
        lib = os.path.dirname(os.__file__)
        print("stdlib-readable", os.access(os.path.join(lib, "os.py"), os.R_OK))
        print("exposed", info["exposed"][0] == os.path.realpath(sys.base_prefix))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"tmp ['{os.path.basename(marker)}']"  # a fresh, private /tmp
    assert lines[1:] == ["stdlib-readable True", "exposed True"]
    assert not Path(marker).exists()  # nothing written there reached the host


def test_remove_tree_survives_3000_nested_dirs(tmp_path: Path) -> None:
    # A program can leave a tree deeper than Python's recursion limit and longer than PATH_MAX;
    # the old recursive rmtree raised RecursionError / ENAMETOOLONG from the worker's cleanup.
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        os.mkdir("dd", dir_fd=fd)
        nfd = os.open("dd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("leaf.txt", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "w") as fh:
        fh.write("x")
    os.close(fd)
    (top / "dd" / "ro").mkdir()
    os.chmod(top / "dd", 0o500)
    sandbox.remove_tree(top)
    assert not top.exists() and list(tmp_path.iterdir()) == []


def test_self_sigkill_is_runtime_not_memory(tmp_path: Path) -> None:
    out = _run_sh("kill -9 $$", Limits(wall_s=5), tmp_path)
    assert out.returncode == -signal.SIGKILL and not out.oom_killed
    cls = sandbox.classify_signal(out.returncode, Limits(), cpu_s=out.cpu_s, oom_killed=out.oom_killed)
    assert cls == "runtime"


def test_isolation_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gen3deval.errors import ConfigError

    monkeypatch.delenv("GEN3DEVAL_SANDBOX", raising=False)
    assert sandbox.default_isolation() == sandbox.Isolation()
    monkeypatch.setenv("GEN3DEVAL_SANDBOX", "basic")
    assert sandbox.default_isolation() == sandbox.Isolation(filesystem=False, cgroup=False, seccomp=False)
    monkeypatch.setenv("GEN3DEVAL_SANDBOX", "paranoid")
    with pytest.raises(ConfigError, match=r"GEN3DEVAL_SANDBOX.*full, basic"):
        sandbox.default_isolation()


def test_sandbox_description_is_the_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN3DEVAL_SANDBOX", "basic")
    out = _run_sh('echo \'{"sandbox": {"network": "netns", "cgroup": "v2"}}\'', Limits(wall_s=5), tmp_path)
    assert out.sandbox["filesystem"] == "shared (turned off)"
    assert out.sandbox["cgroup"] == "not available (turned off): rlimits only"
    assert out.sandbox["seccomp"] == "off (turned off)" and out.sandbox["processes"] == "visible"


# Four forked children each touching 700 MiB, overlapping; prints their exit statuses.
_FORK_MEMORY = """
import json, os, time
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = b"\\1" * (700 << 20)
        time.sleep(1.5)
        os._exit(0 if len(block) else 1)
    kids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]))
"""


@pytest.mark.skipif(sandbox.cgroup_support() is None, reason="no per-program cgroup here")
def test_one_memory_budget_for_all_processes_of_a_program(tmp_path: Path) -> None:
    """4 x 700 MiB children of one program against a 1 GiB budget: per-process rlimits allow each of them,
    the program's cgroup does not allow them together (issue 9, item 3)."""
    import json

    limits = Limits(wall_s=20, cpu_s=20, memory_mb=1024, processes=16)

    def run(iso: sandbox.Isolation) -> sandbox.ProcessOutcome:
        return sandbox.run_limited(
            [sys.executable, "-c", _FORK_MEMORY],
            limits,
            cwd=tmp_path,
            env=sandbox.scrubbed_env(tmp_path),
            isolation=iso,
        )

    basic = run(sandbox.Isolation(filesystem=False, cgroup=False, seccomp=False))
    assert basic.returncode == 0 and json.loads(basic.stdout) == [0, 0, 0, 0], basic.stderr
    full = run(sandbox.Isolation(filesystem=False, cgroup=True, seccomp=False))
    assert full.oom_killed
    statuses = json.loads(full.stdout) if full.returncode == 0 else []
    assert full.returncode != 0 or statuses.count(-signal.SIGKILL) >= 1
    assert full.sandbox["cgroup"]["memory_mb"] == 1024
