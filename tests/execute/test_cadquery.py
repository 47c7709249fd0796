"""The CadQuery executor: real cadquery in real forked children, real hostile programs.

Expected values are analytic (box extents and volumes, the frame map) or come from independent
code (trimesh watertightness, the divergence-theorem volume of the mesh vs OCCT's BRep volume,
manifold3d IoU), and every containment test checks the effect on the machine (the file, the
socket, the process table), not only the reported class.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

pytest.importorskip("cadquery")

from gen3deval.execute import cadquery_worker as cqw
from gen3deval.execute import sandbox
from gen3deval.execute.result import ERROR_CLASSES, ExecResult, Limits
from netprobe import listening_server
from testdata import GENCAD

SECRET = "gen3deval-test-secret-8c1f"
FAST = Limits(wall_s=20, cpu_s=20)
# A fixed sample: the first 12 GenCAD cases in file order, less 61429 and 158063 whose reference
# shapes touch themselves along an edge (closed but not 2-manifold; covered by the slow test).
# A solid bounded by one open face: a Solid object of zero volume.
ZERO_VOLUME = """import cadquery as cq
from OCP.BRep import BRep_Builder
from OCP.TopoDS import TopoDS_Shell, TopoDS_Solid
b = BRep_Builder(); sh = TopoDS_Shell(); b.MakeShell(sh); b.Add(sh, cq.Face.makePlane(1, 1).wrapped)
so = TopoDS_Solid(); b.MakeSolid(so); b.Add(so, sh)
solid = cq.Solid(so)
"""
SAMPLE_IDS = (111911, 71404, 87756, 156570, 114829, 86699, 82461, 34378, 19891, 130658)


def gencad_cases() -> list[dict]:
    if not GENCAD.exists():
        pytest.skip(f"shared data not found at {GENCAD}")
    return [json.loads(line) for line in GENCAD.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pool():
    """Fresh workers started while a secret is in our environment (they must not inherit it)."""
    cqw.shutdown()
    os.environ["GEN3DEVAL_TEST_SECRET"] = SECRET
    try:
        p = cqw.get_pool()
        p.warm(2)
        yield p
    finally:
        os.environ.pop("GEN3DEVAL_TEST_SECRET", None)
        cqw.shutdown()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _is_cadquery_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"gen3deval.execute.cadquery_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def assert_no_strays(pool: cqw.WorkerPool) -> None:
    """The only CadQuery workers among our children are the pool's; workers have no children; sandbox
    uids own nothing. (Other children of this test process, e.g. multiprocessing's resource tracker left
    by another module's tests in the same xdist worker, are not this executor's business.)"""
    workers = {w.proc.pid for w in pool._all if w.proc is not None}
    assert {c for c in _children(os.getpid()) if _is_cadquery_worker(c)} <= workers
    for w in pool._all:
        assert w.proc is not None
        assert _children(w.proc.pid) == [], "a program's process outlived it"
        if w.info.get("uid") is not None:
            assert sandbox.uid_processes(int(w.info["uid"])) == []


def run(program: str, limits: Limits = FAST) -> ExecResult:
    r = cqw.run_cadquery(program, limits)
    assert r.error_class is None or r.error_class in ERROR_CLASSES
    return r


def merged(r: ExecResult) -> trimesh.Trimesh:
    assert r.mesh is not None
    tm = trimesh.Trimesh(r.mesh.vertices, r.mesh.faces, process=False)
    tm.merge_vertices()
    return tm


# ---------------------------------------------------------------------------------------------- geometry ---
def test_box_frame_is_y_up(pool: cqw.WorkerPool) -> None:
    r = run("import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 2, 3)\n")
    assert r.executable, r.message
    assert r.mesh is not None
    ext = r.mesh.bounds[1] - r.mesh.bounds[0]
    np.testing.assert_allclose(ext, [1, 3, 2], atol=1e-9)  # (x, y, z) -> (x, z, -y)
    tm = merged(r)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(6.0, rel=1e-9)  # positive: outward winding survives the map
    assert r.sandbox["result"]["volume"] == pytest.approx(6.0, rel=1e-9)


def test_frame_maps_a_point_not_just_extents(pool: cqw.WorkerPool) -> None:
    # A box occupying x in [0,1], y in [0,2], z in [0,3] must land at x in [0,1], y in [0,3], z in [-2,0].
    r = run("import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3, centered=False)\n")
    assert r.executable and r.mesh is not None
    np.testing.assert_allclose(r.mesh.bounds, [[0, 0, -2], [1, 3, 0]], atol=1e-9)


def test_gencad_sample_executes_watertight(pool: cqw.WorkerPool) -> None:
    from gen3deval.metrics.volume import volume_iou

    by_id = {c["question_id"]: c for c in gencad_cases()}
    programs = [by_id[q]["ground_truth"] for q in SAMPLE_IDS]
    results = cqw.run_cadquery_many(programs, FAST, jobs=2)
    for q, r in zip(SAMPLE_IDS, results, strict=True):
        assert r.executable, (q, r.error_class, r.message)
        tm = merged(r)
        assert tm.is_watertight, q
        assert tm.volume > 0, q
        brep = r.sandbox["result"]["volume"]
        # Independent check: the mesh's divergence-theorem volume vs OCCT's exact BRep volume.
        assert tm.volume == pytest.approx(brep, rel=2e-2), q
        iou, method = volume_iou(r.mesh, r.mesh)
        assert method == "exact" and iou == pytest.approx(1.0, abs=1e-9), q
    assert_no_strays(pool)


def test_curved_part_tessellation_tolerance(pool: cqw.WorkerPool) -> None:
    # Cylinder r=1, h=2: the inscribed mesh volume is below pi*r^2*h by at most the chord error.
    r = run("import cadquery as cq\nsolid = cq.Workplane().circle(1).extrude(2)\n")
    assert r.executable and r.mesh is not None
    tm = merged(r)
    exact = np.pi * 2
    assert tm.is_watertight
    assert exact * (1 - 1e-2) < tm.volume < exact  # angular 0.1 rad -> at least 63 segments
    radii = np.linalg.norm(r.mesh.vertices[:, [0, 2]], axis=1)
    assert np.max(np.abs(radii[radii > 0.5] - 1.0)) < 1e-9  # vertices lie on the true surface


# ---------------------------------------------------------------------------------------- result lookup ---
@pytest.mark.parametrize(
    ("program", "volume"),
    [
        ("result = cq.Workplane().box(1,1,1)\nsolid = cq.Workplane().box(2,1,1)", 2.0),  # solid wins
        ("a = cq.Workplane().box(1,1,1)\nb = cq.Workplane().box(3,1,1)\na = cq.Workplane().box(5,1,1)", 5.0),
        ("a = cq.Workplane().box(1,1,1)\nshow_object(cq.Workplane().box(4,1,1))", 4.0),
        ("part = cq.Workplane().box(1,1,1).faces('>Z')", 1.0),  # the solid behind a face selection
        (
            "assy = cq.Assembly()\nassy.add(cq.Workplane().box(1,1,1))\n"
            "assy.add(cq.Workplane().box(1,1,1), loc=cq.Location((5,0,0)))",
            2.0,
        ),
        ("model = [cq.Workplane().box(1,1,1).val(), cq.Solid.makeBox(1,1,2, cq.Vector(3,0,0))]", 3.0),
    ],
)
def test_result_lookup_order(pool: cqw.WorkerPool, program: str, volume: float) -> None:
    r = run("import cadquery as cq\n" + program + "\n")
    assert r.executable, r.message
    assert r.sandbox["result"]["volume"] == pytest.approx(volume, rel=1e-9)
    assert merged(r).volume == pytest.approx(volume, rel=1e-9)


# ---------------------------------------------------------------------------------------- error classes ---
@pytest.mark.parametrize(
    ("program", "cls", "needle"),
    [
        ("", "no_code", "empty"),
        ("import cadquery as cq\nsolid = cq.Workplane(.box(1,1,1)\n", "syntax", "line 2"),
        ("import cadquery as cq\nx = 1\nsolid = cq.Workplane().box(1,1,1) / 0\n", "runtime", "line 3"),
        ("import cadquery as cq\nsolid = cq.Workplane().box(1,1,1).edges().fillet(5)\n", "runtime", ""),
        ("import cadquery as cq\nx = cq.Vector(1, 2, 3)\nsolid = 5\n", "no_geometry", "solid is a int"),
        ("import cadquery as cq\nsolid = cq.Workplane('XY')\n", "no_geometry", "empty"),
        (
            "import cadquery as cq\nsolid = cq.Workplane().box(1,1,1).cut(cq.Workplane().box(2,2,2))\n",
            "no_geometry",
            "empty",
        ),
        (ZERO_VOLUME, "no_geometry", "zero volume"),
        (
            "import cadquery as cq\nsolid = cq.Solid(cq.Solid.makeBox(1, 1, 1).wrapped.Reversed())\n",
            "invalid_geometry",
            "negative volume",
        ),
        (
            "import cadquery as cq\nsolid = cq.Workplane().box(1,1,1).translate((float('nan'),0,0))\n",
            "invalid_geometry",
            "non-finite",
        ),
        (
            "import cadquery as cq\nsolid = cq.Workplane().rect(1, 1).extrude(1).faces('>Z').val()\n",
            "invalid_geometry",
            "Face",
        ),
        ("import sys\nsys.exit(3)\n", "runtime", "exit(3)"),
        ("import os\nos._exit(0)\n", "runtime", "before a result"),
    ],
)
def test_error_classes(pool: cqw.WorkerPool, program: str, cls: str, needle: str) -> None:
    r = run(program)
    assert not r.executable and r.mesh is None
    assert r.error_class == cls, (r.error_class, r.message, r.stderr[-500:])
    assert needle in r.message


def test_runtime_traceback_names_program_line(pool: cqw.WorkerPool) -> None:
    r = run("import cadquery as cq\n\n\nsolid = cq.Workplane().boxx(1, 1, 1)\n")
    assert r.error_class == "runtime" and "AttributeError" in r.message and "line 4" in r.message
    assert "boxx" in r.stderr  # the source line is shown in the traceback


def test_stdout_and_stderr_tails(pool: cqw.WorkerPool) -> None:
    r = run(
        "import cadquery as cq, sys\nprint('hello out')\nprint('hello err', file=sys.stderr)\nsolid = cq.Workplane().box(1,1,1)\n"
    )
    assert r.executable and "hello out" in r.stdout and "hello err" in r.stderr
    assert r.wall_s > 0 and r.peak_mb > 0 and r.language == "cadquery"


# ---------------------------------------------------------------------------------------- hostile code ---
def test_infinite_loop_wall_timeout(pool: cqw.WorkerPool) -> None:
    t0 = time.monotonic()
    r = run("while True:\n    pass\n", Limits(wall_s=1.5, cpu_s=30))
    assert r.error_class == "timeout" and "wall-clock" in r.message
    assert 1.4 < r.wall_s < 4 and time.monotonic() - t0 < 10
    assert_no_strays(pool)


def test_cpu_limit_timeout(pool: cqw.WorkerPool) -> None:
    r = run("x = 0\nwhile True:\n    x += 1\n", Limits(wall_s=30, cpu_s=1))
    assert r.error_class == "timeout" and "CPU" in r.message
    assert r.wall_s < 10


@pytest.mark.parametrize(
    "program",
    [
        "keep = []\nwhile True:\n    keep.append(bytearray(64 * 2**20))\n",  # grows until RLIMIT_AS
        "x = b'x' * (8 * 2**30)\n",  # one huge allocation
        "import numpy as np\na = np.ones((40000, 40000))\n",
    ],
)
def test_memory_bomb(pool: cqw.WorkerPool, program: str) -> None:
    r = run(program, Limits(wall_s=20, cpu_s=20, memory_mb=2048))
    assert r.error_class == "memory", (r.error_class, r.message)
    assert_no_strays(pool)
    # The worker survived: the next program still runs.
    assert run("import cadquery as cq\nsolid = cq.Workplane().box(1,1,1)\n").executable


def test_fork_bomb_contained(pool: cqw.WorkerPool) -> None:
    r = run("import os\nwhile True:\n    os.fork()\n", Limits(wall_s=5, cpu_s=5))
    assert r.error_class in ("sandbox_violation", "runtime")
    assert_no_strays(pool)
    r = run("import multiprocessing as mp\nmp.Process(target=print).start()\n", Limits(wall_s=5, cpu_s=5))
    assert r.error_class in ("sandbox_violation", "runtime")
    assert_no_strays(pool)


def test_thread_bomb_capped_by_nproc(pool: cqw.WorkerPool) -> None:
    program = (
        "import threading, time\nts = []\n"
        "for i in range(10000):\n"
        "    t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start(); ts.append(t)\n"
    )
    r = run(program, Limits(wall_s=10, cpu_s=10, processes=32))
    assert r.error_class == "runtime" and "thread" in r.message.lower()
    assert_no_strays(pool)


def test_write_outside_tmpdir(pool: cqw.WorkerPool, tmp_path: Path) -> None:
    targets = [Path("/tmp") / f"gen3deval-escape-{os.getpid()}", tmp_path / "escape.txt"]
    for target in targets:
        r = run(f"open({str(target)!r}, 'w').write('pwned')\n")
        assert r.error_class == "sandbox_violation", r.message
        assert not target.exists()
    r = run("import os\nos.makedirs('../../escape-dir', exist_ok=True)\n")
    assert r.error_class == "sandbox_violation"
    # Writing inside its own directory is fine (programs export files).
    r = run(
        "import cadquery as cq\nsolid = cq.Workplane().box(1,1,1)\n"
        "cq.exporters.export(solid, 'out.stl')\nimport os\nprint(os.path.getsize('out.stl') > 0)\n"
    )
    assert r.executable and "True" in r.stdout, (r.error_class, r.message)


def test_read_etc_passwd(pool: cqw.WorkerPool) -> None:
    passwd = Path("/etc/passwd").read_text()
    first_line = passwd.splitlines()[0]
    for program in (
        "print(open('/etc/passwd').read())\n",
        "import pathlib\nprint(pathlib.Path('/etc/passwd').read_text())\n",
        "import os\nfd = os.open('/etc/passwd', os.O_RDONLY)\nprint(os.read(fd, 4096))\n",
        "try:\n    open('/etc/passwd').read()\nexcept Exception:\n    pass\nimport cadquery as cq\nsolid = cq.Workplane().box(1,1,1)\n",
    ):
        r = run(program)
        assert r.error_class == "sandbox_violation", (program, r.error_class)
        assert first_line not in r.stdout + r.stderr + r.message


def test_parent_environment_invisible(pool: cqw.WorkerPool) -> None:
    assert os.environ.get("GEN3DEVAL_TEST_SECRET") == SECRET  # the workers were started with it set
    r = run("import os\nprint(dict(os.environ))\nprint(os.getuid(), os.getcwd())\n")
    assert SECRET not in r.stdout + r.stderr
    env_line = r.stdout.splitlines()[0]
    assert "HOME" in env_line and "GEN3DEVAL" not in env_line
    for program in (
        f"print(open('/proc/{os.getpid()}/environ').read())\n",
        "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n",
        "print(open('/proc/self/environ').read())\n",
    ):
        r = run(program)
        assert r.error_class == "sandbox_violation"
        assert SECRET not in r.stdout + r.stderr + r.message
    # Beneath the tripwire: the sandbox uid itself cannot read our environ (kernel check).
    uid = pool._all[0].info.get("uid")
    if uid is not None:
        with sandbox.private_tmpdir(owner_uid=int(uid)) as tmp:
            out = sandbox.run_limited(
                ["/bin/cat", f"/proc/{os.getpid()}/environ"], Limits(wall_s=5), cwd=tmp, env={}, uid=int(uid)
            )
        assert out.returncode != 0 and SECRET.encode() not in out.stdout


def test_socket_to_a_real_local_server(pool: cqw.WorkerPool) -> None:
    with listening_server() as (port, accepted):
        r = run(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
        )
        assert r.error_class == "sandbox_violation", r.message
    assert accepted == []
    assert pool._all[0].info["network_isolation"] in (True, False)


@pytest.mark.parametrize(
    "program",
    [
        "import os\nos.system('touch {m}')\n",
        "import subprocess\nsubprocess.run(['touch', '{m}'])\n",
        "import os\nos.popen('touch {m}').read()\n",
        "import os\nos.execv('/usr/bin/touch', ['touch', '{m}'])\n",
        "import ctypes\nctypes.CDLL(None).system(b'touch {m}')\n",
    ],
)
def test_processes_and_native_calls(pool: cqw.WorkerPool, program: str) -> None:
    marker = Path("/tmp") / f"gen3deval-marker-{os.getpid()}"
    r = run(program.format(m=marker))
    assert r.error_class == "sandbox_violation", (r.error_class, r.message)
    assert not marker.exists()
    assert_no_strays(pool)


# ------------------------------------------------------------------------------------------- isolation ---
def test_programs_do_not_leak_state(pool: cqw.WorkerPool) -> None:
    poison = (
        "import cadquery as cq, builtins, math\n"
        "cq.Workplane.box = lambda *a, **k: None\n"
        "builtins.POISON = 1\nmath.pi = 3\nGLOBAL_FLAG = 1\n"
        "solid = cq.Workplane().sphere(1)\n"
    )
    check = (
        "import cadquery as cq, builtins, math\n"
        "assert not hasattr(builtins, 'POISON')\nassert math.pi > 3.14\n"
        "assert 'GLOBAL_FLAG' not in globals()\n"
        "solid = cq.Workplane().box(1, 1, 1)\n"
    )
    a = run(poison)
    b = run(check)
    assert a.executable and b.executable, (a.message, b.message)
    assert a.sandbox["worker_pid"] == b.sandbox["worker_pid"]  # same warm worker, fresh child
    assert b.sandbox["result"]["volume"] == pytest.approx(1.0)


def test_many_keeps_order_and_mixes_classes(pool: cqw.WorkerPool) -> None:
    programs = [
        "import cadquery as cq\nsolid = cq.Workplane().box(1,1,1)\n",
        "1/0\n",
        "",
        "import cadquery as cq\nsolid = cq.Workplane().box(2,1,1)\n",
        "solid = (\n",
        "import cadquery as cq\nsolid = cq.Workplane().box(3,1,1)\n",
    ]
    res = cqw.run_cadquery_many(programs, FAST, jobs=2)
    assert [r.error_class for r in res] == [None, "runtime", "no_code", None, "syntax", None]
    assert [round(r.sandbox["result"]["volume"]) for r in res if r.executable] == [1, 2, 3]
    assert_no_strays(pool)


def test_sandbox_description(pool: cqw.WorkerPool) -> None:
    r = run("import cadquery as cq\nsolid = cq.Workplane().box(1,1,1)\n")
    sb = r.sandbox
    assert sb["process"] == "fork of a warm worker" and sb["audit_hook"] is True
    if sandbox.can_switch_user():
        assert sb["user"].startswith("uid ") and int(sb["user"].split()[1]) >= sandbox.SANDBOX_UID_BASE
    assert sb["network"] in ("netns", "userns+netns", "not isolated")
    assert sb["zygote_threads"] == 1  # forking a multi-threaded zygote would risk deadlocks
    assert r.limits == FAST


def test_shutdown_leaves_nothing() -> None:
    p = cqw.get_pool()
    p.warm(1)
    pids = [w.proc.pid for w in p._all if w.proc is not None]
    assert pids
    cqw.shutdown()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert [c for c in _children(os.getpid()) if _is_cadquery_worker(c)] == []


# ---------------------------------------------------------------------------------------------- slow ---
@pytest.mark.slow
def test_all_gencad_ground_truths() -> None:
    from gen3deval.metrics.volume import volume_iou

    cases = gencad_cases()
    results = cqw.run_cadquery_many([c["ground_truth"] for c in cases], Limits(), jobs=os.cpu_count())
    n_watertight = 0
    for c, r in zip(cases, results, strict=True):
        q = c["question_id"]
        assert r.executable, (q, r.error_class, r.message)
        tm = merged(r)
        # One solid: closed and consistently oriented (every directed edge has its reverse exactly as
        # often). Several solids touching each other are meshed face by face and may meet at
        # T-junctions along the contact (case 150422), so only their volume is checked.
        if r.sandbox["result"]["n_solids"] == 1:
            e = tm.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
            fwd = {tuple(k): n for k, n in zip(*np.unique(e, axis=0, return_counts=True), strict=True)}
            assert all(fwd.get((b, a), 0) == n for (a, b), n in fwd.items()), q
        assert tm.volume > 0 and tm.volume == pytest.approx(r.sandbox["result"]["volume"], rel=2e-2), q
        if tm.is_watertight:
            n_watertight += 1
            iou, method = volume_iou(r.mesh, r.mesh)
            assert method == "exact" and iou == pytest.approx(1.0, abs=1e-9), q
    assert n_watertight >= 90  # the rest touch themselves along an edge (non-manifold references)
    cqw.shutdown()
