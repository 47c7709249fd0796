"""Descriptive statistics of a candidate mesh (no reference needed): size, connectivity, closure, texture.

:func:`mesh_stats` is what the report shows per system for image suites (faces, vertices, components,
watertight, has texture, file size). Connectivity is measured after welding vertices with exactly the same
position (glTF exporters split vertices at UV and normal seams, which would otherwise make every seam an
open boundary and every UV island a component). Nothing is tolerance-based: two vertices 1e-9 apart stay
apart, so the numbers do not depend on the mesh's scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.mesh.types import Mesh

__all__ = ["mesh_stats", "weld_exact"]


def weld_exact(vertices: NDArray[np.floating], faces: NDArray[np.integer]) -> tuple[NDArray[np.int64], int]:
    """Faces re-indexed so that vertices at exactly the same position share one index.

    Args:
        vertices: (V, 3) positions.
        faces: (F, 3) indices into ``vertices``.

    Returns:
        ((F, 3) int64 faces over the welded vertices, number of welded vertices). ``-0.0`` and ``0.0`` are
        the same position.
    """
    v = np.ascontiguousarray(vertices, dtype=np.float64).reshape(-1, 3) + 0.0  # -0.0 -> 0.0
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(v) == 0:
        return f.copy(), 0
    # Sort rows lexicographically and mark where a row differs from the previous one: faster than
    # np.unique(axis=0), which sorts a structured view.
    order = np.lexsort((v[:, 2], v[:, 1], v[:, 0]))
    s = v[order]
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    np.any(s[1:] != s[:-1], axis=1, out=new[1:])
    ids_sorted = np.cumsum(new, dtype=np.int64) - 1
    inverse = np.empty(len(v), dtype=np.int64)
    inverse[order] = ids_sorted
    return inverse[f], int(ids_sorted[-1]) + 1


def _components(faces: NDArray[np.int64], n_vertices: int) -> int:
    """Number of face-connected components (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return 0
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, labels = connected_components(graph, directed=False)
    # The corners of a face share a label; vertices no face uses are their own components and do not count.
    return len(np.unique(labels[faces[:, 0]]))


def _watertight(faces: NDArray[np.int64], n_vertices: int) -> bool:
    """Every edge shared by exactly two faces (faces with a repeated index, which have no area, ignored)."""
    f = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    if len(f) == 0:
        return False
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    keys = np.minimum(a, b) * np.int64(n_vertices) + np.maximum(a, b)
    _, counts = np.unique(keys, return_counts=True)
    return bool(np.all(counts == 2))


def mesh_stats(mesh: Mesh, path: str | Path | None = None) -> dict[str, Any]:
    """Statistics of ``mesh`` (loaded from ``path``, whose size is reported).

    Returns a JSON-able dict:
        faces, vertices: counts as stored (vertices before welding);
        components: face-connected components after welding exactly coincident vertices;
        watertight: every edge (after welding) shared by exactly two faces;
        has_texture: a material has a base-colour texture, or the mesh has vertex (or face) colours;
        file_bytes: size of ``path`` in bytes (None without a path or when it cannot be read).
    """
    faces, n_welded = weld_exact(mesh.vertices, mesh.faces)
    file_bytes = None
    if path is not None:
        try:
            file_bytes = Path(path).stat().st_size
        except OSError:
            file_bytes = None
    return {
        "faces": int(mesh.n_faces),
        "vertices": int(mesh.n_vertices),
        "components": _components(faces, n_welded),
        "watertight": _watertight(faces, n_welded),
        "has_texture": bool(
            any(m.texture is not None for m in mesh.materials) or mesh.vertex_colors is not None
        ),
        "file_bytes": file_bytes,
    }
