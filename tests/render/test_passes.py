"""``passes="color"``: colour and alpha only, pixel for pixel the same as ``passes="all"``, without the
normal/depth pass (issue 12: renders for CLIP read back only what CLIP needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from render_helpers import shapes, sphere

from gen3deval.errors import ConfigError
from gen3deval.mesh.io import load_mesh
from gen3deval.mesh.types import Material, Mesh
from gen3deval.render import PASSES, Renderer, View, render, rig, write_views
from gen3deval.render.cameras import Camera
from gen3deval.render.gl import CULL_MIN_FACES, GLRenderer
from gen3deval.render.raycast import RaycastRenderer
from testdata import LOWPOLY, lowpoly_manifest


def _vcol_sphere() -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    vc = np.c_[(s.vertices + 0.5).clip(0, 1), np.ones(len(s.vertices))].astype(np.float32)
    return Mesh(
        s.vertices,
        s.faces.astype(np.int64),
        np.zeros(len(s.faces), np.int32),
        (Material(),),
        vertex_colors=vc,
    )


def _meshes() -> dict[str, Mesh]:
    """Flat, curved, multi-part, vertex-coloured, culled (closed and >= CULL_MIN_FACES) and real
    (textured, several materials) meshes: every shader path."""
    out = dict(shapes())
    out["vcol"] = _vcol_sphere()
    big = sphere(subdivisions=5)
    assert big.n_faces >= CULL_MIN_FACES
    out["big"] = big
    if LOWPOLY.is_dir():
        rows = {r["id"]: r for r in lowpoly_manifest()}
        for name in ("kenney_sk_platformer_character", "quaternius_snake"):  # textured; 7 materials
            if name in rows:
                out[name] = load_mesh(LOWPOLY / rows[name]["path"])
    return out


def _snap(views: list[View]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(v.rgb.copy(), v.alpha.copy()) for v in views]


def _assert_same(expected: list[tuple[np.ndarray, np.ndarray]], got: list[View], what: str) -> None:
    assert len(expected) == len(got)
    for i, ((rgb, alpha), v) in enumerate(zip(expected, got, strict=True)):
        np.testing.assert_array_equal(v.rgb, rgb, err_msg=f"{what} view {i}: rgb")
        np.testing.assert_array_equal(v.alpha, alpha, err_msg=f"{what} view {i}: alpha")
        assert v.depth is None and v.normals is None
        assert v.rgb.dtype == np.uint8 and v.alpha.dtype == np.float32


@pytest.mark.parametrize("samples", [0, 4])
def test_gl_color_pass_pixels_identical_to_all_passes(samples: int) -> None:
    cams = [*rig("trellis8", 64), Camera(30, 20, 2.0, 40, 48, 80)]  # also a non-square size change
    with GLRenderer(64, 64, samples=samples) as r:
        for name, mesh in _meshes().items():
            for material, background in (("asset", "white"), ("grey", "black")):
                full = r.render(mesh, cams, material=material, background=background)
                assert all(v.depth is not None and v.normals is not None for v in full)
                expected = _snap(full)
                assert any(a.max() > 0 for _, a in expected), name
                got = r.render(mesh, cams, material=material, background=background, passes="color")
                _assert_same(expected, got, f"{name} {material}/{background} samples={samples}")


def test_raycast_color_pass_pixels_identical_to_all_passes() -> None:
    cams = rig("trellis8", 32)[::3]
    rc = RaycastRenderer(32, 32)
    for name in ("torus", "pair", "vcol", "kenney_sk_platformer_character"):
        mesh = _meshes().get(name)
        if mesh is None:
            continue
        expected = _snap(rc.render(mesh, cams))
        _assert_same(expected, rc.render(mesh, cams, passes="color"), name)


def test_color_pass_reads_no_normal_depth_target() -> None:
    """A renderer that only ever renders colour never creates the float32 (normal, depth) targets nor
    the read-back block for them; switching to all passes afterwards still gives the right depth."""
    mesh = shapes()["torus"]
    cams = rig("trellis8", 32)
    with GLRenderer(32, 32) as r:
        r.render(mesh, cams, passes="color")
        assert r._targets and all("nz" not in t for t in r._targets)
        assert all(blocks[1] is None for blocks in r._blocks._sets)
        full = r.render(mesh, cams)
        with GLRenderer(32, 32) as fresh:
            ref = fresh.render(mesh, cams)
            for a, b in zip(full, ref, strict=True):
                np.testing.assert_array_equal(a.depth, b.depth)
                np.testing.assert_array_equal(a.normals, b.normals)
                np.testing.assert_array_equal(a.rgb, b.rgb)


def test_mixed_passes_never_overwrite_kept_views() -> None:
    """Colour-only and full renders share read-back memory; views the caller keeps stay intact."""
    m1, m2 = shapes()["torus"], shapes()["box"]
    cams = rig("trellis8", 32)
    with GLRenderer(32, 32) as r:
        kept_all = r.render(m1, cams)
        exp_all = [(v.rgb.copy(), v.alpha.copy(), v.depth.copy()) for v in kept_all]  # type: ignore[union-attr]
        kept_color = r.render(m2, cams, passes="color")
        exp_color = _snap(kept_color)
        for _ in range(3):
            r.render(m2, cams)
            r.render(m1, cams, passes="color")
        for v, (rgb, alpha, depth) in zip(kept_all, exp_all, strict=True):
            np.testing.assert_array_equal(v.rgb, rgb)
            np.testing.assert_array_equal(v.alpha, alpha)
            np.testing.assert_array_equal(v.depth, depth)  # type: ignore[arg-type]
        _assert_same(exp_color, kept_color, "kept colour views")


def test_renderer_and_render_pass_passes_through() -> None:
    mesh = shapes()["pair"]
    assert PASSES == ("all", "color")
    views = render(mesh, "trellis8", size=32, backend="gl", passes="color")
    full = Renderer(32, backend="gl").render(mesh, "trellis8")
    _assert_same(_snap(full), views, "render()")
    rc_views = Renderer(32, backend="raycast").render(mesh, "trellis8", passes="color")
    assert all(v.depth is None for v in rc_views)


def test_bad_passes_and_write_views_of_color_views(tmp_path: Path) -> None:
    mesh = shapes()["box"]
    r = Renderer(32, backend="gl")
    with pytest.raises(ConfigError, match="unknown render passes 'depth'"):
        r.render(mesh, "trellis8", passes="depth")
    with pytest.raises(ConfigError, match="unknown render passes"):
        RaycastRenderer(32, 32).render(mesh, rig("trellis8", 32), passes="rgb")
    views = r.render(mesh, "trellis8", passes="color")

    out = tmp_path
    assert len(write_views(views, out / "plain")) == 9  # PNGs + cameras.json: fine without depth
    with pytest.raises(ConfigError, match="passes='all'"):
        write_views(views, out / "passes", passes=True)
