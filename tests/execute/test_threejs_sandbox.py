"""Hostile Three.js programs: each is contained, gets its own error class, and leaves nothing behind.

Two layers are tested. Programs run through the real executor (vm context, the scaffold). And
``run_node_script`` runs plain Node code (full ``process`` and ``require``) under the very same sandbox:
what a program that escaped the vm would face. The boundary must hold there too.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen3deval.errors import DependencyError
from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits
from netprobe import listening_server

threejs = pytest.importorskip("gen3deval.execute.threejs")

SECRET = "gen3deval-test-secret-4f1c9a"
FAST = Limits(wall_s=2.0, cpu_s=2.0, memory_mb=2048)
BOX = "return new THREE.Mesh(new THREE.BoxGeometry());"


@pytest.fixture(scope="module", autouse=True)
def _runtime() -> None:
    try:
        threejs.runtime().snapshot(threejs._heap_mb(FAST))
    except DependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _secret_in_parent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN3DEVAL_TEST_SECRET", SECRET)


def _stray_processes() -> list[str]:
    """Live processes that belong to this test process's sandbox uids, or node children of it."""
    base = sandbox.SANDBOX_UID_BASE + (1 << 22) + ((os.getpid() << 6) % (1 << 30))
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry.name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        ppid = int(fields.get("PPid", "0").strip() or 0)
        name = fields.get("Name", "").strip()
        if base <= uid < base + 64 or (ppid == os.getpid() and name == "node"):
            found.append(f"pid {entry.name} {name} uid {uid} state {fields.get('State', '').strip()}")
    return found


@pytest.fixture(autouse=True)
def _no_stray_process_afterwards() -> Iterator[None]:
    yield
    assert _stray_processes() == []


def run(program: str, limits: Limits = FAST):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    r = threejs.run_threejs(program, limits)
    elapsed = time.monotonic() - t0
    assert not r.executable and r.mesh is None
    # Whatever the program did, the secret never comes back.
    for text in (r.message, r.stdout, r.stderr, json.dumps(r.sandbox)):
        assert SECRET not in text
    return r, elapsed


LOOPS = {
    "sync-loop-in-createObject": "function createObject(THREE) { while (true) {} }",
    "sync-loop-at-top-level": "while (true) {}",
    "async-loop": f"(async () => {{ while (true) {{ await null; }} }})();\nfunction createObject(THREE) {{ {BOX} }}",
    "promise-chain": f"function f() {{ return Promise.resolve().then(f); }}\nf();\nfunction createObject(THREE) {{ {BOX} }}",
    "async-createObject-loop": "async function createObject(THREE) { for (;;) { await new Promise((r) => r()); } }",
}


@pytest.fixture(scope="module")
def loop_results() -> dict[str, object]:
    # All at once (they only burn CPU until killed), so the five timeouts cost one.
    names = list(LOOPS)
    out = threejs.run_threejs_many([LOOPS[n] for n in names], FAST, jobs=len(names))
    return dict(zip(names, out, strict=True))


@pytest.mark.parametrize("name", list(LOOPS))
def test_infinite_loops_time_out(loop_results: dict[str, object], name: str) -> None:
    r = loop_results[name]
    assert not r.executable and r.error_class == "timeout", r.message  # type: ignore[attr-defined]
    assert r.wall_s < FAST.wall_s + 1.5  # type: ignore[attr-defined]


def test_memory_bomb_is_a_memory_failure() -> None:
    prog = "function createObject(THREE) { const a = []; for (;;) a.push(new Array(1e6).fill(1.5)); }"
    r, _ = run(prog, Limits(wall_s=20.0, cpu_s=20.0, memory_mb=1024))
    assert r.error_class == "memory", r.message
    assert r.peak_mb < 1024


def test_array_buffer_bomb_is_a_memory_failure() -> None:
    r, _ = run("function createObject(THREE) { const a = []; for (;;) a.push(new Float64Array(1e8)); }")
    assert r.error_class == "memory", r.message


def test_writing_a_file_is_a_violation(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)  # even a world-writable place stays out of reach
    r, _ = run(
        f"require('fs').writeFileSync({json.dumps(str(target))}, 'x');\nfunction createObject(THREE) {{ {BOX} }}"
    )
    assert r.error_class == "sandbox_violation"
    assert not target.exists()


@pytest.mark.parametrize(
    "program",
    [
        pytest.param("function createObject(THREE) { return process.binding('fs'); }", id="process.binding"),
        pytest.param(
            "function createObject(THREE) { return JSON.stringify(process.env); }", id="process.env"
        ),
        pytest.param("const cp = require('child_process'); cp.execSync('touch /tmp/x');", id="child_process"),
        pytest.param("import net from 'net';\nnet.connect(80, '127.0.0.1');", id="import-net"),
        pytest.param(
            "function createObject(THREE) { return require('node:fs').readFileSync('/etc/passwd', 'utf8'); }",
            id="read-passwd",
        ),
    ],
)
def test_reaching_for_the_host_is_a_violation(program: str) -> None:
    r, _ = run(program)
    assert r.error_class == "sandbox_violation", r.message
    assert "root:x:0" not in r.message + r.stdout


@pytest.mark.parametrize(
    "program",
    [
        "const p = THREE.Mesh.constructor.constructor('return process')();\nfunction createObject(THREE) { return p.env; }",
        "function createObject(THREE) {\n  const p = THREE.Mesh.constructor.constructor('return process')();\n"
        "  console.log(JSON.stringify(p.env));\n  p.mainModule.require('fs').writeFileSync('/tmp/gen3deval-escape', 'x');\n}",
        "function createObject(THREE) {\n  try { throw null; } catch (e) {}\n"
        "  const F = new THREE.Vector3().constructor.constructor;\n  return F('return globalThis.process')().env;\n}",
    ],
    ids=["constructor-escape-top", "constructor-escape-fs", "constructor-escape-vector"],
)
def test_vm_escape_is_refused_and_reported(program: str) -> None:
    r, _ = run(program)
    assert r.error_class == "sandbox_violation", r.message
    assert "vm context" in r.message
    assert not Path("/tmp/gen3deval-escape").exists()


# --- the boundary behind the vm: plain Node under the same sandbox -----------------------------------


def probe(script: str, limits: Limits = FAST) -> dict[str, str]:
    outcome = threejs.run_node_script(script, limits)
    assert outcome.returncode == 0, outcome.stderr.decode()[-2000:]
    text = outcome.stdout.decode()
    assert SECRET not in text + outcome.stderr.decode()
    return json.loads(text)


TRY = """
const out = {};
const attempt = (k, f) => { try { out[k] = String(f()).slice(0, 200); } catch (e) { out[k] = 'DENIED ' + (e.code || e.name); } };
"""


def test_escaped_code_cannot_touch_files_processes_or_env(tmp_path: Path) -> None:
    target = tmp_path / "w.txt"
    os.chmod(tmp_path, 0o777)
    res = probe(
        TRY
        + f"""
attempt('env', () => JSON.stringify(process.env));
attempt('passwd', () => require('fs').readFileSync('/etc/passwd', 'utf8'));
attempt('parent_environ', () => require('fs').readFileSync('/proc/' + process.ppid + '/environ', 'utf8'));
attempt('write', () => require('fs').writeFileSync({json.dumps(str(target))}, 'x'));
attempt('spawn', () => require('child_process').execSync('id'));
attempt('worker', () => new (require('worker_threads').Worker)('1', {{ eval: true }}));
attempt('binding', () => process.binding('fs'));
attempt('uid', () => process.getuid());
process.stdout.write(JSON.stringify(out));
"""
    )
    assert "GEN3DEVAL_TEST_SECRET" not in res["env"]
    assert set(json.loads(res["env"])) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR"}
    for key in ("passwd", "parent_environ", "write", "spawn", "worker", "binding"):
        assert res[key] == "DENIED ERR_ACCESS_DENIED", (key, res[key])
    assert not target.exists()
    if sandbox.can_switch_user():
        assert int(res["uid"]) >= sandbox.SANDBOX_UID_BASE


@pytest.fixture
def server() -> Iterator[tuple[int, list[object]]]:
    with listening_server() as port_and_accepted:
        yield port_and_accepted


def test_escaped_code_gets_no_network(server: tuple[int, list[object]]) -> None:
    if not sandbox.network_isolation_available():
        pytest.skip("network namespaces are not permitted here: sandbox['network'] says 'not isolated'")
    port, accepted = server
    # Sanity: the server does accept connections from outside the sandbox.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    time.sleep(0.3)
    assert len(accepted) == 1
    res = probe(
        f"""
const net = require('net');
const s = net.connect({port}, '127.0.0.1');
const done = (v) => {{ process.stdout.write(JSON.stringify({{ net: v }})); process.exit(0); }};
s.on('connect', () => done('CONNECTED'));
s.on('error', (e) => done('ERROR ' + e.code));
setTimeout(() => done('TIMEOUT'), 1500);
"""
    )
    assert res["net"] != "CONNECTED"
    time.sleep(0.3)
    assert len(accepted) == 1  # nothing new arrived from the sandbox


def test_program_sandbox_description() -> None:
    r = threejs.run_threejs(
        "function createObject(THREE) { return new THREE.Mesh(new THREE.BoxGeometry()); }", FAST
    )
    assert r.executable
    sb = r.sandbox
    assert sb["network"] == ("netns" if sandbox.network_isolation_available() else "not isolated")
    assert sb["startup"] == "snapshot"
    assert "no fs-write" in sb["node_permissions"]
