"""The one triangle-mesh type that flows through gen3deval.

A :class:`Mesh` is a flattened scene: every node transform applied, all primitives concatenated into
one vertex/face array, points and lines dropped. Materials are kept per face for rendering only;
metrics use ``vertices`` and ``faces`` alone.

Conventions: right-handed, +Y up, front faces +Z (glTF). Colours are sRGB in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Material:
    """A base colour (sRGB RGBA in [0, 1]) and an optional base-colour texture (H, W, 4) uint8 sRGB."""

    base_color: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 1.0)
    texture: NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)
    name: str = ""


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (V, 3) float64 positions.
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        face_material: (F,) int32 index into ``materials`` for each face.
        materials: at least one :class:`Material`.
        uv: (V, 2) float32 texture coordinates (glTF convention, v down) or None.
        vertex_colors: (V, 4) float32 sRGB RGBA in [0, 1] or None (multiplied with the material).
        source: where the mesh came from (file path or a description), used in error messages.
    """

    vertices: NDArray[np.float64]
    faces: NDArray[np.int64]
    face_material: NDArray[np.int32]
    materials: tuple[Material, ...] = (Material(),)
    uv: NDArray[np.float32] | None = None
    vertex_colors: NDArray[np.float32] | None = None
    source: str = ""

    @staticmethod
    def from_arrays(
        vertices: NDArray[np.floating] | list[list[float]],
        faces: NDArray[np.integer] | list[list[int]],
        *,
        color: tuple[float, float, float, float] | None = None,
        source: str = "",
    ) -> Mesh:
        """Build a single-material mesh from (V, 3) vertices and (F, 3) faces."""
        v = np.ascontiguousarray(vertices, dtype=np.float64).reshape(-1, 3)
        f = np.ascontiguousarray(faces, dtype=np.int64).reshape(-1, 3)
        mat = Material(base_color=color) if color is not None else Material()
        return Mesh(v, f, np.zeros(len(f), dtype=np.int32), (mat,), source=source)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def triangles(self) -> NDArray[np.float64]:
        """(F, 3, 3) corner positions."""
        return self.vertices[self.faces]

    @property
    def bounds(self) -> NDArray[np.float64]:
        """(2, 3) axis-aligned min and max corners."""
        v = self.vertices
        # Per column: a reduction over a strided axis of an (V, 3) array is ~10x slower than over columns.
        return np.array([[v[:, k].min() for k in range(3)], [v[:, k].max() for k in range(3)]])

    def face_normals(self) -> NDArray[np.float64]:
        """(F, 3) unit face normals (zero for degenerate faces)."""
        t = self.triangles
        n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)

    def face_areas(self) -> NDArray[np.float64]:
        """(F,) triangle areas."""
        t = self.triangles
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)

    def transformed(self, matrix: NDArray[np.floating]) -> Mesh:
        """Apply a 4x4 affine transform to the vertices; a reflection flips the winding to keep normals out."""
        m = np.asarray(matrix, dtype=np.float64)
        a = m[:3, :3]
        if np.count_nonzero(a - np.diag(np.diagonal(a))) == 0:
            # Scale + translation (every normalisation): the same numbers without a (N, 3) x (3, 3)
            # matrix product, one column at a time (numpy broadcasts over a short last axis slowly).
            v = np.empty_like(self.vertices, dtype=np.float64)
            for i in range(3):
                np.multiply(self.vertices[:, i], a[i, i], out=v[:, i])
                v[:, i] += m[i, 3]
        else:
            v = self.vertices @ a.T + m[:3, 3]
        faces = self.faces
        if np.linalg.det(m[:3, :3]) < 0:
            faces = faces[:, ::-1].copy()
        return replace(self, vertices=v, faces=faces)

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` of the geometry (no materials), not re-processed."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)
