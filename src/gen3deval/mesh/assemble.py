"""Assembling meshes: several meshes as one, as placed (e.g. a hosted API's kit parts, scored together)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gen3deval.mesh.io import load_mesh, save_mesh
from gen3deval.mesh.types import Mesh


def assemble(meshes: list[Mesh], source: str = "assembly") -> Mesh:
    """All ``meshes`` as one mesh, as placed (vertices concatenated, faces offset, materials kept per part)."""
    if not meshes:
        raise ValueError("no parts to assemble")
    v_off = np.cumsum([0] + [m.n_vertices for m in meshes[:-1]])
    m_off = np.cumsum([0] + [len(m.materials) for m in meshes[:-1]])
    uv = None
    if any(m.uv is not None for m in meshes):
        uv = np.concatenate(
            [m.uv if m.uv is not None else np.zeros((m.n_vertices, 2), np.float32) for m in meshes]
        ).astype(np.float32)
    colors = None
    if any(m.vertex_colors is not None for m in meshes):
        colors = np.concatenate(
            [
                m.vertex_colors if m.vertex_colors is not None else np.ones((m.n_vertices, 4), np.float32)
                for m in meshes
            ]
        ).astype(np.float32)
    return Mesh(
        vertices=np.concatenate([m.vertices for m in meshes]),
        faces=np.concatenate([m.faces + o for m, o in zip(meshes, v_off, strict=True)]),
        face_material=np.concatenate(
            [m.face_material + o for m, o in zip(meshes, m_off, strict=True)]
        ).astype(np.int32),
        materials=tuple(mat for m in meshes for mat in m.materials),
        uv=uv,
        vertex_colors=colors,
        source=source,
    )


def write_assembly(part_paths: list[Path], dest: Path) -> Path:
    """Load the meshes at ``part_paths`` and write their :func:`assemble` to ``dest`` (a .glb); returns ``dest``."""
    meshes = [load_mesh(p) for p in part_paths]
    save_mesh(assemble(meshes, source=str(dest)), dest)
    return dest
