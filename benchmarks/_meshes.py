"""Meshes for benchmarks: real textured objects made denser by midpoint subdivision."""

from __future__ import annotations

import numpy as np
import trimesh

from gen3deval.mesh.types import Mesh


def subdivided(m: Mesh, levels: int, source: str) -> Mesh:
    """``m`` after ``levels`` midpoint subdivisions (4 faces per face each: trimesh puts the faces of face i
    at 4i..4i+3), with its uv interpolated and its per-face materials kept (textures stay on)."""
    v, f, fm, uv = m.vertices, m.faces, np.asarray(m.face_material), m.uv
    for _ in range(levels):
        out = trimesh.remesh.subdivide(v, f, vertex_attributes={"uv": uv} if uv is not None else None)
        v, f = out[0], out[1]
        if uv is not None:
            uv = out[2]["uv"]
        fm = np.repeat(fm, 4)
        assert len(fm) == len(f)
    return Mesh(
        np.asarray(v, np.float64),
        np.asarray(f, np.int64),
        np.asarray(fm, np.int32),
        m.materials,
        uv=None if uv is None else np.asarray(uv, np.float32),
        source=source,
    )
