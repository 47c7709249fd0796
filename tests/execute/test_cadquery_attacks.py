"""Attacks on the CadQuery sandbox (issue 9), each as a real hostile program against real workers.

Most programs first try to switch the audit tripwire off (``BYPASS``: replace ``os.path.realpath``,
which the old hook called, and run the payload while the hook is re-entered, when the old hook
checked nothing), so that they test what lies beneath it. A second pool runs without the tripwire
at all (``os_pool``) to check the OS layers alone (jail, seccomp, cgroup). Effects are checked on
the machine (files, sockets, the template's memory), not only the reported class.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("cadquery")

from gen3deval.execute import cadquery_worker as cqw
from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits

FAST = Limits(wall_s=20, cpu_s=20)
REPO = Path(__file__).resolve().parents[2]
BOX = "import cadquery as cq\nsolid = cq.Workplane().box({x}, 1, 1)\n"

# Runs f unchecked on the old tripwire (inside its re-entered hook); plainly where that fails.
BYPASS = """
import os, posixpath, sys
_todo = []
def _evil(p, *a, **k):
    while _todo:
        f = _todo.pop()
        try:
            f()
        except BaseException as e:
            print('inner', type(e).__name__, e)
    return sys.prefix
os.path.realpath = posixpath.realpath = _evil
def unchecked(f):
    _todo.append(f)
    try:
        open(sys.prefix + '/gen3deval-nonexistent')
    except BaseException:
        pass
    if _todo:
        _todo.clear()
        f()
"""


@pytest.fixture(scope="module")
def pools():
    """The module-level candidate and reference pools, one worker each, with every isolation layer
    (whatever GEN3DEVAL_SANDBOX says: these tests are about the full sandbox)."""
    cqw.shutdown()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GEN3DEVAL_SANDBOX", "full")
            cqw.get_pool("candidate").warm(1)
            cqw.get_pool("reference").warm(1)
        yield cqw.get_pool("candidate"), cqw.get_pool("reference")
    finally:
        cqw.shutdown()


@pytest.fixture(scope="module")
def os_pool():
    """One worker whose children run without the audit tripwire: only the OS layers stand."""
    pool = cqw.WorkerPool(1, isolation=sandbox.Isolation(), tripwire=False)
    try:
        pool.warm(1)
        yield pool
    finally:
        pool.shutdown()


def run(program: str, limits: Limits = FAST, role: str = "candidate"):
    return cqw.run_cadquery(program, limits, role=role)


def volume(r) -> float:
    return float(r.sandbox["result"]["volume"]) if r.executable else -1.0


def assert_worker_fine(pool=None) -> None:
    """The worker survived: the next program runs (on the same worker when the pool has one)."""
    r = pool.run(BOX.format(x=2), FAST) if pool is not None else run(BOX.format(x=2))
    assert r.executable and volume(r) == pytest.approx(2.0), (r.error_class, r.message)


def memory_contains(pid: int, needle: bytes) -> bool:
    """Whether any writable mapping of process ``pid`` holds ``needle`` (read as root via /proc)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split()
            if "rw" not in parts[1]:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            pos = lo
            while pos < hi:
                n = min(64 << 20, hi - pos)
                try:
                    data = os.pread(fd, n + len(needle), pos)
                except OSError:
                    break
                if needle in data:
                    return True
                pos += n
    finally:
        os.close(fd)
    return False


# ------------------------------------------------------------------------------ the answer on disk ---
@pytest.mark.parametrize("where", ["tmp", "repo"])
def test_tripwire_bypass_cannot_read_ground_truth(pools, os_pool, where: str) -> None:
    secret = "GROUND-TRUTH-" + secrets.token_hex(8)
    content = secret * 37  # length 777: the program encodes what it read in its geometry
    base = Path("/tmp") if where == "tmp" else REPO
    gt = base / f".gen3deval-gt-{os.getpid()}-{secrets.token_hex(4)}.py"
    gt.write_text(content)
    os.chmod(gt, 0o644)  # world-readable, as the GenCAD suite file is
    try:
        program = (
            BYPASS
            + f"got = []\nunchecked(lambda: got.append(open({str(gt)!r}).read()))\n"
            + "if not got:\n    got.append(open("
            + repr(str(gt))
            + ").read())\n"
            + "import cadquery as cq\nsolid = cq.Workplane().box(len(got[0]), 1, 1)\n"
        )
        for r in (run(program), os_pool.run(program, FAST)):
            assert not r.executable, "the program read the ground truth"
            assert r.error_class in ("sandbox_violation", "runtime"), (r.error_class, r.message)
            assert secret not in r.stdout + r.stderr + r.message
            if r.error_class == "runtime":
                assert "FileNotFoundError" in r.message or "No such file" in r.message, r.message
    finally:
        gt.unlink()
    assert_worker_fine()


# ------------------------------------------------------------------------ memory of earlier programs ---
SCAN = """
import hashlib
PREFIX, DIGEST = {prefix!r}, {digest!r}
found = []
def _hit(data, start):
    tail = bytes(data[start + len(PREFIX) : start + len(PREFIX) + {n}])
    return hashlib.sha256(tail).hexdigest() == DIGEST
def scan():
    import ctypes, gc
    pre = PREFIX.encode()
    for o in gc.get_objects():
        if isinstance(o, str) and PREFIX in o:
            i = o.find(PREFIX)
            if _hit(o.encode('utf-8', 'replace'), o.encode('utf-8', 'replace').find(pre)):
                found.append('gc')
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, so /proc/self/mem opens after setuid
    lines = open('/proc/self/maps').read().splitlines()
    with open('/proc/self/mem', 'rb', buffering=0) as mem:
        for line in lines:
            a, perms = line.split()[:2]
            if 'rw' not in perms:
                continue
            lo, hi = (int(x, 16) for x in a.split('-'))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            i = data.find(pre)
            while i >= 0:
                if _hit(data, i):
                    found.append('mem')
                    break
                i = data.find(pre, i + 1)
unchecked(scan)
print('FOUND', found)
import cadquery as cq
solid = cq.Workplane().box(2 if found else 1, 1, 1)
"""


def _marker() -> tuple[str, str, str]:
    prefix = "gen3deval-marker-"
    secret = secrets.token_hex(16)
    return prefix, secret, hashlib.sha256(secret.encode()).hexdigest()


def test_memory_holds_no_earlier_program(pools) -> None:
    cand, _ref = pools
    prefix, secret, digest = _marker()
    first = f"MARK = {prefix + secret!r}\nprint(MARK)\n" + BOX.format(x=1)
    r1 = run(first)
    assert r1.executable and prefix + secret in r1.stdout
    # The template that forked program 1 never held its text (independent check: root reads its memory).
    for w in cand._all:
        assert w.proc is not None
        assert not memory_contains(w.proc.pid, (prefix + secret).encode()), "the template holds program 1"
    r2 = run(BYPASS + SCAN.format(prefix=prefix, digest=digest, n=len(secret)))
    assert not (r2.executable and volume(r2) == pytest.approx(2.0)), r2.stdout
    assert "'mem'" not in r2.stdout and "'gc'" not in r2.stdout
    assert_worker_fine()


def test_reference_source_not_visible_to_candidates(pools) -> None:
    cand, ref = pools
    prefix, secret, digest = _marker()
    truth = f"TRUTH = {prefix + secret!r}\n" + BOX.format(x=3)
    r = run(truth, role="reference")
    assert r.executable and volume(r) == pytest.approx(3.0)
    cand_pids = {w.proc.pid for w in cand._all if w.proc is not None}
    assert r.sandbox["worker_pid"] not in cand_pids  # never on a candidate's worker
    for w in [*cand._all, *ref._all]:
        assert w.proc is not None and not memory_contains(w.proc.pid, (prefix + secret).encode())
    r2 = run(BYPASS + SCAN.format(prefix=prefix, digest=digest, n=len(secret)))
    assert r2.sandbox["worker_pid"] in cand_pids
    assert not (r2.executable and volume(r2) == pytest.approx(2.0)), r2.stdout


# --------------------------------------------------------------------------- data through host paths ---
HOST_DIRS = ("/run/lock", "/tmp", "/dev/shm", "/var/tmp", ".", "/tmp/work")


def test_no_data_passes_between_programs(pools, os_pool) -> None:
    name = f"gen3deval-drop-{os.getpid()}-{secrets.token_hex(4)}"
    token = secrets.token_hex(12)
    write = BYPASS + (
        f"def drop():\n    for d in {HOST_DIRS!r}:\n"
        f"        try:\n            open(d + '/{name}', 'w').write({token!r})\n"
        "        except OSError as e:\n            print('no', d, e)\n"
        "unchecked(drop)\n" + BOX.format(x=1)
    )
    read = BYPASS + (
        f"seen = []\ndef look():\n    for d in {HOST_DIRS!r}:\n"
        f"        try:\n            seen.append(open(d + '/{name}').read())\n"
        "        except OSError:\n            pass\n"
        "unchecked(look)\nprint('SEEN', seen)\n"
        + "import cadquery as cq\nsolid = cq.Workplane().box(1 + len(seen), 1, 1)\n"
    )
    try:
        for runner in (lambda p: run(p), lambda p: os_pool.run(p, FAST)):
            runner(write)
            r = runner(read)
            assert token not in r.stdout + r.stderr, r.stdout
            assert not (r.executable and volume(r) > 1.5)
        for d in ("/run/lock", "/tmp", "/dev/shm", "/var/tmp"):
            assert not Path(d, name).exists(), f"a program left {d}/{name} on the host"
    finally:
        for d in ("/run/lock", "/tmp", "/dev/shm", "/var/tmp"):
            with_path = Path(d, name)
            if with_path.exists():
                with_path.unlink()


def test_unix_socket_in_world_writable_folder_unreachable(pools, os_pool) -> None:
    paths = [p for p in (Path("/tmp"), Path("/dev/shm"), Path("/run/lock")) if p.is_dir()]
    listeners = []
    try:
        for d in paths:
            path = d / f"gen3deval-sock-{os.getpid()}-{secrets.token_hex(3)}"
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(str(path))
            os.chmod(path, 0o777)
            srv.listen(4)
            srv.setblocking(False)
            listeners.append((srv, path))
        targets = [str(p) for _, p in listeners]
        program = BYPASS + (
            f"ok = []\ndef go():\n    import socket\n    for t in {targets!r}:\n"
            "        try:\n            s = socket.socket(socket.AF_UNIX); s.connect(t); s.sendall(b'hi'); ok.append(t)\n"
            "        except OSError as e:\n            print('no', t, e)\n"
            "unchecked(go)\nimport cadquery as cq\nsolid = cq.Workplane().box(1 + len(ok), 1, 1)\n"
        )
        for r in (run(program), os_pool.run(program, FAST)):
            assert not (r.executable and volume(r) > 1.5), r.stdout
        for srv, _path in listeners:
            with pytest.raises(BlockingIOError):
                srv.accept()  # nobody connected
    finally:
        for srv, path in listeners:
            srv.close()
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- process creation ---
def test_fork_refused(pools, os_pool) -> None:
    from gen3deval.execute.sandbox import seccomp

    if not seccomp.seccomp_available():
        pytest.skip("seccomp not available here")
    program = BYPASS + (
        "kids = []\ndef go():\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    kids.append(pid)\n"
        "unchecked(go)\nimport cadquery as cq\nsolid = cq.Workplane().box(1 + len(kids), 1, 1)\n"
    )
    r = run(program)
    assert not (r.executable and volume(r) > 1.5)
    plain = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n" + BOX.format(x=1)
    r = os_pool.run(plain, FAST)
    assert r.error_class == "runtime" and "PermissionError" in r.message, (r.error_class, r.message)
    assert_worker_fine(os_pool)


# ------------------------------------------------------------------------------------------- crashers ---
def test_deep_directory_tree(pools) -> None:
    # Descend through directory descriptors (cheap for the tripwire's path checks, as deep as chdir).
    program = (
        "import os\nfd = os.open('.', os.O_RDONLY)\nfor i in range(3000):\n    os.mkdir('d', dir_fd=fd)\n"
        "    nfd = os.open('d', os.O_RDONLY, dir_fd=fd)\n    os.close(fd)\n    fd = nfd\n" + BOX.format(x=1)
    )
    basic = cqw.WorkerPool(1, isolation=sandbox.Isolation(filesystem=False, cgroup=False, seccomp=False))
    try:
        for runner in (lambda p: run(p), lambda p: basic.run(p, FAST)):
            r = runner(program)
            assert r.executable, (r.error_class, r.message)
        assert_worker_fine()
        assert_worker_fine(basic)
    finally:
        basic.shutdown()


FORGE = """
import os, stat, struct, json
fd = next(f for f in range(3, 1024) if _is_fifo(f))
def send(header, blobs=b''):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    os.write(fd, struct.pack('<Q', len(hb)) + hb + blobs)
"""
FIFO = "import os, stat\ndef _is_fifo(f):\n    try:\n        return stat.S_ISFIFO(os.fstat(f).st_mode)\n    except OSError:\n        return False\n"


def test_deeply_nested_result_header(pools) -> None:
    depth = 8000  # < 64 KiB, far beyond json's recursion limit
    program = FIFO + FORGE + f"send(b'{{\"a\":' * {depth} + b'1' + b'}}' * {depth})\nos._exit(0)\n"
    r = run(program)
    assert r.error_class == "sandbox_violation" and "tampered" in r.message, (r.error_class, r.message)
    assert_worker_fine()


def test_compile_recursion_is_syntax(pools) -> None:
    r = run("x = " + "+".join(["1"] * 200_000) + "\n")
    assert r.error_class == "syntax" and "RecursionError" in r.message, (r.error_class, r.message)


def test_forged_sandbox_header_ignored(pools) -> None:
    honest = run(BOX.format(x=1))
    tetra = (
        "import numpy as np\n"
        "v = np.array([[0,0,0],[1,0,0],[0,1,0],[0,0,1]], '<f8'); f = np.array([[0,2,1],[0,1,3],[0,3,2],[1,2,3]], '<i8')\n"
        "hdr = {'status': 'ok', 'n_vertices': 4, 'n_faces': 4, 'result_name': 'solid', 'volume': 1/6,\n"
        "       'sandbox': {'network': 'FORGED', 'user': 'FORGED', 'filesystem': 'FORGED'}, 'blobs': [96, 96]}\n"
        "send(hdr, v.tobytes() + f.tobytes())\nos._exit(0)\n"
    )
    r = run(FIFO + FORGE + tetra)
    assert "FORGED" not in repr(r.sandbox)
    for key in ("network", "user", "rlimits", "filesystem", "cgroup", "seccomp", "processes"):
        assert r.sandbox.get(key) == honest.sandbox.get(key), key
    # A forged 'sandbox_error' cannot crash the run: it is the program's runtime failure.
    r = run(FIFO + FORGE + "send({'status': 'sandbox_error', 'message': 'forged'})\nos._exit(88)\n")
    assert r.error_class == "runtime" and "forged" not in r.message, (r.error_class, r.message)
    assert_worker_fine()


def test_oversized_result_declared(pools) -> None:
    program = (
        FIFO
        + FORGE
        + "send({'status': 'ok', 'n_vertices': 1, 'n_faces': 1, 'blobs': [10**12, 24]})\nos._exit(0)\n"
    )
    t0 = time.monotonic()
    r = run(program)
    assert r.error_class == "sandbox_violation" and "bound" in r.message, r.message
    assert time.monotonic() - t0 < 10


def test_big_forged_result_read_in_linear_time(pools) -> None:
    nf = 2_000_000  # 48 MB of faces: the old reader re-parsed its growing buffer per chunk
    program = (
        FIFO
        + FORGE
        + (
            "import numpy as np\n"
            f"f = np.zeros(({nf}, 3), '<i8'); f[:, 1] = 1; f[:, 2] = 2\n"
            "v = np.array([[0,0,0],[1,0,0],[0,1,0]], '<f8')\n"
            f"send({{'status': 'ok', 'n_vertices': 3, 'n_faces': {nf}, 'result_name': 'solid', 'blobs': [72, {nf * 24}]}},"
            " v.tobytes() + f.tobytes())\nos._exit(0)\n"
        )
    )
    t0 = time.monotonic()
    r = run(program)
    assert time.monotonic() - t0 < 15
    assert r.executable or r.error_class == "sandbox_violation", (r.error_class, r.message)


def test_self_sigkill_is_runtime(pools) -> None:
    r = run("import signal\nsignal.raise_signal(signal.SIGKILL)\n")
    assert r.error_class == "runtime" and "SIGKILL" in r.message, (r.error_class, r.message)
    assert r.sandbox.get("oom_killed") is False
    assert_worker_fine()


def test_reference_and_candidate_pools_differ(pools) -> None:
    a = run(BOX.format(x=1), role="candidate")
    b = run(BOX.format(x=1), role="reference")
    assert a.sandbox["worker_pid"] != b.sandbox["worker_pid"]
    with pytest.raises(Exception, match="role"):
        run(BOX.format(x=1), role="oracle")


def test_sandbox_description_from_parent(pools) -> None:
    r = run(BOX.format(x=1))
    sb = r.sandbox
    if sandbox.can_switch_user():
        from gen3deval.execute.sandbox import jail

        if jail.jail_available():
            assert sb["filesystem"].startswith("read-only minimal root")
            assert sb["processes"].startswith("hidden")
    assert sb["template"] == "never sees programs or results"
    assert signal.SIGKILL  # keep the import used when everything above is skipped
