"""The GL renderer's speed-ups change no output: per-face vertex layout, exact flat normals, batched
(pipelined) views, the shared face cross products."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from render_helpers import interior, shapes

from gen3deval.mesh.types import Material, Mesh
from gen3deval.render import rig
from gen3deval.render.gl import MAX_IN_FLIGHT, GLRenderer, provoking_layout
from gen3deval.render.raycast import RaycastRenderer
from gen3deval.render.shading import closed_orientation, face_cross, unit_normals


def test_provoking_layout_gives_every_face_its_own_last_vertex() -> None:
    rng = np.random.default_rng(1)
    for mesh in (trimesh.creation.icosphere(3), trimesh.creation.torus(0.3, 0.1)):
        faces = mesh.faces[rng.permutation(len(mesh.faces))]
        out, src = provoking_layout(faces, len(mesh.vertices))
        assert out.dtype == np.int32 and out.shape == faces.shape
        assert len(np.unique(out[:, 2])) == len(faces)  # one last vertex per face, none shared
        np.testing.assert_array_equal(src[out], faces)  # same corners, same order: winding kept
        assert len(mesh.vertices) <= len(src) <= len(mesh.vertices) + len(faces)
        assert out.max() < len(src)
    # Degenerate and repeated indices are kept as they are.
    out, src = provoking_layout(np.array([[0, 0, 1], [1, 0, 0], [2, 1, 0]]), 3)
    np.testing.assert_array_equal(src[out], [[0, 0, 1], [1, 0, 0], [2, 1, 0]])
    assert len(np.unique(out[:, 2])) == 3


def test_face_cross_and_unit_normals_match_trimesh() -> None:
    tm = trimesh.creation.torus(0.3, 0.1)
    cross = face_cross(tm.vertices, tm.faces)
    assert cross.shape == (3, len(tm.faces))
    np.testing.assert_allclose(np.linalg.norm(cross, axis=0) / 2.0, tm.area_faces, rtol=1e-12)
    np.testing.assert_allclose(unit_normals(cross), tm.face_normals, atol=1e-7)
    degenerate = unit_normals(face_cross(np.zeros((3, 3)), np.array([[0, 1, 2]])))
    np.testing.assert_array_equal(degenerate, np.zeros((1, 3)))
    for name, mesh in shapes().items():  # the check gives the same answer with the shared products
        c = face_cross(mesh.vertices, mesh.faces)
        assert closed_orientation(mesh, cross=c) == closed_orientation(mesh), name


def test_gl_normals_are_the_exact_face_normals(gl: GLRenderer, rc: RaycastRenderer) -> None:
    """Per-face normals from float64 cross products: equal to the ray caster's face normals up to
    float32 rounding on every interior pixel (screen-space derivatives were off by ~1e-5)."""
    for name in ("box", "torus", "pair"):
        mesh = shapes()[name]
        cams = [rig("trellis8", size=128)[k] for k in (1, 5)]
        for a, b in zip(gl.render(mesh, cams), rc.render(mesh, cams), strict=True):
            both = interior((a.alpha > 0) & (b.alpha > 0))
            err = np.abs(a.normals[both] - b.normals[both]).max(axis=1)
            assert np.quantile(err, 0.99) < 1e-6, (name, np.quantile(err, 0.99))
            np.testing.assert_allclose(np.linalg.norm(a.normals[a.alpha > 0], axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("samples", [0, 4])
def test_batched_views_equal_views_rendered_one_by_one(samples: int) -> None:
    """Views are drawn in batches before being read back; mixed image sizes and more views than fit in
    one batch give exactly what rendering each camera alone gives."""
    mesh = shapes()["torus"]
    cams = (
        rig("trellis8", 48)[:3]
        + rig("trellis8", 64)[:2]
        + rig("ref", 48)
        + rig(f"turntable:{MAX_IN_FLIGHT + 1}", 32)
    )
    with GLRenderer(48, 48, samples=samples) as r:
        batched = r.render(mesh, cams)
        single = [r.render(mesh, [c])[0] for c in cams]
    assert [v.rgb.shape[:2] for v in batched] == [(c.height, c.width) for c in cams]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.alpha, b.alpha)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.normals, b.normals)
        assert a.camera is not None


def test_constant_and_per_fragment_colour_paths_agree(gl: GLRenderer) -> None:
    """The constant-albedo path (colour computed and rounded per face in the vertex shader) and the
    vertex-colour path (per fragment) give the same image when the vertex colours are all white."""
    tm = trimesh.creation.icosphere(3, 0.45)
    plain = Mesh.from_arrays(tm.vertices, tm.faces, color=(0.8, 0.5, 0.2, 1.0))
    white = Mesh(
        plain.vertices,
        plain.faces,
        plain.face_material,
        (Material(base_color=(0.8, 0.5, 0.2, 1.0)),),
        vertex_colors=np.ones((len(tm.vertices), 4), dtype=np.float32),
    )
    cams = rig("trellis8", size=96)[::2]
    for a, b in zip(gl.render(plain, cams), gl.render(white, cams), strict=True):
        np.testing.assert_array_equal(a.alpha, b.alpha)
        np.testing.assert_array_equal(a.normals, b.normals)
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max() <= 1
        assert np.mean(np.any(a.rgb != b.rgb, axis=2)) < 1e-3


def test_readback_memory_is_reused_only_once_no_view_refers_to_it() -> None:
    """Read-back blocks are recycled between calls; views (or any array taken from one) that the caller
    keeps are never overwritten by a later call."""
    mesh_a, mesh_b = shapes()["torus"], shapes()["box"]
    cams = rig("trellis8", 32)
    with GLRenderer(32, 32) as r:
        kept = r.render(mesh_a, cams)
        expected = [(v.rgb.copy(), v.depth.copy(), v.normals.copy(), v.alpha.copy()) for v in kept]
        depth_only = r.render(mesh_b, cams)[5].depth  # the rest of that call is dropped
        depth_copy = depth_only.copy()
        for _ in range(3):  # later calls with other content
            r.render(mesh_b, cams[::-1])
            r.render(mesh_a, cams[2:])
        for v, (rgb, depth, normals, alpha) in zip(kept, expected, strict=True):
            np.testing.assert_array_equal(v.rgb, rgb)
            np.testing.assert_array_equal(v.depth, depth)
            np.testing.assert_array_equal(v.normals, normals)
            np.testing.assert_array_equal(v.alpha, alpha)
        np.testing.assert_array_equal(depth_only, depth_copy)
        # Dropped views free their memory for the next call.
        first = r.render(mesh_a, cams)
        address = first[0].rgb.__array_interface__["data"][0]
        del first
        again = r.render(mesh_b, cams)
        assert again[0].rgb.__array_interface__["data"][0] == address
        # A kept block is not handed out again while referenced.
        assert r.render(mesh_a, cams)[0].rgb.__array_interface__["data"][0] != address


@pytest.mark.parametrize("samples", [0, 4])
def test_leaving_out_faces_turned_away_changes_no_bit(monkeypatch: pytest.MonkeyPatch, samples: int) -> None:
    """For culled meshes the renderer hands llvmpipe only the faces that may face the camera; the images
    are bit-identical to letting the rasteriser cull every face itself."""
    ico = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    torus = trimesh.creation.torus(0.35, 0.12, major_sections=160, minor_sections=64)
    meshes = {
        "sphere": Mesh.from_arrays(ico.vertices, ico.faces),
        "inverted": Mesh.from_arrays(ico.vertices, ico.faces[:, ::-1]),
        "torus": Mesh.from_arrays(torus.vertices, torus.faces),
    }
    cams = rig("trellis8", 96) + rig("turntable:5", 96)
    calls = []
    with GLRenderer(96, 96, samples=samples) as r:
        facing = r._facing

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            vao, groups = facing(*args, **kwargs)
            calls.append(sum(count for _, count, _, _ in groups) // 3)
            return vao, groups

        monkeypatch.setattr(r, "_facing", counted)
        got = {k: r.render(m, cams) for k, m in meshes.items()}
        assert len(calls) == len(meshes) * len(cams)
        assert max(calls) < 0.6 * len(ico.faces)  # about half the faces (fewer in perspective) are drawn
        monkeypatch.setattr(r, "_facing", lambda up, vao, *a: (vao, up.groups))
        for name, mesh in meshes.items():
            for a, b in zip(got[name], r.render(mesh, cams), strict=True):
                np.testing.assert_array_equal(a.rgb, b.rgb, err_msg=name)
                np.testing.assert_array_equal(a.alpha, b.alpha, err_msg=name)
                np.testing.assert_array_equal(a.depth, b.depth, err_msg=name)
                np.testing.assert_array_equal(a.normals, b.normals, err_msg=name)
