"""Model lanes: the generate stages of a system with ``model_workers`` run in that system's own pool (one worker
per GPU with CUDA), every other stage in the run's pool; worker k of a lane sees only GPU k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gen3deval.engine.lanes import LanedExecutor, lane_pool
from gen3deval.engine.workers import make_executor
from testdata import worker_probe


def _item(stage: str, label: str) -> tuple[str, dict[str, Any], str]:
    return (stage, {"system": {"name": "hf", "label": label}}, "/nonexistent")


def test_generate_stages_of_a_laned_system_go_to_its_own_worker() -> None:
    main = make_executor(False, 2, "auto")
    ex = LanedExecutor(main, {"hf": lambda: lane_pool(1, 2, "auto")}, slots=3)
    try:
        lane = {ex.submit(worker_probe, [_item("generate", "hf")] * 2).result() for _ in range(6)}
        other = {ex.submit(worker_probe, [_item("generate", "oracle")]).result() for _ in range(6)}
        render = ex.submit(worker_probe, [_item("render", "hf")]).result()
        assert len(lane) == 1  # one worker loads the model, every batch goes to it
        ((lane_pid, gpu),) = lane
        assert gpu == "0"  # the lane's first worker is pinned to GPU 0
        assert lane_pid not in {pid for pid, _ in other} and render[0] != lane_pid  # others: the main pool
        assert ex.lane_of([_item("generate", "hf"), _item("generate", "oracle")]) is None  # mixed: main pool
        assert set(ex._processes) >= {lane_pid}
    finally:
        ex.shutdown()


def test_two_gpu_lane_pins_each_worker_to_its_gpu() -> None:
    pool = lane_pool(2, 2, "auto")
    try:
        futures = [pool.submit(worker_probe, []) for _ in range(8)]
        seen = {f.result() for f in futures}
        assert {gpu for _, gpu in seen} <= {"0", "1"}
        by_pid: dict[int, set[str | None]] = {}
        for pid, gpu in seen:
            by_pid.setdefault(pid, set()).add(gpu)
        assert all(len(g) == 1 for g in by_pid.values())  # a worker keeps its GPU
        if len(by_pid) == 2:
            assert {g.pop() for g in by_pid.values()} == {"0", "1"}
    finally:
        pool.shutdown()


def test_hf_asks_for_a_lane_only_on_gpus_or_when_told(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from gen3deval.systems.hf import HfSystem

    cpu = HfSystem({"model": str(tmp_path), "device": "cpu"})
    assert cpu.model_workers == 0 and cpu.gpus == 0  # CPU: every worker may load it, no lane
    told = HfSystem({"model": str(tmp_path), "device": "cpu", "model_workers": 1})
    assert told.model_workers == 1


def test_the_engine_gives_a_laned_system_its_lane(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from gen3deval.config import build_spec
    from gen3deval.engine.build import build_engine
    from gen3deval.models.testing import make_random_vlm
    from testdata import GENCAD

    if not GENCAD.exists():
        pytest.skip("shared data not available")
    vlm = make_random_vlm(tmp_path / "vlm", seed=0)
    systems = [{"name": "hf", "settings": {"model": str(vlm), "device": "cpu", "model_workers": 1}}, "oracle"]
    spec = build_spec(
        {"suites": [f"gencad:{GENCAD}"], "systems": systems, "protocol": "gencad", "limit": 1},
        out=tmp_path / "run",
        jobs=2,
    )
    engine, _ = build_engine(spec)
    ex = engine._make_executor()
    try:
        assert isinstance(ex, LanedExecutor) and ex.slots == 3
        assert ex.lane_of([("generate", {"system": {"label": "hf"}}, "")]) == "hf"
    finally:
        ex.shutdown()
    plain = build_spec(
        {"suites": [f"gencad:{GENCAD}"], "systems": ["oracle"], "limit": 1}, out=tmp_path / "r2"
    )
    ex2 = build_engine(plain)[0]._make_executor()
    try:
        assert not isinstance(ex2, LanedExecutor)  # nothing to lane: the plain pool
    finally:
        ex2.shutdown()
