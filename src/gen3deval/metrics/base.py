"""Metric metadata and the ``METRICS`` registry (keys of PROTOCOLS.md sections 5 and 7).

Each key maps to a :class:`MetricSpec`. Its ``fn`` computes that one metric alone; the calling convention
follows ``inputs``:

- ``("points", "normals")``: ``fn(a_pts, a_nrm, b_pts, b_nrm) -> float`` on surface samples
  (a = candidate, b = reference; see :mod:`gen3deval.metrics.geometry`),
- ``("mesh",)``: ``fn(a_mesh, b_mesh, resolution=128) -> float`` (see :mod:`gen3deval.metrics.volume`),
- ``("images",)``: ``fn(views_a, views_b) -> float``, the mean over views (see :mod:`gen3deval.metrics.image`;
  ``lpips`` and ``clip_image_sim`` are learned: :mod:`gen3deval.metrics.lpips`, :mod:`gen3deval.metrics.clip`),
- ``("images", "text")``: ``fn(views, text) -> float`` (``clip_score``: renders vs the case's caption),
- ``("images", "input_image")``: ``fn(image, views) -> float`` (``clip_image_to_3d``: the case's input image vs
  the candidate's renders).

Metrics with a ``model`` (``clip``, ``lpips``) need the ``clip`` extra (torch, transformers) and weights; the
engine checks that they load before a run and reports a metric it cannot compute as skipped.

Batch APIs (``geometry_metrics``, ``image_metrics``, :func:`gen3deval.compare.compare`) compute many keys at
once and are what pipelines use. ``fscore@T`` exists for any T > 0: :func:`metric_info` parses it.

This registry is the single source of truth about metrics: direction, unit, display, aggregation and the
failure score; the key lists of :mod:`gen3deval.compare` and :mod:`gen3deval.config` are derived from it.
Metrics defined in PROTOCOLS.md but not implemented yet (``UNAVAILABLE_METRICS``) are described by
:func:`metric_info` too (``available`` False), but are not in ``METRICS``.
"""

from __future__ import annotations

import importlib
import math
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
            value (0 for IoU/F-score/NC/PSNR, -1 for SSIM, 1 for MSE, +inf for distances), so an all-cases
            value can never look better than the valid-only one.
        available: False for metrics PROTOCOLS.md defines that this version cannot compute yet
            (``unavailable`` then says why; ``fn`` is None).
        model: the learned model the metric runs (``"clip"``, ``"lpips"``), None for model-free metrics.
    """

    key: str
    fn: Callable[..., float | None] | str | None
    higher_is_better: bool
    unit: str
    inputs: tuple[str, ...]
    description: str
    display: str
    scale: float = 1.0
    aggregate: str = "mean"
    worst: float = 0.0
    available: bool = True
    unavailable: str = ""
    model: str | None = None

    @property
    def reference_free(self) -> bool:
        """Computed from the candidate and the case's own inputs (caption, input image): no reference mesh."""
        return len(self.inputs) > 1 and self.inputs[0] == "images"

    @property
    def name(self) -> str:
        return self.key

    def resolve(self) -> Callable[..., float | None]:
        """The callable behind ``fn`` (imports it when ``fn`` is a ``"module:attr"`` string)."""
        if self.fn is None:
            raise UserInputError(f"{self.key}: {self.unavailable or 'not available'}")
        if isinstance(self.fn, str):
            module, _, attr = self.fn.partition(":")
            fn: Callable[..., float | None] = getattr(importlib.import_module(module), attr)
            return fn
        return self.fn

    def __call__(self, *args: Any, **kwargs: Any) -> float | None:
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
            # JSON has no infinity: None stands for +inf (the worst of the lower-is-better distances)
            "worst": self.worst if math.isfinite(self.worst) else None,
            "available": self.available,
            "model": self.model,
            "inputs": list(self.inputs),
            "description": self.description,
        }


METRICS: Registry[MetricSpec] = Registry("metric")

_G = "gen3deval.metrics.geometry"
_V = "gen3deval.metrics.volume"
_I = "gen3deval.metrics.image"
_C = "gen3deval.metrics.clip"
_PTS = ("points",)
_PTS_N = ("points", "normals")
_IMG = ("images",)
LENGTH = "unit length"  # distances in the normalised frame (bbox: the longest side is 1)
INF = math.inf
# PSNR of identical images (mse = 0) and the most any PSNR can be: 100 dB (= mse 1e-10, far below one 8-bit
# level, (1/255)^2 ~ 1.5e-5), so a pixel-identical view never makes a mean infinite.
PSNR_CAP_DB = 100.0
DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05)


def _short(x: float) -> str:
    """The shortest text that reads back as exactly ``x``: ``%g`` when lossless (0.01 -> "0.01",
    5.0 -> "5"), else Python's shortest round-trip repr (0.0100001 -> "0.0100001", 1/3 -> "0.3333333333333333")."""
    g = f"{x:g}"
    return g if float(g) == x else repr(float(x))


def fscore_key(threshold: float) -> str:
    """The key of the F-score at ``threshold``: ``fscore@0.01`` for 0.01. Lossless: the text after ``@``
    reads back as exactly ``threshold``, so two different thresholds never share a key."""
    return f"fscore@{_short(float(threshold))}"


def _fscore_spec(key: str, threshold: float) -> MetricSpec:
    return MetricSpec(
        key,
        _FScoreAt(threshold),
        True,
        "fraction",
        _PTS,
        f"2PR/(P+R), P = share of a with d(a,B) < {_short(threshold)}, R = share of b with d(b,A) < "
        f"{_short(threshold)}",
        f"F@{_short(threshold * 100)}",
        aggregate="mean",
        worst=0.0,
    )


@dataclass(frozen=True)
class _FScoreAt:
    """``fscore`` at a fixed threshold, imported on first call (geometry imports this module)."""

    threshold: float

    def __call__(self, a_pts: Any, a_nrm: Any, b_pts: Any, b_nrm: Any) -> float:
        from gen3deval.metrics.geometry import fscore

        return fscore(a_pts, a_nrm, b_pts, b_nrm, threshold=self.threshold)


# In order: the order of result rows, tables and config's metric lists.
_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("chamfer_l1", f"{_G}:chamfer_l1", False, LENGTH, _PTS,
               "1/2 (mean_a d(a,B) + mean_b d(b,A)), Euclidean nearest-neighbour distances (point-cloud-utils' "
               "chamfer_distance is 2 x this)", "CD-L1 x10^3", 1e3, "median", INF),
    MetricSpec("chamfer_l2", f"{_G}:chamfer_l2", False, f"{LENGTH}^2", _PTS,
               "1/2 (mean_a d(a,B)^2 + mean_b d(b,A)^2)", "CD x10^3", 1e3, "median", INF),
    MetricSpec("chamfer_l2_sum", f"{_G}:chamfer_l2_sum", False, f"{LENGTH}^2", _PTS,
               "mean_a d(a,B)^2 + mean_b d(b,A)^2 (PyTorch3D chamfer_distance with its default mean point "
               "reduction, batch of one; CAD-Recode)", "CD-sum x10^3", 1e3, "median", INF),
    MetricSpec("hausdorff", f"{_G}:hausdorff", False, LENGTH, _PTS,
               "max(max_a d(a,B), max_b d(b,A))", "HD", 1.0, "median", INF),
    *(_fscore_spec(fscore_key(t), t) for t in DEFAULT_THRESHOLDS),
    MetricSpec("normal_consistency", f"{_G}:normal_consistency", True, "fraction", _PTS_N,
               "1/2 (mean_a |n_a . n_nn(a,B)| + mean_b |n_b . n_nn(b,A)|), unsigned face normals", "NC",
               1.0, "mean", 0.0),
    MetricSpec("volume_iou", f"{_V}:volume_iou_value", True, "fraction", ("mesh",),
               "vol(A and B) / vol(A or B): exact booleans if both are watertight solids, else a "
               "resolution^3 grid (volume_iou_method says which); undefined (null) when the reference "
               "encloses no volume", "IoU", 1.0, "mean", 0.0),
    MetricSpec("best_iou", f"{_V}:best_iou_value", True, "fraction", ("mesh",),
               "max volume_iou over the 4 proper PCA alignments after inertia normalisation (CAD protocol)",
               "Best IoU", 1.0, "mean", 0.0),
    MetricSpec("mecagent_iou", "gen3deval.metrics.compat_mecagent:compat_mecagent_iou", True, "fraction", ("mesh",),
               "compat:mecagent (never a default): surface-voxel IoU at pitch 0.05 r_g after inertia normalisation, "
               "best of 4 principal-axis sign patterns of which 1 or 3 are reflections (mecagent metrics/best_iou.py)",
               "IoU (compat:mecagent)", 1.0, "mean", 0.0),
    MetricSpec("mse", f"{_I}:views_mse", False, "(sRGB/255)^2", _IMG,
               "mean over pixels and channels of (a-b)^2, RGB in [0,1], mean over views", "MSE", 1.0,
               "mean", 1.0),
    MetricSpec("psnr", f"{_I}:views_psnr", True, "dB", _IMG,
               f"min(10 log10(1/mse), {PSNR_CAP_DB:g}) per view ({PSNR_CAP_DB:g} dB if identical), mean over "
               "views", "PSNR", 1.0, "mean", 0.0),
    MetricSpec("ssim", f"{_I}:views_ssim", True, "fraction", _IMG,
               "SSIM (Gaussian window sigma 1.5, data range 1, per channel, averaged), mean over views", "SSIM",
               1.0, "mean", -1.0),
    MetricSpec("silhouette_iou", f"{_I}:views_silhouette_iou", True, "fraction", _IMG,
               "IoU of the alpha > 0.5 masks, mean over views", "Sil. IoU", 1.0, "mean", 0.0),
    # Learned metrics (PROTOCOLS.md sections 7-8): raw cosines in [-1, 1], shown x100 like the papers.
    MetricSpec("lpips", "gen3deval.metrics.lpips:views_lpips", False, "distance", _IMG,
               "LPIPS v0.1 AlexNet, inputs scaled to [-1, 1], mean over views", "LPIPS", 1.0, "mean", 1.0,
               model="lpips"),
    MetricSpec("clip_image_sim", f"{_C}:clip_image_sim", True, "cosine", _IMG,
               "cos of the CLIP image embeddings of candidate and reference renders (same view), mean over views",
               "CLIP-I x100", 100.0, "mean", -1.0, model="clip"),
    MetricSpec("clip_score", f"{_C}:clip_score", True, "cosine", ("images", "text"),
               "cos(CLIP image, CLIP text) of the trellis8 renders composited over white and the caption "
               "(77 tokens), mean over views; no clamp, no logit scale (PROTOCOLS.md section 8)",
               "CLIP x100", 100.0, "mean", -1.0, model="clip"),
    MetricSpec("clip_score_clamped", f"{_C}:clip_score_clamped", True, "cosine", ("images", "text"),
               "max(cos, 0) per view, mean over views; x100 is torchmetrics' CLIPScore", "CLIP+ x100", 100.0,
               "mean", 0.0, model="clip"),
    MetricSpec("clip_image_to_3d", f"{_C}:clip_image_to_3d", True, "cosine", ("images", "input_image"),
               "cos(CLIP of the case's input image, CLIP of each trellis8 render of the candidate), mean over "
               "views (the TRELLIS image-to-3D protocol)", "CLIP-img x100", 100.0, "mean", -1.0, model="clip"),
)  # fmt: skip

# Defined in PROTOCOLS.md, not implemented by this version: described (metric_info) but not computable.
_UNAVAILABLE_SPECS: tuple[MetricSpec, ...] = ()
_UNAVAILABLE = {spec.key: spec for spec in _UNAVAILABLE_SPECS}

for _spec in _SPECS:
    METRICS.add(_spec.key, _spec)

# Key lists derived from the registry (public names kept for their importers).
GEOMETRY_KEYS = tuple(s.key for s in _SPECS if s.inputs[0] == "points" and not s.key.startswith("fscore@"))
MESH_KEYS = tuple(s.key for s in _SPECS if s.inputs == ("mesh",))
# Mesh metrics computed only when a protocol asks (their own normalisation and alignment): the CAD protocol's
# best IoU and the compat:mecagent IoU that reproduces published numbers.
ON_REQUEST_KEYS = ("best_iou", "mecagent_iou")
# Candidate vs reference renders: model-free ones (every protocol's default) and all of them (learned included).
IMAGE_KEYS = tuple(s.key for s in _SPECS if s.inputs == _IMG and s.model is None)
ALL_IMAGE_KEYS = tuple(s.key for s in _SPECS if s.inputs == _IMG)
# Reference-free: scored from the candidate's renders and the case's caption or input image.
REFERENCE_FREE_KEYS = tuple(s.key for s in _SPECS if s.reference_free)
# {key: model} of the learned metrics.
MODEL_OF = {s.key: s.model for s in _SPECS if s.model is not None}
# {key: why} of the metrics PROTOCOLS.md defines that this version cannot compute.
UNAVAILABLE_METRICS = {s.key: s.unavailable for s in _UNAVAILABLE_SPECS}


def geometry_metric_names() -> tuple[str, ...]:
    """The geometry metric names of a protocol, in row order, with ``fscore`` standing for every
    ``fscore@T`` (a protocol expands it per threshold): chamfer_l1, ..., fscore, normal_consistency, ..."""
    names: list[str] = []
    for s in _SPECS:
        if s.inputs[0] in ("points", "mesh"):
            name = "fscore" if s.key.startswith("fscore@") else s.key
            if name not in names:
                names.append(name)
    return tuple(names)


def known_metric_keys() -> list[str]:
    """Every computable registered key (``fscore@T`` is accepted for any T > 0 beyond the registered
    defaults; the unavailable metrics are in ``UNAVAILABLE_METRICS``)."""
    return METRICS.names()


def metric_info(key: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``key``: every key a result row can have, i.e. the registered metrics,
    ``fscore@T`` for any T > 0 and the unavailable metrics (``available`` False). Unknown keys raise
    :class:`~gen3deval.errors.UserInputError` listing the known ones."""
    if key in METRICS:
        return METRICS.get(key)
    if key in _UNAVAILABLE:
        return _UNAVAILABLE[key]
    if key.startswith("fscore@"):
        from gen3deval.metrics.geometry import parse_fscore_threshold

        t = parse_fscore_threshold(key)
        return _fscore_spec(key, t)
    raise UserInputError(
        f"unknown metric {key!r}; known: {', '.join(known_metric_keys())} (and fscore@T for any T > 0)"
    )
