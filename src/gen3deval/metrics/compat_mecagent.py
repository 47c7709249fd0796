"""``compat:mecagent``: the IoU of the mecagent CadQuery benchmark, reproduced only to compare with its numbers.

Never a default (PROTOCOLS.md section 5): it voxelises surfaces only and tries reflections, so a hollow or
thin part and a mirror image can score like the right answer. gen3deval's own CAD IoU is ``best_iou``.

Source of the definition (read, not copied): ``metrics/best_iou.py`` (``iou_best``, ``_normalized_mesh``,
``_principal_axes``, ``_voxel_bool_unified``, ``evaluate_codes``) and ``metrics/valid_syntax_rate.py`` of the
mecagent technical test, as published in github.com/yvss2359/mecagent-technical-test (commit 8ccfb80; the
same files in KameniAlexNea/mecagent-technical and deepika2502/mec_agent); its ``uv.lock`` pins trimesh
4.6.11, cadquery 2.5.2, numpy 2.3.0. The voxeliser is trimesh 4.6.11's ``Trimesh.voxelized(pitch)``
(``voxel/creation.py: voxelize_subdivide`` + ``remesh.py: subdivide_to_size``, github.com/mikedh/trimesh tag
4.6.11); trimesh 5 changed that subdivision, so it is re-implemented here and does not depend on the
installed trimesh.

Definition (candidate A, reference B, both in CadQuery's +Z-up frame):

1. Each solid alone: translate its centre of mass to 0, scale by 1/r_g, r_g = sqrt(trace(I) / (2 V))
   (gen3deval's ``inertia`` normalisation; theirs takes V, I and the centre from the B-rep).
2. Axes: the eigenvectors (columns, ascending eigenvalues) of ``numpy.linalg.eigh`` of each normalised mesh's
   inertia tensor about its centre of mass (trimesh mass properties, unit density). No sign or handedness fix.
3. For the sign patterns D = diag(1,1,1), diag(1,1,-1), diag(1,-1,1), diag(-1,1,1): R = A_B D A_A^T, and A
   rotated by R about the origin. det D is +1 once and -1 three times and det(A_A) det(A_B) is +-1 as eigh
   happens to return it, so the four are 1 rotation + 3 reflections or 3 rotations + 1 reflection: mirror
   images are matched, and the right rotation is found only when eigh's signs allow it.
4. Surface voxels at pitch p = 0.05 (normalised units): every triangle with an edge longer than p/2 is split
   into 4 at its edge midpoints ((a + b) / 2), repeatedly, at most 10 times; every corner of the result gives
   the voxel index round(v / p) (numpy, half to even). The interior is never filled.
5. IoU = |S_A and S_B| / |S_A or S_B| of those index sets (their two grids on unified bounds are exactly a
   placement of the two sets on one array), and the score is the largest of the four, starting from 0.

VSR (``valid_syntax_rate.py``, ``evaluate_codes``): programs that ran and left a CadQuery Solid or Compound
with a solid, over all reference ids (a missing prediction counts in the denominator); the mean IoU is over
those valid cases only (failures are dropped, not scored 0).

Left as it is in the original, or unavoidably different: their script stops with an error when 10
subdivisions are not enough (an edge > 25.6 r_g); here the value is undefined (None). They tessellate with
CadQuery's STL export defaults (tolerance 0.1, angular 0.1, float32 STL) and keep only the first object of a
Workplane's stack; here the meshes are the run's. Surface voxels change with the tessellation near voxel
borders, so numbers agree to within that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import UserInputError
from gen3deval.mesh.types import Mesh

PITCH = 0.05  # voxel side in r_g units (their iou_best / evaluate_codes default)
EDGE_FACTOR = 2.0  # subdivide until every edge <= pitch / 2 (trimesh voxelize_subdivide)
MAX_ITER = 10  # trimesh voxelize_subdivide's cap on subdivision rounds
# The order their loop tries the sign patterns (ties keep the first).
SIGNS = ((1.0, 1.0, 1.0), (1.0, 1.0, -1.0), (1.0, -1.0, 1.0), (-1.0, 1.0, 1.0))
# gen3deval's +Y-up frame back to CadQuery's +Z-up: (x, y, z) -> (x, -z, y), the inverse of the executor's
# (x, y, z) -> (x, z, -y). Exact (a signed permutation), so eigh sees the same numbers as in their frame.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
# Most sub-triangles held at once while subdividing (9 float64 each, plus temporaries).
_CHUNK_TRIANGLES = 1 << 20


class SubdivisionCapExceeded(ValueError):
    """Some edge needs more than ``max_iter`` halvings to get under pitch / 2 (their script stops here)."""


@dataclass(frozen=True)
class MecagentIoU:
    """One compat IoU: ``value`` in [0, 1] or None (``reason`` says why); ``signs`` the winning D;
    ``rotation`` the 3x3 R applied to the normalised candidate (det -1: the best match was a mirror image)."""

    value: float | None
    reason: str = ""
    signs: tuple[float, float, float] | None = None
    rotation: NDArray[np.float64] | None = None

    @property
    def reflected(self) -> bool | None:
        """True when the best of the four transforms is a reflection (None when undefined)."""
        return None if self.rotation is None else bool(np.linalg.det(self.rotation) < 0)


def _edge_lengths(tris: NDArray[np.float64]) -> NDArray[np.float64]:
    """(m, 3) lengths of the edges v1-v0, v2-v1, v0-v2 of (m, 3, 3) triangles (their expression and order)."""
    d = tris[:, [1, 2, 0]] - tris
    result: NDArray[np.float64] = (d**2).sum(axis=2) ** 0.5
    return result


def _subdivide(tris: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each triangle split into 4 at its edge midpoints (a + b) / 2: (m, 3, 3) -> (4m, 3, 3)."""
    v0, v1, v2 = tris[:, 0], tris[:, 1], tris[:, 2]
    m01, m12, m20 = (v0 + v1) / 2.0, (v1 + v2) / 2.0, (v2 + v0) / 2.0
    return np.concatenate(
        [
            np.stack([v0, m01, m20], axis=1),
            np.stack([m01, v1, m12], axis=1),
            np.stack([m20, m12, v2], axis=1),
            np.stack([m01, m12, m20], axis=1),
        ]
    )


# Voxel indices packed into one int64 (21 bits per axis, offset to be non-negative): sorting rows is slow.
_BITS = 21
_OFFSET = 1 << (_BITS - 1)


def _pack(idx: NDArray[np.int64]) -> NDArray[np.int64]:
    """One int64 key per (n, 3) voxel index row, |index| < 2^20 (a normalised part is ~100 voxels wide)."""
    if len(idx) and int(np.abs(idx).max()) >= _OFFSET:
        raise UserInputError(
            f"compat:mecagent voxel index beyond +-2^{_BITS - 1}: the mesh is not normalised?"
        )
    k = idx + _OFFSET
    result: NDArray[np.int64] = (k[:, 0] << (2 * _BITS)) | (k[:, 1] << _BITS) | k[:, 2]
    return result


def _unpack(keys: NDArray[np.int64]) -> NDArray[np.int64]:
    mask = (1 << _BITS) - 1
    return np.stack([keys >> (2 * _BITS), (keys >> _BITS) & mask, keys & mask], axis=1) - _OFFSET


def surface_voxel_keys(
    vertices: NDArray[np.floating],
    faces: NDArray[np.integer],
    pitch: float = PITCH,
    max_iter: int = MAX_ITER,
) -> NDArray[np.int64]:
    """Sorted unique packed keys of :func:`surface_voxels` (what :func:`key_iou` compares)."""
    if pitch <= 0:
        raise UserInputError(f"compat:mecagent voxel pitch must be > 0, got {pitch}")
    tris = np.ascontiguousarray(np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)])
    max_edge = pitch / EDGE_FACTOR
    longest = _edge_lengths(tris).max(axis=1) if len(tris) else np.zeros(0)
    # Expected rounds per triangle (to size the chunks only; the loop below decides exactly).
    rounds = np.clip(np.ceil(np.log2(np.maximum(longest, 1e-300) / max_edge)), 0, max_iter + 1)
    cum = np.cumsum(4.0**rounds)
    found: list[NDArray[np.int64]] = []
    start = 0
    while start < len(tris):
        base = cum[start - 1] if start > 0 else 0.0
        stop = max(int(np.searchsorted(cum, base + _CHUNK_TRIANGLES, side="right")), start + 1)
        cur = tris[start:stop]
        start = stop
        for i in range(max_iter + 1):
            too_long = (_edge_lengths(cur) > max_edge).any(axis=1)
            done = cur[~too_long].reshape(-1, 3)
            if len(done):
                found.append(np.unique(_pack(np.round(done / pitch).astype(np.int64))))
            if not too_long.any():
                break
            if i >= max_iter:
                raise SubdivisionCapExceeded(
                    f"an edge of {float(longest.max()):.4g} normalised units needs more than {max_iter} "
                    f"halvings to reach pitch/2 = {max_edge:g}"
                )
            cur = _subdivide(cur[too_long])
        if len(found) > 64:  # keep the partial sets few
            found = [np.unique(np.concatenate(found))]
    if not found:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(found))


def surface_voxels(
    vertices: NDArray[np.floating],
    faces: NDArray[np.integer],
    pitch: float = PITCH,
    max_iter: int = MAX_ITER,
) -> NDArray[np.int64]:
    """(K, 3) unique voxel indices round(v / pitch) of the corners of the midpoint subdivision of every
    triangle until its edges are <= pitch / 2 (step 4 of the module docstring; trimesh 4.6.11's
    ``voxelize_subdivide``), sorted. Raises :class:`SubdivisionCapExceeded` past ``max_iter`` rounds.

    Triangles are subdivided on their own, in chunks (memory bounded): the union of their corners is the
    vertex set of trimesh's global subdivision, whose shared midpoints are the same (a + b) / 2.
    """
    return _unpack(surface_voxel_keys(vertices, faces, pitch, max_iter))


def key_iou(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    """|A and B| / |A or B| of two sorted unique key arrays (:func:`surface_voxel_keys`); 0 if both empty."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def set_iou(a: NDArray[np.int64], b: NDArray[np.int64]) -> float:
    """|A and B| / |A or B| of two sets of (n, 3) integer voxel indices; 0 when both are empty."""
    return key_iou(
        np.unique(_pack(np.asarray(a, dtype=np.int64).reshape(-1, 3))),
        np.unique(_pack(np.asarray(b, dtype=np.int64).reshape(-1, 3))),
    )


def _normalised(mesh: Mesh, up: str, role: str) -> tuple[Mesh, NDArray[np.float64]]:
    """The mesh in CadQuery's frame, inertia-normalised (step 1), and its axes (step 2)."""
    from gen3deval.mesh.normalize import mass_properties, normalize

    if mesh.n_faces == 0:
        raise UserInputError(f"{mesh.source or role}: mesh has no faces, cannot compute compat:mecagent IoU")
    if not np.isfinite(mesh.vertices).all():
        raise UserInputError(f"{mesh.source or role}: mesh has NaN or inf vertices")
    if up == "y":
        mesh = mesh.transformed(
            np.block([[Y_UP_TO_Z_UP, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
        )
    elif up != "z":
        raise UserInputError(
            f"compat:mecagent up must be 'y' (gen3deval frame) or 'z' (CadQuery), got {up!r}"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        norm, _ = normalize(mesh, "inertia")
        _, _, inertia = mass_properties(norm)
    if not np.isfinite(inertia).all():
        raise UserInputError(f"{mesh.source or role}: no finite inertia tensor (degenerate mesh)")
    _, axes = np.linalg.eigh(inertia)
    return norm, axes


def compat_mecagent_detail(
    candidate: Mesh, reference: Mesh, *, pitch: float = PITCH, up: str = "y", max_iter: int = MAX_ITER
) -> MecagentIoU:
    """The mecagent ``iou_best`` of ``candidate`` against ``reference`` (module docstring), with the winning
    sign pattern and rotation. ``up``: ``"y"`` for meshes in gen3deval's frame (as the CadQuery executor
    writes them; mapped back to +Z up exactly), ``"z"`` for meshes already in CadQuery's frame."""
    cand, axes_c = _normalised(candidate, up, "candidate")
    ref, axes_r = _normalised(reference, up, "reference")
    try:
        ref_vox = surface_voxel_keys(ref.vertices, ref.faces, pitch, max_iter)
        best = MecagentIoU(0.0)
        for signs in SIGNS:
            rot = axes_r @ np.diag(signs) @ axes_c.T
            cand_vox = surface_voxel_keys(cand.vertices @ rot.T, cand.faces, pitch, max_iter)
            iou = key_iou(ref_vox, cand_vox)
            if best.signs is None or iou > (best.value or 0.0):
                best = MecagentIoU(iou, "", signs, rot)
    except SubdivisionCapExceeded as exc:
        return MecagentIoU(None, f"undefined: {exc} (the original script stops with 'max_iter exceeded!')")
    return best


def compat_mecagent_iou(
    candidate: Mesh, reference: Mesh, resolution: int | None = None, *, pitch: float = PITCH, up: str = "y"
) -> float | None:
    """compat:mecagent IoU in [0, 1], or None when undefined (the registry's mesh-metric signature;
    ``resolution`` is ignored: this IoU has its own fixed pitch, 0.05 r_g)."""
    del resolution
    return compat_mecagent_detail(candidate, reference, pitch=pitch, up=up).value
