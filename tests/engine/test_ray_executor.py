"""The ``ray`` executor on real Ray: a local instance (``ray.init(num_cpus=2)``) and a two-node cluster made
with ``ray start`` on this machine, each node with its own temp dir, stopped by the tests (their own process
groups only). Runs on Ray must give the numbers of the local process pool bit for bit; a node lost mid-run
loses and duplicates nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gen3deval.cli import main
from gen3deval.config import SystemSpec, get_protocol
from gen3deval.engine.ray_executor import LOST_MESSAGE, _fresh_workdirs, check_shared_dir
from gen3deval.engine.runner import CaseEntry, Engine
from gen3deval.engine.store import Store
from gen3deval.errors import ConfigError, DependencyError
from gen3deval.report import read_results
from gen3deval.suites.base import Case

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
PROTOCOL = "{name: default, samples: 4000, iou_resolution: 48, render_size: 128}"
STANDIN_PROTOCOL = get_protocol(
    {"name": "default", "metrics": ["chamfer_l1", "volume_iou"], "image_metrics": []}
)


# --- without Ray ---------------------------------------------------------------------------------------


def test_run_folder_outside_the_shared_dir_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "nfs"
    shared.mkdir()
    check_shared_dir(shared / "runs" / "x", str(shared))  # inside: fine
    with pytest.raises(ConfigError, match="not inside ray_shared_dir"):
        check_shared_dir(tmp_path / "elsewhere", str(shared))
    with pytest.raises(ConfigError, match="not a folder"):
        check_shared_dir(shared, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not inside ray_shared_dir"):
        _standin_engine(tmp_path / "run", 1, 1, executor="ray", ray_shared_dir=str(shared))
    with pytest.raises(ConfigError, match="executor"):
        _standin_engine(tmp_path / "run", 1, 1, executor="slurm")


def test_a_rerun_task_finds_its_scratch_folder_as_handed_over(tmp_path: Path) -> None:
    """A task lost with its node left files in its (shared) scratch folder: its rerun removes them and keeps
    the inputs the engine had placed there."""
    wd = tmp_path / "w1"
    wd.mkdir()
    (wd / "input.glb").write_text("fetched")
    items = [("generate", {}, str(wd)), ("score", {}, str(tmp_path / "w2"))]
    _fresh_workdirs(items)  # first attempt: remembers what was there
    (wd / "half_written.glb").write_text("x")
    (wd / "sub").mkdir()
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / "out.png").write_text("x")
    _fresh_workdirs(items)  # the rerun
    assert sorted(os.listdir(wd)) == ["input.glb"] and os.listdir(tmp_path / "w2") == []


# --- helpers -------------------------------------------------------------------------------------------


def _standin_engine(
    run_dir: Path, n_cases: int, jobs: int, settings: dict[str, Any] | None = None, **kw: Any
) -> Engine:
    from engine_standins import FUNCTIONS

    s = settings or {}
    return Engine(
        run_dir,
        [CaseEntry(key=f"c{i:03d}", case=Case(id=f"c{i:03d}"), suite="t") for i in range(n_cases)],
        [
            SystemSpec(name="standin", label="oracle", settings=s),
            SystemSpec(name="standin", label="prog", settings={**s, "program": True}),
        ],
        STANDIN_PROTOCOL,
        fingerprint={"name": "t", "hash": "t"},
        jobs=jobs,
        functions=FUNCTIONS,
        needs_reference={"oracle": True, "prog": True},
        **kw,
    )


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = read_results(run_dir / "results.jsonl")
    return sorted(
        ({k: v for k, v in r.items() if k != "timings"} for r in rows), key=lambda r: (r["case"], r["system"])
    )


# What a sandboxed program's run measured about itself (time, memory, the throwaway user): not results.
DIAGNOSTICS = {"wall_s", "peak_mb", "sandbox"}


def _stage_values(run_dir: Path) -> dict[tuple[str, str, int, str], tuple[Any, ...]]:
    """Every stage row's status, key, artifacts (content-addressed: same path = same bytes) and value."""
    with Store(run_dir, readonly=True) as store:
        return {
            k: (
                r.status,
                r.input_hash,
                r.artifacts,
                {n: v for n, v in r.value.items() if n not in DIAGNOSTICS},
            )
            for k, r in store.all().items()
        }


def _quickstart_spec(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(f"suite: quickstart\nsystems: [oracle, bbox]\nprotocol: {PROTOCOL}\nlimit: 4\njobs: 2\n")
    return spec


def _run_cli(*argv: str) -> None:
    code = main(["run", *argv, "--quiet"])
    assert code == 0


def _short_tmp(prefix: str) -> str:
    # Ray's unix sockets live in its temp dir: pytest's tmp paths can exceed the 107-byte socket path limit.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


# --- a local Ray instance ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    temp = _short_tmp("g3r")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _ray_tasks(ray: Any, at_least: int = 0) -> int:
    """How many engine tasks (``run_task``) this Ray instance has seen: Ray's own task events in its GCS,
    independent of the engine; reported about once a second, so wait for ``at_least`` up to 10 s."""
    deadline = time.time() + 10
    while True:
        events = ray._private.state.state._get_all_task_events()
        n = len({e.task_id for e in events if e.task_info.func_or_class_name.endswith("run_task")})
        if n >= at_least or time.time() > deadline:
            return n
        time.sleep(0.5)


@pytest.mark.slow
def test_quickstart_on_ray_equals_the_local_pool(local_ray: Any, tmp_path: Path) -> None:
    spec = _quickstart_spec(tmp_path)
    _run_cli(str(spec), "--out", str(tmp_path / "local"))
    before = _ray_tasks(local_ray)
    _run_cli(str(spec), "--out", str(tmp_path / "ray"), "--executor", "ray")
    local, on_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(local) == 8 and all(r["executable"] for r in local)
    assert on_ray == local  # every metric value bit for bit (JSON floats round-trip exactly)
    values = _stage_values(tmp_path / "ray")
    assert values == _stage_values(tmp_path / "local")
    # 4 references + 2 systems x 4 cases x (generate, render, score) stages, each a Ray task
    assert len(values) == 4 + 24 + 4  # and bbox's 4 execute stages
    assert _ray_tasks(local_ray, before + len(values)) - before == len(values)
    # Resume works unchanged: nothing left to do.
    _run_cli(str(spec), "--out", str(tmp_path / "ray"), "--executor", "ray")
    assert _stage_values(tmp_path / "ray") == values


@pytest.mark.slow
def test_standin_run_on_ray_equals_inline(local_ray: Any, tmp_path: Path) -> None:
    res = _standin_engine(tmp_path / "ray", 5, 2, executor="ray").run()
    _standin_engine(tmp_path / "inline", 5, 1, inline=True).run()
    assert sum(res.ran.values()) == 5 * 8 and not any(res.failed.values())
    assert _stage_values(tmp_path / "ray") == _stage_values(tmp_path / "inline")


@pytest.mark.slow
def test_a_stage_that_kills_its_ray_worker_twice_fails_and_the_run_goes_on(
    local_ray: Any, tmp_path: Path
) -> None:
    res = _standin_engine(tmp_path, 3, 2, {"segfault": ["c001"]}, executor="ray").run()
    assert res.failed == {"reference": 0, "generate": 2, "execute": 0, "render": 0, "score": 0}
    with Store(tmp_path, readonly=True) as store:
        rows = store.all()
    lost = [r for r in rows.values() if r.status == "failed"]
    assert {(r.case, r.stage) for r in lost} == {("c001", "generate")}
    assert all(r.error == LOST_MESSAGE and r.error_class == "generation_error" for r in lost)
    assert all(r.runs == 1 for r in rows.values())
    # c001's two pipelines stop at their failed generate: 7 of its 8 stage rows are not done.
    assert sum(1 for r in rows.values() if r.ok) == 3 * 8 - 7


@pytest.mark.slow
def test_missing_runtime_on_a_ray_worker_stops_the_run(local_ray: Any, tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match="node not found"):
        _standin_engine(tmp_path, 3, 2, {"no_runtime": ["c001"]}, executor="ray").run()
    with Store(tmp_path, readonly=True) as store:
        assert not any("node not found" in (r.error or "") for r in store.all().values())


# --- two nodes made with `ray start` on this machine -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(args: list[str], temp: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    ports = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    ]
    cmd = [str(VENV_BIN / "ray"), "start", "--block", "--temp-dir", temp, "--disable-usage-stats", *args]
    for flag in ports:  # two nodes on one machine: no fixed default port may be shared
        cmd += [flag, str(_free_port())]
    # Its own process group: the test stops exactly this node (never `ray stop`, which stops every Ray here).
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _group_pids(pgid: int) -> list[tuple[int, str]]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if (
                os.getpgid(int(d)) != pgid
                or Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            ):
                continue  # zombies of a stopped node count as gone
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        out.append((int(d), cmd))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
            if d.isdigit() and int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.time() + 3
        while time.time() < deadline and _group_pids(pgid):
            time.sleep(0.2)
    proc.wait(timeout=10)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = (
        f"import ray, logging; ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else 0


@pytest.fixture
def two_nodes() -> Iterator[dict[str, Any]]:
    pytest.importorskip("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temps = [_short_tmp("g3h"), _short_tmp("g3w")]
    env = {
        **os.environ,
        # A dead node is noticed in ~2 s instead of the default ~30 s.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "3",
        # `ray start` turns on token authentication (a token in ~/.ray): a cluster of the test needs none.
        "RAY_AUTH_MODE": "disabled",
        "RAY_ADDRESS": "",
    }
    env.pop("RAY_ADDRESS")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _ray_start(
                ["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"],
                temps[0],
                env,
            )
        )
        deadline = time.time() + 90
        while _alive_nodes(address, env) < 1:
            assert time.time() < deadline, "the head node did not start"
            time.sleep(1)
        procs.append(_ray_start(["--address", address, "--num-cpus", "1"], temps[1], env))
        while _alive_nodes(address, env) < 2:
            assert time.time() < deadline, "the second node did not join"
            time.sleep(1)
        yield {"address": address, "env": env, "worker": procs[1]}
    finally:
        for p in reversed(procs):
            _stop(p)
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)


SLEEP = 1.0  # seconds per generate stage: the lost node is always running one
DRIVER = """
import sys, json, time, ray
sys.path.insert(0, sys.argv[1])
from test_ray_executor import _standin_engine
from pathlib import Path
ray.init(address=sys.argv[5], log_to_driver=False)
res = _standin_engine(Path(sys.argv[2]), int(sys.argv[3]), 1, {"sleep": float(sys.argv[4])},
                      executor="ray", ray_address=sys.argv[5]).run()
time.sleep(2)  # task events reach the GCS about once a second
retried = {e.task_id for e in ray._private.state.state._get_all_task_events() if e.attempt_number > 0}
print("RESULT", json.dumps({"ran": res.ran, "failed": res.failed, "retried": len(retried)}))
"""


@pytest.mark.slow
def test_two_node_cluster_gives_the_local_numbers(two_nodes: dict[str, Any], tmp_path: Path) -> None:
    spec = _quickstart_spec(tmp_path)
    env = {**two_nodes["env"], "PYTHONPATH": str(HERE)}
    for out, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", two_nodes["address"]])):
        r = subprocess.run(
            [str(VENV_BIN / "gen3deval"), "run", str(spec), "--out", str(tmp_path / out), "--quiet", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert _stage_values(tmp_path / "ray") == _stage_values(tmp_path / "local")


@pytest.mark.slow
def test_losing_a_node_mid_run_loses_and_duplicates_nothing(
    two_nodes: dict[str, Any], tmp_path: Path
) -> None:
    n = 6
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(HERE),
            str(tmp_path / "run"),
            str(n),
            str(SLEEP),
            two_nodes["address"],
        ],
        env=two_nodes["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill the second node's raylet once the run is under way (some stages committed).
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and proc.poll() is None, "the run did not get going"
            with contextlib.suppress(Exception), Store(tmp_path / "run", readonly=True) as store:
                if len(store.all()) >= 6:
                    break
            time.sleep(0.2)
        raylets = [pid for pid, cmd in _group_pids(two_nodes["worker"].pid) if "/raylet" in cmd.split(" ")[0]]
        assert len(raylets) == 1
        # The node dies as with a machine crash: its raylet and the worker processes it started (its children,
        # in their own sessions), so the stage running there is lost mid-way, not finished by an orphan.
        workers = [p for p in _children(raylets[0]) if "ray::" in _cmdline(p)]
        assert workers
        for pid in [raylets[0], *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    assert sum(res["ran"].values()) == n * 8 and not any(res["failed"].values())
    assert res["retried"] >= 1  # Ray did rerun the task lost with the node
    with Store(tmp_path / "run", readonly=True) as store:
        rows = store.all()
    assert len(rows) == n * 8 and all(r.ok and r.runs == 1 for r in rows.values())
    _standin_engine(tmp_path / "local", n, 2, {"sleep": SLEEP}).run()
    assert _stage_values(tmp_path / "run") == _stage_values(tmp_path / "local")
