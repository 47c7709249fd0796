"""Seeded, area-weighted uniform surface sampling (PROTOCOLS.md section 4).

Candidate and reference are sampled from two independent streams of one seed (:func:`stream_seed`): with
one shared stream, two meshes that share triangles (a copy, a perturbed copy, an exact CAD answer) would
get the same face choices and barycentric coordinates, so their points would line up and Chamfer would
come out too low (exactly 0 for a copy instead of the sampling noise of two independent clouds).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gen3deval.mesh.types import Mesh

# The stream of each role under one seed: numpy SeedSequence(seed, spawn_key=(id,)), i.e. the id-th child
# of SeedSequence(seed).spawn(). Never renumber: scores depend on it (PROTOCOLS.md section 4).
SAMPLE_STREAMS = {"candidate": 0, "reference": 1}


def stream_seed(seed: int, role: str) -> np.random.SeedSequence:
    """The seed sequence of ``role`` (``candidate`` or ``reference``) under ``seed``:
    ``SeedSequence(seed, spawn_key=(SAMPLE_STREAMS[role],))`` (= ``SeedSequence(seed).spawn(2)[id]``)."""
    return np.random.SeedSequence(int(seed), spawn_key=(SAMPLE_STREAMS[role],))


def sample_surface(
    mesh: Mesh, n: int = 100_000, seed: int | np.random.SeedSequence = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sample ``n`` points uniformly by area; returns points (n, 3) and their unit face normals (n, 3).

    ``seed``: an int or a :class:`numpy.random.SeedSequence` (see :func:`stream_seed`). The same mesh, ``n``
    and seed give the same points bit for bit (numpy PCG64): face by ``rng.random(n)`` against the area
    CDF, then barycentric coordinates by ``rng.random((n, 2))`` reflected into the triangle.
    """
    rng = np.random.default_rng(seed)
    areas = mesh.face_areas()
    total = float(areas.sum())
    if not total > 0:
        raise ValueError(f"{mesh.source or 'mesh'}: surface area is zero, cannot sample")
    cdf = np.cumsum(areas)
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    face = np.minimum(face, len(areas) - 1)
    # Uniform barycentric coordinates by reflecting the unit square into the triangle.
    uv = rng.random((n, 2))
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]
    tri = mesh.triangles[face]
    points = tri[:, 0] + uv[:, :1] * (tri[:, 1] - tri[:, 0]) + uv[:, 1:] * (tri[:, 2] - tri[:, 0])
    normals = mesh.face_normals()[face]
    return points, normals
