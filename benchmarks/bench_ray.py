"""Per-stage overhead of the ``ray`` executor vs the local process pool, 1- vs 2-node numbers on this machine,
and a scaling table on paper for the 1,012 x 5 x 3 Code3DBench workload.

    .venv/bin/python benchmarks/bench_ray.py [--cases 200] [--quickstart 8]

- no-op stages (Engine(functions=...) with stages that write one small file): the engine's cost per stage,
  local pool (jobs=2) vs a local Ray instance (num_cpus=2) vs two ``ray start`` nodes of 1 CPU each;
- the real quickstart (oracle + bbox, ``--quickstart`` cases) on the local pool and on Ray;
- the table: wall time = stages x per-stage CPU seconds / (nodes x CPUs per node) + per-stage driver overhead
  x stages (the driver commits every row: its cost does not shrink with nodes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "engine"))

from gen3deval.config import SystemSpec, get_protocol  # noqa: E402
from gen3deval.engine.runner import CaseEntry, Engine  # noqa: E402
from gen3deval.engine.stages import StageResult  # noqa: E402
from gen3deval.suites.base import Case  # noqa: E402

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": []})


def _noop(workdir: Path, **_: Any) -> StageResult:
    p = Path(workdir) / "out.txt"
    p.write_text("x")
    return StageResult(value={"v": 1}, files={"mesh": str(p), "image": str(p), "renders": [str(p)]})


NOOP = dict.fromkeys(("reference", "generate", "execute", "render", "score"), _noop)


def noop_run(n: int, executor: str, address: str | None = None) -> tuple[float, int]:
    """Seconds and stages of ``n`` cases x one mesh system of no-op stages."""
    out = Path(tempfile.mkdtemp(prefix="g3b")) / "run"
    eng = Engine(
        out,
        [CaseEntry(key=f"c{i:04d}", case=Case(id=f"c{i:04d}"), suite="t") for i in range(n)],
        [SystemSpec(name="standin", label="m")],
        PROTOCOL,
        fingerprint={"name": "t", "hash": "t"},
        jobs=2,
        functions=NOOP,
        needs_reference={"m": True},
        executor=executor,
        ray_address=address,
    )
    t = time.perf_counter()
    res = eng.run()
    dt = time.perf_counter() - t
    shutil.rmtree(out.parent, ignore_errors=True)
    return dt, sum(res.ran.values())


def quickstart(n: int, extra: list[str], env: dict[str, str] | None = None) -> float:
    folder = Path(tempfile.mkdtemp(prefix="g3q"))
    spec = folder / "spec.yaml"
    spec.write_text(
        "suite: quickstart\nsystems: [oracle, bbox]\n"
        "protocol: {name: default, samples: 4000, iou_resolution: 48, render_size: 128}\n"
        f"limit: {n}\njobs: 2\n"
    )
    t = time.perf_counter()
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "gen3deval"),
            "run",
            str(spec),
            "--out",
            str(folder / "run"),
            "--quiet",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(folder, ignore_errors=True)
    return dt


def two_nodes() -> tuple[str, list[subprocess.Popen[bytes]], dict[str, str]]:
    """Two ``ray start`` nodes of 1 CPU on this machine (the test's helpers), with their env."""
    import test_ray_executor as t

    port = t._free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    address = f"127.0.0.1:{port}"
    procs = [
        t._ray_start(
            ["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"],
            t._short_tmp("g3h"),
            env,
        )
    ]
    while t._alive_nodes(address, env) < 1:
        time.sleep(1)
    procs.append(t._ray_start(["--address", address, "--num-cpus", "1"], t._short_tmp("g3w"), env))
    while t._alive_nodes(address, env) < 2:
        time.sleep(1)
    return address, procs, env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--quickstart", type=int, default=8)
    a = ap.parse_args()
    import ray

    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    dt, n = noop_run(a.cases, "local")
    out["noop_local"] = {"stages": n, "s": dt, "ms_per_stage": 1000 * dt / n}
    t0 = time.perf_counter()
    dt, n = noop_run(a.cases, "ray")  # starts (and stops) its own instance: the start is in the time
    out["noop_ray_1node_incl_start"] = {"stages": n, "s": dt, "ms_per_stage": 1000 * dt / n}
    temp = tempfile.mkdtemp(prefix="g3r", dir="/tmp")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    out["ray_start_s"] = time.perf_counter() - t0
    noop_run(20, "ray")  # warm the workers
    dt, n = noop_run(a.cases, "ray")
    out["noop_ray_1node"] = {"stages": n, "s": dt, "ms_per_stage": 1000 * dt / n}
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    out["quickstart_local_s"] = quickstart(a.quickstart, [])
    out["quickstart_ray_1node_s"] = quickstart(a.quickstart, ["--executor", "ray"])
    address, procs, env = two_nodes()
    try:
        ray.init(address=address, log_to_driver=False)
        noop_run(20, "ray", address)
        dt, n = noop_run(a.cases, "ray", address)
        out["noop_ray_2nodes"] = {"stages": n, "s": dt, "ms_per_stage": 1000 * dt / n}
        ray.shutdown()
        out["quickstart_ray_2nodes_s"] = quickstart(
            a.quickstart, ["--executor", "ray", "--ray-address", address], env
        )
    finally:
        import test_ray_executor as t

        for p in procs:
            t._stop(p)
            shutil.rmtree(p.args[p.args.index("--temp-dir") + 1], ignore_errors=True)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
