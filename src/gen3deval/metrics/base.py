"""Metric metadata and the ``METRICS`` registry (keys of PROTOCOLS.md sections 5 and 7).

Each key maps to a :class:`MetricSpec`. Its ``fn`` computes that one metric alone; the calling convention
follows ``inputs``:

- ``("points", "normals")``: ``fn(a_pts, a_nrm, b_pts, b_nrm) -> float`` on surface samples
  (a = candidate, b = reference; see :mod:`gen3deval.metrics.geometry`),
- ``("mesh",)``: ``fn(a_mesh, b_mesh, resolution=128) -> float`` (see :mod:`gen3deval.metrics.volume`),
- ``("images",)``: ``fn(views_a, views_b) -> float``, the mean over views (see :mod:`gen3deval.metrics.image`).

Batch APIs (``geometry_metrics``, ``image_metrics``, :func:`gen3deval.compare.compare`) compute many keys at
once and are what pipelines use. ``fscore@T`` exists for any T > 0: :func:`metric_info` parses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gen3deval.errors import UserInputError
from gen3deval.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """What a metric key means.

    Attributes:
        key: the exact key in JSON/CSV output and on the command line (e.g. ``chamfer_l2``).
        fn: the function, or ``"module:attr"`` resolved on first call (keeps imports light).
        higher_is_better: the direction of "better".
        unit: unit of the raw value (e.g. ``"unit length"`` = normalised object units, ``"dB"``).
        inputs: what the metric is computed from: ``("points", "normals")``, ``("mesh",)`` or ``("images",)``.
        description: one line, the definition.
        display: the column name in tables, e.g. ``"CD x10^3"``, ``"F@1"``.
        scale: tables show ``value * scale`` under ``display`` (1000 for ``"CD x10^3"``).
        aggregate: the statistic over cases, ``"mean"`` or ``"median"`` (unbounded lower-is-better metrics
            such as Chamfer use the median, so one failure scored +inf does not make the "all" value +inf).
            The valid-only and all-cases columns of a report use the same statistic.
        worst: the value a failed case is scored with in all-cases aggregates: the metric's worst possible
            value (0 for IoU/F-score/NC, -1 for SSIM, +inf for distances), so an all-cases value can never
            look better than the valid-only one.
    """

    key: str
    fn: Callable[..., float] | str
    higher_is_better: bool
    unit: str
    inputs: tuple[str, ...]
    description: str
    display: str
    scale: float = 1.0
    aggregate: str = "mean"
    worst: float = 0.0

    @property
    def name(self) -> str:
        return self.key

    def resolve(self) -> Callable[..., float]:
        """The callable behind ``fn`` (imports it when ``fn`` is a ``"module:attr"`` string)."""
        if isinstance(self.fn, str):
            module, _, attr = self.fn.partition(":")
            fn: Callable[..., float] = getattr(importlib.import_module(module), attr)
            return fn
        return self.fn

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        return self.resolve()(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (what run metadata records): key, higher_is_better, unit, display, scale, ..."""
        return {
            "key": self.key,
            "higher_is_better": self.higher_is_better,
            "unit": self.unit,
            "display": self.display,
            "scale": self.scale,
            "aggregate": self.aggregate,
            "worst": self.worst,
            "inputs": list(self.inputs),
            "description": self.description,
        }


METRICS: Registry[MetricSpec] = Registry("metric")

_G = "gen3deval.metrics.geometry"
_V = "gen3deval.metrics.volume"
_I = "gen3deval.metrics.image"
_PTS = ("points",)
_PTS_N = ("points", "normals")
LENGTH = "unit length"  # distances in the normalised frame (bbox: the longest side is 1)

GEOMETRY_KEYS = ("chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "normal_consistency")
DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05)
MESH_KEYS = ("volume_iou", "best_iou")
IMAGE_KEYS = ("mse", "psnr", "ssim", "silhouette_iou")

for _spec in (
    MetricSpec("chamfer_l1", f"{_G}:chamfer_l1", False, LENGTH, _PTS,
               "1/2 (mean_a d(a,B) + mean_b d(b,A)), Euclidean nearest-neighbour distances", "CD-L1 x10^3", 1e3),
    MetricSpec("chamfer_l2", f"{_G}:chamfer_l2", False, f"{LENGTH}^2", _PTS,
               "1/2 (mean_a d(a,B)^2 + mean_b d(b,A)^2)", "CD x10^3", 1e3),
    MetricSpec("chamfer_l2_sum", f"{_G}:chamfer_l2_sum", False, f"{LENGTH}^2", _PTS,
               "mean_a d(a,B)^2 + mean_b d(b,A)^2 (PyTorch3D / point-cloud-utils convention)", "CD-sum x10^3", 1e3),
    MetricSpec("hausdorff", f"{_G}:hausdorff", False, LENGTH, _PTS,
               "max(max_a d(a,B), max_b d(b,A))", "HD"),
    MetricSpec("normal_consistency", f"{_G}:normal_consistency", True, "fraction", _PTS_N,
               "1/2 (mean_a |n_a . n_nn(a,B)| + mean_b |n_b . n_nn(b,A)|), unsigned face normals", "NC"),
    MetricSpec("volume_iou", f"{_V}:volume_iou_value", True, "fraction", ("mesh",),
               "vol(A and B) / vol(A or B): exact booleans if both watertight, else a resolution^3 grid "
               "(volume_iou_method says which)", "IoU"),
    MetricSpec("best_iou", f"{_V}:best_iou_value", True, "fraction", ("mesh",),
               "max volume_iou over the 4 proper PCA alignments after inertia normalisation (CAD protocol)",
               "Best IoU"),
    MetricSpec("mse", f"{_I}:views_mse", False, "(sRGB/255)^2", ("images",),
               "mean over pixels and channels of (a-b)^2, RGB in [0,1], mean over views", "MSE"),
    MetricSpec("psnr", f"{_I}:views_psnr", True, "dB", ("images",),
               "10 log10(1/mse) per view (inf if identical), mean over views", "PSNR"),
    MetricSpec("ssim", f"{_I}:views_ssim", True, "fraction", ("images",),
               "SSIM (Gaussian window sigma 1.5, data range 1, per channel, averaged), mean over views", "SSIM"),
    MetricSpec("silhouette_iou", f"{_I}:views_silhouette_iou", True, "fraction", ("images",),
               "IoU of the alpha > 0.5 masks, mean over views", "Sil. IoU"),
):  # fmt: skip
    METRICS.add(_spec.key, _spec)


@dataclass(frozen=True)
class _FScoreAt:
    """``fscore`` at a fixed threshold, imported on first call (geometry imports this module)."""

    threshold: float

    def __call__(self, a_pts: Any, a_nrm: Any, b_pts: Any, b_nrm: Any) -> float:
        from gen3deval.metrics.geometry import fscore

        return fscore(a_pts, a_nrm, b_pts, b_nrm, threshold=self.threshold)


def _fscore_spec(key: str, threshold: float) -> MetricSpec:
    return MetricSpec(
        key,
        _FScoreAt(threshold),
        True,
        "fraction",
        _PTS,
        f"2PR/(P+R), P = share of a with d(a,B) < {threshold:g}, R = share of b with d(b,A) < {threshold:g}",
        f"F@{threshold * 100:g}",
    )


def fscore_key(threshold: float) -> str:
    """The key of the F-score at ``threshold`` (``%g``): 0.01 -> ``fscore@0.01``."""
    return f"fscore@{threshold:g}"


for _t in DEFAULT_THRESHOLDS:
    METRICS.add(fscore_key(_t), _fscore_spec(fscore_key(_t), _t))


def known_metric_keys() -> list[str]:
    """Every registered key (``fscore@T`` is accepted for any T > 0 beyond the registered defaults)."""
    return METRICS.names()


def metric_info(key: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``key``; ``fscore@T`` works for any T > 0. Unknown keys raise
    :class:`~gen3deval.errors.UserInputError` listing the known ones."""
    if key in METRICS:
        return METRICS.get(key)
    if key.startswith("fscore@"):
        from gen3deval.metrics.geometry import parse_fscore_threshold

        return _fscore_spec(key, parse_fscore_threshold(key))
    raise UserInputError(
        f"unknown metric {key!r}; known: {', '.join(known_metric_keys())} (and fscore@T for any T > 0)"
    )
