"""mesh_stats against analytic shapes: cubes (closed, 1 component), open boxes, disjoint and touching parts,
seam-split vertices (welded), textured / coloured GLBs, and the stage that records the stats."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from gen3deval.mesh.io import load_mesh, save_mesh
from gen3deval.mesh.stats import mesh_stats, weld_exact
from gen3deval.mesh.types import Material, Mesh


def _cube(offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Mesh:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return Mesh.from_arrays(np.asarray(box.vertices) + np.asarray(offset), box.faces)


def _concat(*meshes: Mesh) -> Mesh:
    verts, faces, n = [], [], 0
    for m in meshes:
        verts.append(m.vertices)
        faces.append(m.faces + n)
        n += m.n_vertices
    return Mesh.from_arrays(np.concatenate(verts), np.concatenate(faces))


def _unshared(m: Mesh) -> Mesh:
    """Every face with its own 3 vertices (what a glTF export does at every UV/normal seam)."""
    v = m.vertices[m.faces].reshape(-1, 3)
    return Mesh.from_arrays(v, np.arange(len(v)).reshape(-1, 3))


def test_cube_is_one_closed_component() -> None:
    s = mesh_stats(_cube())
    assert s == {
        "faces": 12,
        "vertices": 8,
        "components": 1,
        "watertight": True,
        "has_texture": False,
        "file_bytes": None,
    }


def test_split_vertices_are_welded_but_counted_as_stored() -> None:
    s = mesh_stats(_unshared(_cube()))
    assert (s["faces"], s["vertices"], s["components"], s["watertight"]) == (12, 36, 1, True)
    faces, n = weld_exact(_unshared(_cube()).vertices, _unshared(_cube()).faces)
    assert n == 8 and faces.shape == (12, 3)


def test_negative_zero_welds_with_zero() -> None:
    m = _unshared(_cube((0.5, 0.5, 0.5)))  # corners at 0.0 and 1.0
    v = m.vertices.copy()
    v[v == 0.0] = -0.0
    v[::2][v[::2] == 0.0] = -0.0
    v[1::2][v[1::2] == 0.0] = 0.0
    assert np.signbit(v).any() and not np.signbit(v).all()
    assert mesh_stats(Mesh.from_arrays(v, m.faces))["watertight"] is True


def test_near_but_not_equal_vertices_stay_apart() -> None:
    """Exact welding only: a cube whose corners moved by 1e-9 on half its faces is open."""
    m = _unshared(_cube())
    v = m.vertices.copy()
    v[18:] += 1e-9
    s = mesh_stats(Mesh.from_arrays(v, m.faces))
    assert s["watertight"] is False
    assert s["components"] == 2


def test_two_disjoint_cubes_touching_cubes_and_open_box() -> None:
    two = mesh_stats(_concat(_cube(), _cube((3.0, 0.0, 0.0))))
    assert (two["components"], two["watertight"], two["faces"]) == (2, True, 24)
    # Cubes sharing one corner position: connected through that (welded) vertex, every edge still in 2 faces.
    touching = mesh_stats(_concat(_cube(), _cube((1.0, 1.0, 1.0))))
    assert (touching["components"], touching["watertight"]) == (1, True)
    cube = _cube()
    top = np.where(np.all(cube.vertices[cube.faces][:, :, 2] > 0.0, axis=1))[0]
    assert len(top) == 2
    open_box = Mesh.from_arrays(cube.vertices, np.delete(cube.faces, top, axis=0))
    s = mesh_stats(open_box)
    assert (s["faces"], s["components"], s["watertight"]) == (10, 1, False)


def test_non_manifold_edge_is_not_watertight() -> None:
    """Three faces on one edge: closed nowhere near 'exactly two'."""
    cube = _cube()
    f = cube.faces[0]
    v = np.concatenate([cube.vertices, [[5.0, 5.0, 5.0]]])
    fin = np.array([[f[0], f[1], 8]])
    s = mesh_stats(Mesh.from_arrays(v, np.concatenate([cube.faces, fin])))
    assert (s["components"], s["watertight"]) == (1, False)


def test_degenerate_faces_are_ignored_for_closure_and_unused_vertices_for_components() -> None:
    cube = _cube()
    v = np.concatenate([cube.vertices, [[9.0, 9.0, 9.0]]])  # an unused vertex
    f = np.concatenate([cube.faces, [[0, 0, 1]]])  # a face with no area
    s = mesh_stats(Mesh.from_arrays(v, f))
    assert (s["components"], s["watertight"], s["faces"], s["vertices"]) == (1, True, 13, 9)


def test_sphere_counts_match_euler() -> None:
    ico = trimesh.creation.icosphere(subdivisions=3)
    s = mesh_stats(Mesh.from_arrays(ico.vertices, ico.faces))
    # A closed genus-0 triangle mesh: V - E + F = 2 with E = 3F/2.
    assert s["vertices"] - 3 * s["faces"] // 2 + s["faces"] == 2
    assert (s["components"], s["watertight"]) == (1, True)


def test_empty_mesh() -> None:
    m = Mesh.from_arrays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    assert mesh_stats(m)["components"] == 0
    assert mesh_stats(m)["watertight"] is False


def test_textured_and_coloured_glbs(tmp_path: Path) -> None:
    cube = _unshared(_cube())
    tex = np.zeros((8, 8, 4), np.uint8)
    tex[..., 0] = 255
    tex[..., 3] = 255
    uv = np.tile(np.array([[0, 0], [1, 0], [1, 1]], np.float32), (cube.n_faces, 1))
    textured = Mesh(
        cube.vertices, cube.faces, cube.face_material, (Material(texture=tex),), uv=uv, vertex_colors=None
    )
    p = save_mesh(textured, tmp_path / "textured.glb")
    loaded = load_mesh(p)
    s = mesh_stats(loaded, p)
    assert s["has_texture"] is True
    assert s["file_bytes"] == p.stat().st_size > 0
    assert (s["components"], s["watertight"]) == (1, True)

    colours = np.tile(np.array([[0.2, 0.4, 0.6, 1.0]], np.float32), (cube.n_vertices, 1))
    coloured = Mesh(cube.vertices, cube.faces, cube.face_material, (Material(),), vertex_colors=colours)
    q = save_mesh(coloured, tmp_path / "coloured.glb")
    assert mesh_stats(load_mesh(q), str(q))["has_texture"] is True

    plain = save_mesh(cube, tmp_path / "plain.glb")
    s = mesh_stats(load_mesh(plain), plain)
    assert s["has_texture"] is False and s["file_bytes"] == plain.stat().st_size
    assert mesh_stats(cube, tmp_path / "missing.glb")["file_bytes"] is None


def test_large_mesh_is_fast() -> None:
    ico = trimesh.creation.icosphere(subdivisions=6)  # 81,920 faces
    big = _unshared(_concat(*(Mesh.from_arrays(ico.vertices + 3 * i, ico.faces) for i in range(3))))
    assert big.n_faces == 245_760
    t0 = time.perf_counter()
    s = mesh_stats(big)
    dt = time.perf_counter() - t0
    assert (s["components"], s["watertight"]) == (3, True)
    assert dt < 1.5, f"mesh_stats took {dt:.2f} s on 245k faces"


def test_generate_stage_records_stats_of_the_delivered_file(tmp_path: Path) -> None:
    """stage_generate keeps mesh_stats of the candidate, with the size of the file the system wrote."""
    from gen3deval.engine.stages import stage_generate

    src = tmp_path / "c1.obj"
    trimesh.creation.box(extents=(1, 1, 1)).export(src)
    work = tmp_path / "work"
    work.mkdir()
    res = stage_generate(
        {"id": "c1", "category": "default"},
        {"name": "files", "settings": {"dir": str(tmp_path)}, "base_dir": "."},
        None,
        None,
        work,
    )
    if res.status != "done":
        pytest.fail(f"generate failed: {res.error_class}: {res.error}")
    stats = res.value["mesh_stats"]
    assert stats["file_bytes"] == src.stat().st_size
    assert (stats["faces"], stats["components"], stats["watertight"]) == (12, 1, True)
