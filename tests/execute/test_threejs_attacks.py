"""Issue 9 attacks on the Three.js executor: each was reproduced on the old code and must now fail.

- the host realm: three's classes lead to the host's Object/Array/%TypedArray% prototypes; planting a
  ``toJSON`` there (or tampering with ``push`` / ``subarray``) forged the exported GLB;
- the Python parent: GLBs whose primitives share one large accessor (a 43 MB output expanded to
  16.5 GB), over the face limit, with a non-object material or 2000-deep JSON must be classified
  results, checked before anything is copied;
- classification: a WebAssembly memory bomb is ``memory``;
- the OS layers (``run_node_script``, with and without Node's permission model): no data passes
  between programs through a host path, a unix socket listener in a host folder is unreachable, and
  the host's processes are invisible.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gen3deval.errors import DependencyError
from gen3deval.execute import sandbox
from gen3deval.execute.result import Limits

threejs = pytest.importorskip("gen3deval.execute.threejs")

FAST = Limits(wall_s=4.0, cpu_s=4.0, memory_mb=2048)
BOX = "function createObject(THREE) { return new THREE.Mesh(new THREE.BoxGeometry(1, 2, 3)); }\n"
K = 1000  # primitives of the forged GLB: bounded so that the old code survives the test


@pytest.fixture(scope="module", autouse=True)
def _runtime() -> None:
    try:
        threejs.runtime().snapshot(threejs._heap_mb(FAST))
    except DependencyError as exc:
        pytest.skip(str(exc))


def _is_real_box(r) -> None:  # type: ignore[no-untyped-def]
    """What the program really built: BoxGeometry(1, 2, 3), 12 triangles, half extents (0.5, 1, 1.5)."""
    assert r.executable, (r.error_class, r.message, r.stderr[-500:])
    assert r.mesh.n_faces == 12
    np.testing.assert_allclose(r.mesh.vertices.max(axis=0), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(r.mesh.vertices.min(axis=0), [-0.5, -1.0, -1.5])


# --- the host realm ---------------------------------------------------------------------------------

HOST_OBJECT_PROTO = (
    "let P = THREE.Mesh.prototype; while (Object.getPrototypeOf(P)) P = Object.getPrototypeOf(P);\n"
)
FORGES = {
    # JSON.stringify(json) in the GLB writer calls toJSON: K primitives sharing accessors 0 and 1.
    "toJSON-on-Object.prototype": HOST_OBJECT_PROTO
    + f"""P.toJSON = function (k) {{
  if (k === '' && this && this.asset && this.meshes) {{
    const prim = this.meshes[0].primitives[0];
    const prims = []; for (let i = 0; i < {K}; i++) prims.push(prim);
    return {{ asset: this.asset, scene: 0, scenes: this.scenes, nodes: this.nodes, meshes: [{{ primitives: prims }}],
             materials: this.materials, accessors: this.accessors, bufferViews: this.bufferViews, buffers: this.buffers }};
  }}
  return this;
}};
""",
    "defineProperty-toJSON": HOST_OBJECT_PROTO
    + """try { Object.defineProperty(P, 'toJSON', { value: () => ({ forged: true }) }); } catch (e) {}
""",
    # Every push of a triangle primitive pushed twice: the GLB lists each primitive twice.
    "Array.prototype.push": """const AP = Object.getPrototypeOf(new THREE.Object3D().children);
AP.push = function (...a) { for (const x of a) { this[this.length] = x; if (x && x.mode === 4) this[this.length] = x; } return this.length; };
""",
    # The writer's Float32Array.subarray scales the positions by 1000.
    "TypedArray.prototype.subarray": """const TA = Object.getPrototypeOf(Object.getPrototypeOf(new THREE.BoxGeometry().attributes.position.array));
const sub = TA.subarray;
TA.subarray = function (a, b) { const r = sub.call(this, a, b); if (this[Symbol.toStringTag] === 'Float32Array') for (let i = 0; i < r.length; i++) r[i] *= 1000; return r; };
""",
}


@pytest.mark.parametrize("name", list(FORGES))
def test_host_realm_tampering_does_not_change_the_export(name: str) -> None:
    r = threejs.run_threejs(FORGES[name] + BOX, FAST)
    _is_real_box(r)


def test_strict_mode_tampering_is_refused_not_forged() -> None:
    r = threejs.run_threejs("'use strict';\n" + FORGES["toJSON-on-Object.prototype"] + BOX, FAST)
    assert not r.executable and r.mesh is None
    assert r.error_class == "runtime" and "not extensible" in r.message, r.message


def test_host_intrinsics_are_frozen_for_the_program() -> None:
    prog = (
        HOST_OBJECT_PROTO
        + """const TA = Object.getPrototypeOf(Object.getPrototypeOf(new THREE.BoxGeometry().attributes.position.array));
const F = THREE.Mesh.constructor.prototype;
console.log(JSON.stringify([Object.isFrozen(P), Object.isFrozen(TA), Object.isFrozen(F), Object.isFrozen(THREE),
  Object.isFrozen(Object.getPrototypeOf(new THREE.Object3D().children)), Object.isFrozen(Object.prototype)]));
"""
        + BOX
    )
    r = threejs.run_threejs(prog, FAST)
    _is_real_box(r)
    # host Object.prototype, %TypedArray%.prototype, Function.prototype, THREE, Array.prototype frozen;
    # the program's own realm (the vm context) is its own.
    assert json.loads(r.stdout.strip()) == [True, True, True, True, True, False]


def test_hostile_getters_are_read_once() -> None:
    # `array` returns a different typed array on each read, `count` lies, children is a Proxy that grows.
    prog = """function createObject(THREE) {
  const g = new THREE.BoxGeometry(1, 2, 3);
  const real = g.attributes.position.array;
  let reads = 0;
  Object.defineProperty(g.attributes.position, 'array', { get() { reads++; return reads > 1 ? new Float32Array(3e6) : real; } });
  Object.defineProperty(g.attributes.position, 'count', { get() { return 1e9; } });
  const m = new THREE.Mesh(g);
  const root = new THREE.Group();
  root.add(m);
  return root;
}"""
    _is_real_box(threejs.run_threejs(prog, FAST))


# --- the Python side: GLBs checked before anything is copied ----------------------------------------


def make_glb(doc: dict | bytes, bin_chunk: bytes = b"") -> bytes:  # type: ignore[type-arg]
    js = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    bin_chunk += b"\0" * (-len(bin_chunk) % 4)
    total = 12 + 8 + len(js) + 8 + len(bin_chunk)
    return (
        struct.pack("<III", 0x46546C67, 2, total)
        + struct.pack("<II", len(js), 0x4E4F534A)
        + js
        + struct.pack("<II", len(bin_chunk), 0x004E4942)
        + bin_chunk
    )


def box_doc(n_prims: int = 1, n_faces: int = 12, material: object = 0) -> tuple[dict, bytes]:  # type: ignore[type-arg]
    """One POSITION (8 vertices) and one index accessor (n_faces triangles); n_prims primitives use them."""
    pos = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32).tobytes()
    idx = (np.arange(3 * n_faces, dtype=np.uint32) % 8).tobytes()
    prim = {"attributes": {"POSITION": 0}, "indices": 1, "material": material, "mode": 4}
    doc = {
        "asset": {"version": "2.0"},
        "meshes": [{"primitives": [prim] * n_prims}],
        "materials": [{"name": "m", "pbrMetallicRoughness": {"baseColorFactor": [1, 0, 0, 1]}}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 8, "type": "VEC3"},
            {"bufferView": 1, "componentType": 5125, "count": 3 * n_faces, "type": "SCALAR"},
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos)},
            {"buffer": 0, "byteOffset": len(pos), "byteLength": len(idx)},
        ],
        "buffers": [{"byteLength": len(pos) + len(idx)}],
    }
    return doc, pos + idx


def scaffold_result(glb: bytes, max_triangles: int = threejs.DEFAULT_MAX_TRIANGLES):  # type: ignore[no-untyped-def]
    """What the parent makes of a child that wrote ``glb`` behind an honest-looking header."""
    header = {"ok": True, "error_class": None, "message": "", "logs": "", "glb_bytes": len(glb)}
    out = json.dumps(header).encode() + b"\n" + glb
    outcome = sandbox.ProcessOutcome(returncode=0, timed_out=False, stdout=out)
    return threejs._result(outcome, FAST, {"from": "parent"}, max_triangles=max_triangles)


def test_the_reference_glb_reads() -> None:
    doc, binary = box_doc()
    r = scaffold_result(make_glb(doc, binary))
    assert r.executable and r.mesh.n_faces == 12 and r.mesh.n_vertices == 8


def test_shared_accessor_is_rejected_before_copying() -> None:
    # 20000 primitives x 100k faces = 2e9 faces (48 GB as int64) from 1.2 MB of index data.
    doc, binary = box_doc(n_prims=20_000, n_faces=100_000)
    glb = make_glb(doc, binary)
    tracemalloc.start()
    t0 = time.perf_counter()
    r = scaffold_result(glb, max_triangles=10**12)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not r.executable and r.error_class == "sandbox_violation", r.message
    assert "more than once" in r.message
    assert elapsed < 2.0
    assert peak < 50 * len(glb) + (16 << 20)


def test_shared_buffer_view_is_rejected() -> None:
    doc, binary = box_doc()
    doc["accessors"].append(dict(doc["accessors"][1]))  # a second accessor on bufferView 1
    doc["meshes"][0]["primitives"].append({"attributes": {"POSITION": 0}, "indices": 2})
    r = scaffold_result(make_glb(doc, binary))
    assert r.error_class == "sandbox_violation"


def test_accessor_past_the_chunk_is_rejected() -> None:
    doc, binary = box_doc()
    doc["accessors"][1]["count"] = 10**9
    r = scaffold_result(make_glb(doc, binary))
    assert r.error_class == "sandbox_violation" and "past" in r.message


def test_face_count_beyond_the_limit_is_rejected() -> None:
    doc, binary = box_doc(n_faces=12)
    r = scaffold_result(make_glb(doc, binary), max_triangles=11)
    assert not r.executable and r.error_class == "sandbox_violation", r.message
    assert "more than 11 triangles" in r.message
    assert scaffold_result(make_glb(doc, binary), max_triangles=12).executable


@pytest.mark.parametrize("material", [5, "red", [1, 2], None])
def test_non_object_material_is_a_classified_result(material: object) -> None:
    doc, binary = box_doc()
    doc["materials"] = [material]
    r = scaffold_result(make_glb(doc, binary))
    assert not r.executable and r.error_class == "sandbox_violation", r.message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(accessors={"0": 1}),
        lambda d: d["accessors"][0].update(count="8"),
        lambda d: d["accessors"][0].update(count=True),
        lambda d: d["meshes"][0]["primitives"][0].update(attributes=[0]),
        lambda d: d["materials"][0]["pbrMetallicRoughness"].update(baseColorFactor=[1, "x", 0, 1]),
        lambda d: d["materials"][0].update(name={"a": 1}),
        lambda d: d["bufferViews"][0].update(byteOffset=-4),
        lambda d: d.update(meshes=[7]),
    ],
)
def test_wrong_types_anywhere_are_classified(mutate) -> None:  # type: ignore[no-untyped-def]
    doc, binary = box_doc()
    mutate(doc)
    r = scaffold_result(make_glb(doc, binary))
    assert not r.executable and r.error_class == "sandbox_violation", r.message


def test_deep_glb_json_is_a_classified_result() -> None:
    deep = b'{"asset": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    r = scaffold_result(make_glb(deep))
    assert not r.executable and r.error_class == "sandbox_violation", r.message


@pytest.mark.parametrize(
    "stdout",
    [
        b"[" * 5000 + b"]" * 5000 + b"\n",  # a deep header
        json.dumps({"ok": False, "error_class": {"a": 1}, "message": ["x"], "logs": 5}).encode() + b"\n",
        json.dumps({"ok": True, "glb_bytes": "12"}).encode() + b"\n" + b"x" * 12,
        json.dumps({"ok": True, "glb_bytes": 1e400}).encode().replace(b"Infinity", b"1e400") + b"\n",
        b'{"ok": false, "logs": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
    ],
    ids=["deep-header", "wrong-types", "glb-bytes-string", "glb-bytes-huge", "deep-logs"],
)
def test_result_never_raises_for_child_output(stdout: bytes) -> None:
    outcome = sandbox.ProcessOutcome(returncode=0, timed_out=False, stdout=stdout)
    r = threejs._result(outcome, FAST, {})
    assert not r.executable and r.error_class in ("sandbox_violation", "runtime"), r.message


# --- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bomb",
    [
        "new WebAssembly.Memory({ initial: 65536 });",
        "const ms = []; for (;;) ms.push(new WebAssembly.Memory({ initial: 16000 }));",
        "const m = new WebAssembly.Memory({ initial: 1, maximum: 65536 }); for (;;) m.grow(4096);",
    ],
    ids=["huge", "many", "grow"],
)
def test_wasm_memory_bomb_is_memory(bomb: str) -> None:
    r = threejs.run_threejs(f"function createObject(THREE) {{ {bomb} }}", FAST)
    assert not r.executable and r.error_class == "memory", (r.error_class, r.message)


def test_sigkill_without_oom_evidence_is_runtime() -> None:
    outcome = sandbox.ProcessOutcome(returncode=-9, timed_out=False, cpu_s=0.1)
    r = threejs._result(outcome, FAST, {})
    assert r.error_class == "runtime" and "SIGKILL" in r.message
    outcome = sandbox.ProcessOutcome(returncode=-9, timed_out=False, cpu_s=0.1, oom_killed=True)
    assert threejs._result(outcome, FAST, {}).error_class == "memory"


# --- the OS layers behind Node ----------------------------------------------------------------------

needs_jail = pytest.mark.skipif(
    not sandbox.jail_available() or not sandbox.default_isolation().filesystem,
    reason="no jail here (mount namespaces not permitted, or GEN3DEVAL_SANDBOX=basic)",
)


def node(script: str, *, permissions: bool = True) -> dict:  # type: ignore[type-arg]
    outcome = threejs.run_node_script(script, FAST, node_permissions=permissions)
    assert outcome.returncode == 0, outcome.stderr.decode()[-2000:]
    return json.loads(outcome.stdout.decode())


HOST_DIRS = ("/tmp", "/run/lock", "/dev/shm")


@pytest.fixture
def marker() -> Iterator[str]:
    tag = f"gen3deval-test-{uuid.uuid4().hex[:12]}"
    yield tag
    for d in HOST_DIRS:
        if os.path.isdir(d):
            for entry in os.listdir(d):
                if entry.startswith(tag):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, entry))


@needs_jail
def test_no_data_between_programs_through_host_files(marker: str) -> None:
    # Without Node's permission model (a program that got past it too): write in every host folder
    # that is world-writable, then a second program looks for it.
    dirs = json.dumps([d for d in HOST_DIRS if os.path.isdir(d)])
    write = f"""const fs = require('fs'); const out = {{}};
for (const d of {dirs}) {{ try {{ fs.writeFileSync(d + '/{marker}', 'secret'); out[d] = 'written'; }} catch (e) {{ out[d] = e.code; }} }}
process.stdout.write(JSON.stringify(out));"""
    read = f"""const fs = require('fs'); const out = {{}};
for (const d of {dirs}) {{ try {{ out[d] = fs.readFileSync(d + '/{marker}', 'utf8'); }} catch (e) {{ out[d] = e.code; }} }}
process.stdout.write(JSON.stringify(out));"""
    node(write, permissions=False)
    got = node(read, permissions=False)
    assert "secret" not in got.values(), got
    for d in json.loads(dirs):
        assert not os.path.exists(f"{d}/{marker}")


@needs_jail
def test_no_data_between_programs_through_socket_files(marker: str) -> None:
    # With the permission model on, file writes are refused, but binding a unix socket creates a file:
    # 8 socket files (bits) left in a host folder by one program, probed by the next with connect()
    # (ECONNREFUSED = there, ENOENT = not).
    dirs = json.dumps([d for d in HOST_DIRS if os.path.isdir(d)])
    bits = [1, 0, 1, 1, 0, 0, 1, 0]
    send = f"""const net = require('net'); let n = 0; const want = {json.dumps(bits)};
const dirs = {dirs}; const todo = [];
for (const d of dirs) want.forEach((b, i) => {{ if (b) todo.push(d + '/{marker}-' + i); }});
if (!todo.length) process.stdout.write('{{}}');
for (const p of todo) {{
  const s = net.createServer(); s.on('error', () => {{ if (++n === todo.length) {{ process.stdout.write('{{}}'); process.exit(0); }} }});
  s.listen(p, () => {{ if (++n === todo.length) {{ process.stdout.write('{{}}'); process.exit(0); }} }});
}}"""
    recv = f"""const net = require('net'); const out = {{}}; let n = 0; const dirs = {dirs};
const total = dirs.length * 8;
for (const d of dirs) for (let i = 0; i < 8; i++) {{
  const c = net.connect(d + '/{marker}-' + i);
  const done = (v) => {{ out[d + i] = v; if (++n === total) {{ process.stdout.write(JSON.stringify(out)); process.exit(0); }} }};
  c.on('connect', () => done('CONNECTED')); c.on('error', (e) => done(e.code));
}}"""
    node(send)
    got = node(recv)
    assert "ECONNREFUSED" not in got.values() and "CONNECTED" not in got.values(), got


@contextlib.contextmanager
def unix_listener(directory: str) -> Iterator[tuple[str, list[bytes]]]:
    """A unix socket server in ``directory`` that anyone may connect to; yields its path and what arrived."""
    d = tempfile.mkdtemp(prefix="gen3deval-sock-", dir=directory)
    os.chmod(d, 0o777)
    path = os.path.join(d, "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(8)
    srv.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    got.append(conn.recv(100) or b"(connected)")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path, got
    finally:
        stop.set()
        t.join(2)
        srv.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(d)


@needs_jail
@pytest.mark.parametrize("directory", [d for d in ("/tmp", "/run/lock") if os.path.isdir(d)])
def test_unix_socket_listener_on_the_host_is_unreachable(directory: str) -> None:
    with unix_listener(directory) as (path, got):
        # Sanity: reachable from outside the sandbox.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
            c.sendall(b"host")
        time.sleep(0.3)
        assert got == [b"host"]
        res = node(
            f"""const c = require('net').connect({json.dumps(path)});
const done = (v) => {{ process.stdout.write(JSON.stringify({{ r: v }})); process.exit(0); }};
c.on('connect', () => {{ c.write('escaped'); setTimeout(() => done('CONNECTED'), 200); }});
c.on('error', (e) => done(e.code)); setTimeout(() => done('TIMEOUT'), 2000);"""
        )
        time.sleep(0.3)
        assert res["r"] != "CONNECTED" and got == [b"host"], (res, got)


@needs_jail
def test_host_processes_are_invisible() -> None:
    # Without Node's permission model, so that /proc can be listed at all.
    res = node(
        """const fs = require('fs');
const pids = fs.readdirSync('/proc').filter((n) => /^\\d+$/.test(n)).map(Number);
let ppidCmd = null; try { ppidCmd = fs.readFileSync('/proc/' + process.ppid + '/cmdline', 'utf8'); } catch (e) { ppidCmd = e.code; }
process.stdout.write(JSON.stringify({ pids, me: process.pid, ppidCmd, root: fs.readdirSync('/').sort() }));""",
        permissions=False,
    )
    assert res["pids"] == [res["me"]], res
    assert res["ppidCmd"] == "ENOENT"
    # The minimal root: system directories and the private /tmp; no project, data, /home, /run, /var.
    system = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    assert set(res["root"]) <= system, res["root"]
    assert Path("/proc/1").exists()  # the host's own view is unchanged
