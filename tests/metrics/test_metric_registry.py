"""The METRICS registry and metric_info (keys of PROTOCOLS.md sections 5 and 7)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from gen3deval.errors import UserInputError
from gen3deval.mesh.types import Mesh
from gen3deval.metrics.base import METRICS, MetricSpec, metric_info
from gen3deval.metrics.geometry import geometry_metrics
from gen3deval.metrics.volume import best_iou, volume_iou

ALL_KEYS = {
    "chamfer_l1",
    "chamfer_l2",
    "chamfer_l2_sum",
    "hausdorff",
    "fscore@0.01",
    "fscore@0.02",
    "fscore@0.05",
    "normal_consistency",
    "volume_iou",
    "best_iou",
    "mecagent_iou",
    "mse",
    "psnr",
    "ssim",
    "silhouette_iou",
    "lpips",
    "clip_image_sim",
    "clip_score",
    "clip_score_clamped",
    "clip_image_to_3d",
}
LEARNED = {"lpips": "lpips", "clip_image_sim": "clip", "clip_score": "clip", "clip_score_clamped": "clip",
           "clip_image_to_3d": "clip"}  # fmt: skip


def test_every_key_is_registered_with_metadata():
    assert set(METRICS.names()) == ALL_KEYS
    for key in ALL_KEYS:
        spec = metric_info(key)
        assert isinstance(spec, MetricSpec) and spec.key == key == spec.name
        assert spec.display and spec.unit and spec.description
        assert spec.inputs in (
            ("points",), ("points", "normals"), ("mesh",), ("images",), ("images", "text"), ("images", "input_image")
        )  # fmt: skip
        assert spec.available and spec.model == LEARNED.get(key)
        assert spec.reference_free == (key in ("clip_score", "clip_score_clamped", "clip_image_to_3d"))
        d = spec.to_dict()
        assert set(d) >= {"higher_is_better", "unit", "display"}
    lower = {"chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "mse", "lpips"}
    for key in ALL_KEYS:
        assert metric_info(key).higher_is_better == (key not in lower), key
    assert metric_info("chamfer_l2").display == "CD x10^3" and metric_info("chamfer_l2").scale == 1000
    assert [metric_info(f"fscore@{t}").display for t in ("0.01", "0.02", "0.05")] == ["F@1", "F@2", "F@5"]
    # Cosines are stored raw and shown x100 (the papers' numbers); a failure scores the worst cosine.
    assert metric_info("clip_score").scale == 100 and metric_info("clip_score").worst == -1.0
    assert metric_info("clip_score_clamped").worst == 0.0


def test_generic_fscore_keys():
    spec = metric_info("fscore@0.1")
    assert spec.display == "F@10" and spec.higher_is_better
    a = np.zeros((1, 3))
    b = np.array([[0.05, 0, 0]])
    assert spec(a, None, b, None) == 1.0
    assert metric_info("fscore@0.01")(a, None, b, None) == 0.0


@pytest.mark.parametrize("key", ["chamfer", "CD", "lpips_typo", ""])
def test_unknown_keys_list_the_known_ones(key):
    with pytest.raises(UserInputError, match=r"known: .*chamfer_l1"):
        metric_info(key)


def test_bad_fscore_threshold_is_named():
    with pytest.raises(UserInputError, match="'x' is not a number"):
        metric_info("fscore@x")


def test_point_metric_functions_agree_with_the_batch():
    rng = np.random.default_rng(0)
    a, b = rng.random((400, 3)), rng.random((300, 3))
    an = rng.normal(size=(400, 3))
    bn = rng.normal(size=(300, 3))
    an /= np.linalg.norm(an, axis=1, keepdims=True)
    bn /= np.linalg.norm(bn, axis=1, keepdims=True)
    batch = geometry_metrics(a, an, b, bn)
    for key, value in batch.items():
        assert metric_info(key)(a, an, b, bn) == value, key


def test_mesh_metric_functions_agree():
    s1 = trimesh.creation.icosphere(2, radius=0.5)
    s2 = trimesh.creation.icosphere(2, radius=0.4)
    m1, m2 = Mesh.from_arrays(s1.vertices, s1.faces), Mesh.from_arrays(s2.vertices, s2.faces)
    assert metric_info("volume_iou")(m1, m2) == volume_iou(m1, m2)[0]
    assert metric_info("best_iou")(m1, m2) == best_iou(m1, m2)[0]


# ------------------------------------------------------------------------- issue 8: the single source ---
def test_every_row_key_is_described_with_aggregate_and_worst():
    import math

    from gen3deval.metrics.base import UNAVAILABLE_METRICS

    keys = [*ALL_KEYS, "fscore@0.1", "fscore@0.0100001", *UNAVAILABLE_METRICS]
    for key in keys:
        spec = metric_info(key)
        assert spec.aggregate in ("mean", "median"), key
        if spec.higher_is_better:  # bounded scores: mean, failures at the bottom of the range
            assert spec.aggregate == "mean" and math.isfinite(spec.worst), key
        elif spec.aggregate == "median":  # unbounded distances
            assert spec.worst == math.inf, key
    assert {k: metric_info(k).worst for k in ("volume_iou", "best_iou", "ssim", "psnr", "mse")} == {
        "volume_iou": 0.0, "best_iou": 0.0, "ssim": -1.0, "psnr": 0.0, "mse": 1.0,
    }  # fmt: skip
    assert metric_info("chamfer_l2").to_dict()["worst"] is None  # +inf, JSON-safe
    for key in UNAVAILABLE_METRICS:
        spec = metric_info(key)
        assert not spec.available and spec.unavailable == UNAVAILABLE_METRICS[key] and key not in METRICS
        with pytest.raises(UserInputError, match="not available"):
            spec()
    assert metric_info("lpips").higher_is_better is False and metric_info("clip_score").higher_is_better


def test_config_and_compare_lists_come_from_the_registry():
    from gen3deval import compare, config
    from gen3deval.metrics import base

    assert config.GEOMETRY_METRICS == (
        "chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "fscore", "normal_consistency",
        "volume_iou", "best_iou", "mecagent_iou",
    )  # fmt: skip
    assert (
        "mecagent_iou" not in config.DEFAULT_GEOMETRY_METRICS
        and "mecagent_iou" not in compare.default_metric_keys()
    )
    assert config.IMAGE_METRICS == base.IMAGE_KEYS == ("mse", "psnr", "ssim", "silhouette_iou")
    assert config.UNAVAILABLE_METRICS == base.UNAVAILABLE_METRICS
    assert set(compare.GEOMETRY_METRIC_KEYS) | {"fscore"} == set(config.GEOMETRY_METRICS)
    assert config.fscore_key is base.fscore_key
    # every key a default-protocol row has is described
    for key in config.get_protocol("default").metric_keys():
        assert metric_info(key).key == key


def test_fscore_keys_are_lossless():
    from gen3deval.metrics.base import fscore_key
    from gen3deval.metrics.geometry import parse_fscore_threshold

    assert [fscore_key(t) for t in (0.01, 0.02, 0.05, 0.1, 1e-5)] == [
        "fscore@0.01", "fscore@0.02", "fscore@0.05", "fscore@0.1", "fscore@1e-05",
    ]  # fmt: skip
    # %g kept 6 digits: 0.01 and 0.01000001 both became fscore@0.01
    assert fscore_key(0.01000001) != fscore_key(0.01) and fscore_key(0.0100001) == "fscore@0.0100001"
    rng = np.random.default_rng(0)
    ts = np.concatenate([rng.random(2000) * 0.1, 0.01 + np.arange(1, 50) * 1e-12])
    keys = [fscore_key(float(t)) for t in ts]
    assert len(set(keys)) == len(set(ts.tolist()))
    for t, key in zip(ts, keys, strict=True):
        assert parse_fscore_threshold(key) == float(t)
