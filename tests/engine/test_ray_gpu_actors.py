"""On a Ray cluster with GPUs, the stages that run a model (a local model system's generate stages, CLIP-scored
score stages) go to one long-lived actor per GPU, so weights load once per GPU; other stages stay CPU tasks.
The GPUs here are Ray's logical resources (``ray.init(num_gpus=2)``): the routing is what is tested."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from testdata import worker_probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="g3g", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _item(stage: str, label: str) -> tuple[str, dict[str, Any], str]:
    return (stage, {"system": {"name": "x", "label": label}}, "/nonexistent")


def test_model_stages_go_to_one_actor_per_gpu(gpu_ray: Any) -> None:
    from gen3deval.engine.ray_executor import RayExecutor

    ex = RayExecutor(model_systems=frozenset({"hf"}), model_scores=True)
    try:
        assert len(ex._actors) == 2  # one per GPU of the cluster
        model = [ex.submit(worker_probe, [_item("generate", "hf")] * 2) for _ in range(8)]
        scores = [ex.submit(worker_probe, [_item("score", "oracle")]) for _ in range(4)]
        plain = [ex.submit(worker_probe, [_item("render", "hf")]) for _ in range(4)]
        actor_pids = {pid for pid, _ in (f.result(timeout=120) for f in model + scores)}
        task_pids = {pid for pid, _ in (f.result(timeout=120) for f in plain)}
        assert len(actor_pids) == 2  # the same two long-lived processes for every model batch
        assert not actor_pids & task_pids  # CPU stages run in ordinary tasks
        gpus = {gpu for _, gpu in (f.result() for f in model)}
        assert gpus <= {"0", "1"} and len(gpus) == 2  # each actor holds its own GPU
        assert not ex.runs_model([_item("generate", "hf"), _item("generate", "oracle")])  # mixed: a task
    finally:
        ex.shutdown()


def test_without_model_stages_no_actor_is_made(gpu_ray: Any) -> None:
    from gen3deval.engine.ray_executor import RayExecutor

    ex = RayExecutor()
    try:
        assert ex._actors == [] and not ex.runs_model([_item("generate", "hf")])
        assert ex.submit(worker_probe, [_item("generate", "hf")]).result(timeout=120)[0] > 0
    finally:
        ex.shutdown()
