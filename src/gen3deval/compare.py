"""``compare``: every geometry metric of a candidate mesh against a reference (PROTOCOLS.md sections 2-5).

The protocol, in order:

1. load (paths go through :func:`gen3deval.mesh.io.load_mesh` with ``up``),
2. normalise each mesh on its own (``normalize``; the reference never normalises the candidate),
3. align the candidate onto the reference (``align``; the 4x4 is returned under ``alignment``),
4. sample ``samples`` surface points of each mesh, the candidate and the reference from two independent
   streams of ``seed`` (:func:`gen3deval.mesh.sample.stream_seed`): bit-for-bit repeatable, and two meshes
   that share triangles are not sampled at the same places (which would make Chamfer too low),
5. point metrics from one nearest-neighbour query each way, ``volume_iou`` on the normalised, aligned meshes;
   ``best_iou`` follows its own protocol on the loaded meshes (inertia normalisation + the 4 PCA rotations).

A reference scored against many candidates can be loaded, normalised and sampled once:
``prepared = prepare_reference(path, samples=..., seed=...)`` then ``compare(candidate, prepared, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval._callable import make_module_callable
from gen3deval.errors import UserInputError
from gen3deval.mesh.types import Mesh
from gen3deval.metrics.base import (
    DEFAULT_THRESHOLDS,
    GEOMETRY_KEYS,
    IMAGE_KEYS,
    MESH_KEYS,
    ON_REQUEST_KEYS,
    UNAVAILABLE_METRICS,
    fscore_key,
    geometry_metric_names,
)

__all__ = ["GEOMETRY_METRIC_KEYS", "PreparedReference", "compare", "default_metric_keys", "prepare_reference"]

# Everything compare can compute (fscore@T for any T > 0 besides these), from the metric registry.
GEOMETRY_METRIC_KEYS = (*GEOMETRY_KEYS, *MESH_KEYS)


def default_metric_keys(thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> list[str]:
    """The keys ``compare(metrics=None)`` returns, in the registry's order: Chamfer (3 variants), Hausdorff,
    ``fscore@T`` per threshold, normal consistency and ``volume_iou``. ``best_iou`` (the CAD protocol: its
    own normalisation and alignment, 4 IoUs) and ``mecagent_iou`` (compat) are computed only on request."""
    keys: list[str] = []
    for name in geometry_metric_names():
        if name == "fscore":
            keys += [fscore_key(float(t)) for t in thresholds]
        elif name not in ON_REQUEST_KEYS:
            keys.append(name)
    return keys


def _split_keys(keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """(point-metric keys, mesh-metric keys); unknown or image keys raise UserInputError."""
    from gen3deval.metrics.geometry import parse_fscore_threshold

    point, mesh = [], []
    for key in keys:
        if key in GEOMETRY_KEYS:
            point.append(key)
        elif key.startswith("fscore@"):
            parse_fscore_threshold(key)  # validates T
            point.append(key)
        elif key in MESH_KEYS:
            mesh.append(key)
        elif key in IMAGE_KEYS or key in UNAVAILABLE_METRICS:
            raise UserInputError(
                f"{key!r} is an image metric: compare computes geometry metrics only; render both meshes and use "
                "gen3deval.metrics.image.image_metrics"
            )
        else:
            raise UserInputError(
                f"unknown metric {key!r}; known: {', '.join(GEOMETRY_METRIC_KEYS)}, fscore@T (e.g. fscore@0.01)"
            )
    return point, mesh


def _as_mesh(obj: Mesh | str | Path, up: str, role: str) -> Mesh:
    if isinstance(obj, Mesh):
        mesh = obj
    elif isinstance(obj, str | Path):
        from gen3deval.mesh.io import load_mesh

        mesh = load_mesh(obj, up=up)
    else:
        raise UserInputError(f"{role}: expected a Mesh or a mesh file path, got {type(obj).__name__}")
    name = mesh.source or role
    if mesh.n_faces == 0:
        raise UserInputError(f"{name}: the {role} mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise UserInputError(f"{name}: the {role} mesh has NaN or inf vertices")
    if not float(mesh.face_areas().sum()) > 0:
        raise UserInputError(f"{name}: the {role} mesh has zero surface area")
    return mesh


@dataclass(frozen=True)
class PreparedReference:
    """A reference loaded, normalised and sampled once, to score many candidates against
    (:func:`prepare_reference`; pass it as ``compare``'s ``reference``).

    Attributes:
        mesh: the reference as loaded. normalized: after ``normalize``.
        points, normals: (samples, 3) surface samples of ``normalized`` from the reference stream of ``seed``.
        normalize, samples, seed: the protocol values it was prepared with (``compare`` checks them).
    """

    mesh: Mesh
    normalized: Mesh
    points: NDArray[np.float64]
    normals: NDArray[np.float64]
    normalize: str
    samples: int
    seed: int
    # the watertight solid of ``normalized`` once computed (exact volume IoU), keyed "solid"
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def prepare_reference(
    reference: Mesh | str | Path,
    *,
    normalize: str = "bbox",
    samples: int = 100_000,
    seed: int = 0,
    up: str = "y",
) -> PreparedReference:
    """Load (paths, with ``up``), validate, normalise and sample ``reference`` as :func:`compare` would."""
    from gen3deval.mesh.normalize import NORMALIZE_METHODS
    from gen3deval.mesh.normalize import normalize as normalize_mesh
    from gen3deval.mesh.sample import sample_surface, stream_seed

    if normalize not in NORMALIZE_METHODS:
        raise UserInputError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZE_METHODS)}")
    if samples < 1:
        raise UserInputError(f"samples must be >= 1, got {samples}")
    ref = _as_mesh(reference, up, "reference")
    ref_n, _ = normalize_mesh(ref, normalize)
    pts, nrm = sample_surface(ref_n, samples, stream_seed(seed, "reference"))
    return PreparedReference(ref, ref_n, pts, nrm, normalize, int(samples), int(seed))


def compare(
    candidate: Mesh | str | Path,
    reference: Mesh | str | Path | PreparedReference,
    *,
    normalize: str = "bbox",
    align: str = "none",
    samples: int = 100_000,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    iou_resolution: int = 128,
    up: str = "y",
    align_samples: int = 5000,
) -> dict[str, Any]:
    """Score ``candidate`` against ``reference`` with the geometry metrics of PROTOCOLS.md section 5.

    Args:
        candidate, reference: meshes or mesh file paths (``up`` applies to paths only); ``reference`` may
            be a :class:`PreparedReference` made with the same ``normalize``, ``samples`` and ``seed``.
        normalize: ``bbox`` | ``sphere`` | ``inertia`` | ``none``, applied to each mesh on its own.
        align: ``none`` | ``pca`` | ``rot24`` | ``pca+icp`` | ``rot24+icp`` (see :mod:`gen3deval.mesh.align`).
        samples: surface points per mesh for the point metrics; seed: their sampling seed (candidate and
            reference from two independent streams of it).
        metrics: keys to compute (default :func:`default_metric_keys` of ``thresholds``); ``fscore@T`` keys
            carry their own T, so ``thresholds`` only matters when ``metrics`` is None.
        iou_resolution: grid resolution for ``volume_iou``/``best_iou`` of non-watertight meshes.
        align_samples: surface points per mesh used to choose the alignment.

    Returns:
        {key: float} for every requested key (distances in normalised units), plus ``volume_iou_method``
        (``exact``/``grid``/``undefined``) beside ``volume_iou``, ``best_iou_method`` and
        ``best_iou_alignment`` beside ``best_iou``, and ``alignment``: {"method", "matrix" (4x4 nested lists
        mapping the normalised candidate onto the normalised reference)}. An undefined IoU (the reference
        encloses no volume) is None, with method ``undefined`` and ``{key}_reason`` saying why (and
        ``best_iou_alignment`` None).
    """
    from gen3deval.mesh.align import ALIGN_METHODS
    from gen3deval.mesh.align import align as align_mesh
    from gen3deval.mesh.normalize import NORMALIZE_METHODS
    from gen3deval.mesh.normalize import normalize as normalize_mesh

    thresholds = tuple(float(t) for t in thresholds)
    if any(not (t > 0 and np.isfinite(t)) for t in thresholds):
        raise UserInputError(f"F-score thresholds must be finite and > 0, got {list(thresholds)}")
    keys = list(metrics) if metrics is not None else default_metric_keys(thresholds)
    if not keys:
        raise UserInputError("no metrics requested")
    # Validate every option before any heavy work so a typo fails fast.
    point_keys, mesh_keys = _split_keys(keys)
    if normalize not in NORMALIZE_METHODS:
        raise UserInputError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZE_METHODS)}")
    if align not in ALIGN_METHODS:
        raise UserInputError(f"unknown align method {align!r}; choose one of {', '.join(ALIGN_METHODS)}")
    if samples < 1:
        raise UserInputError(f"samples must be >= 1, got {samples}")
    if iou_resolution < 2:
        raise UserInputError(f"iou_resolution must be >= 2, got {iou_resolution}")

    cand = _as_mesh(candidate, up, "candidate")
    if isinstance(reference, PreparedReference):
        prepared = reference
        asked = {"normalize": normalize, "samples": samples, "seed": seed}
        for name, value in asked.items():
            if getattr(prepared, name) != value:
                raise UserInputError(
                    f"the prepared reference has {name}={getattr(prepared, name)!r} but compare was asked for "
                    f"{name}={value!r}: prepare it with the same protocol"
                )
        ref, ref_n = prepared.mesh, prepared.normalized
    else:
        prepared = None
        ref = _as_mesh(reference, up, "reference")
        ref_n, _ = normalize_mesh(ref, normalize)
    cand_n, _ = normalize_mesh(cand, normalize)
    moved, matrix = align_mesh(cand_n, ref_n, align, samples=align_samples, seed=seed)

    values: dict[str, Any] = {}
    if point_keys:
        from gen3deval.mesh.sample import sample_surface, stream_seed
        from gen3deval.metrics.geometry import geometry_metrics

        a_pts, a_nrm = sample_surface(moved, samples, stream_seed(seed, "candidate"))
        if prepared is not None:
            b_pts, b_nrm = prepared.points, prepared.normals
        else:
            b_pts, b_nrm = sample_surface(ref_n, samples, stream_seed(seed, "reference"))
        values.update(geometry_metrics(a_pts, a_nrm, b_pts, b_nrm, keys=point_keys))
    if "volume_iou" in mesh_keys:
        from gen3deval.metrics.volume import to_manifold, volume_iou_detail

        if prepared is not None:
            if "solid" not in prepared._cache:
                prepared._cache["solid"] = to_manifold(ref_n)
            iou = volume_iou_detail(moved, ref_n, iou_resolution, b_solid=prepared._cache["solid"])
        else:
            iou = volume_iou_detail(moved, ref_n, iou_resolution)
        values["volume_iou"] = iou.value
        values["volume_iou_method"] = iou.method
        if iou.value is None:
            values["volume_iou_reason"] = iou.reason
    if "best_iou" in mesh_keys:
        from gen3deval.metrics.volume import best_iou_detail

        biou = best_iou_detail(cand, ref, iou_resolution)
        values["best_iou"] = biou.value
        values["best_iou_method"] = biou.method
        if biou.value is None:
            values["best_iou_reason"] = biou.reason
        values["best_iou_alignment"] = (
            None if biou.matrix is None else {"method": "inertia+pca", "matrix": biou.matrix.tolist()}
        )

    if "mecagent_iou" in mesh_keys:
        from gen3deval.metrics.compat_mecagent import compat_mecagent_detail

        # On the loaded +Y-up meshes: the compat metric does its own normalisation and alignment.
        mec = compat_mecagent_detail(cand, ref)
        values["mecagent_iou"] = mec.value
        if mec.value is None:
            values["mecagent_iou_method"] = "undefined"
            values["mecagent_iou_reason"] = mec.reason

    out: dict[str, Any] = {}
    for key in keys:  # requested order, each companion right after its metric
        out[key] = None if values[key] is None else float(values[key])
        for extra in (f"{key}_method", f"{key}_reason", f"{key}_alignment"):
            if extra in values:
                out[extra] = values[extra]
    out["alignment"] = {"method": align, "matrix": np.asarray(matrix, dtype=np.float64).tolist()}
    return out


make_module_callable(__name__, "compare")
