"""The GL renderer against analytic values and against the independent ray caster."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import trimesh
from render_helpers import interior, shapes, sphere

from gen3deval.errors import ConfigError, RenderError
from gen3deval.mesh.types import Material, Mesh
from gen3deval.render import Renderer, View, render, rig
from gen3deval.render.cameras import Camera
from gen3deval.render.gl import GLRenderer
from gen3deval.render.raycast import RaycastRenderer


def _disc_area_px(radius: float, distance: float, cam: Camera) -> float:
    """Pixel area of the perspective image of a sphere centred on the optical axis: a disc of angular
    radius asin(r/d), i.e. of radius f tan(asin(r/d)) pixels with f = H / (2 tan(fov/2))."""
    alpha = math.asin(radius / distance)
    f = cam.height / (2.0 * math.tan(math.radians(cam.fov_deg) / 2.0))
    return math.pi * (f * math.tan(alpha)) ** 2


@pytest.mark.parametrize("samples", [0, 4])
def test_sphere_silhouette_matches_the_analytic_disc(samples: int) -> None:
    cam = rig("ref", size=512)[0]
    mesh = sphere(radius=0.5, subdivisions=6)
    with GLRenderer(512, 512, samples=samples) as r:
        (view,) = r.render(mesh, [cam], normalize=False)
    expected = _disc_area_px(0.5, 2.0, cam)
    area = float((view.alpha > 0.5).sum())
    assert abs(area - expected) / expected < 0.01, (area, expected)
    # The disc is centred on the image centre.
    rows, cols = np.nonzero(view.alpha > 0.5)
    assert abs(rows.mean() - 255.5) < 0.5 and abs(cols.mean() - 255.5) < 0.5
    if samples > 1:  # anti-aliased edges carry fractional coverage
        assert ((view.alpha > 0) & (view.alpha < 1)).sum() > 100


def test_sphere_depth_and_normals_are_analytic(gl: GLRenderer) -> None:
    """Nearest point of a sphere of radius r at distance d: z-depth d - r, normal towards the camera."""
    cam = Camera(yaw_deg=45, pitch_deg=30, width=255, height=255)  # odd size: a pixel centre on the axis
    (view,) = gl.render(sphere(0.5, 6), [cam], normalize=False)
    assert view.depth[127, 127] == pytest.approx(1.5, abs=2e-3)  # the facet lies inside the sphere
    np.testing.assert_allclose(view.normals[127, 127], cam.position / 2.0, atol=5e-3)
    norms = np.linalg.norm(view.normals[view.alpha > 0], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # Every visible point of the sphere is nearer than the centre and farther than the nearest point.
    d = view.depth[view.alpha > 0]
    assert d.min() >= 1.5 - 2e-3 and d.max() <= 2.0


def test_background_is_exactly_white_with_zero_alpha(gl: GLRenderer) -> None:
    views = gl.render(shapes()["torus"], rig("trellis8", size=128))
    for v in views:
        bg = v.alpha == 0
        assert bg.sum() > 1000
        assert (v.rgb[bg] == 255).all()
        assert np.isinf(v.depth[bg]).all() and (v.normals[bg] == 0).all()
        assert np.isfinite(v.depth[~bg]).all()
        assert set(np.unique(v.alpha)) == {0.0, 1.0}  # no MSAA: binary coverage, exactly 0.0 or 1.0
        assert v.rgb.dtype == np.uint8 and v.alpha.dtype == np.float32 and v.depth.dtype == np.float32
        assert v.rgb.shape == (128, 128, 3) and v.normals.shape == (128, 128, 3)
    black = gl.render(shapes()["torus"], rig("ref", size=128), background="black")[0]
    assert (black.rgb[black.alpha == 0] == 0).all()
    np.testing.assert_array_equal(black.rgb[black.alpha == 1], views[1].rgb[views[1].alpha == 1])


@pytest.mark.parametrize("name", ["box", "torus", "pair", "sphere"])
def test_gl_and_raycast_agree(gl: GLRenderer, rc: RaycastRenderer, name: str) -> None:
    """On the pixels both cover (away from silhouette edges): depth to 2e-6 world units (float32
    rasterisation vs float64 ray-plane hits; measured ~2e-7), normals and colours equal. A pixel centre
    on an edge between two triangles may hit either one, so 1% of pixels may differ."""
    mesh = shapes()[name]
    cams = [rig("trellis8", size=128)[k] for k in (0, 3, 6)]
    for a, b in zip(gl.render(mesh, cams), rc.render(mesh, cams), strict=True):
        ma, mb = a.alpha > 0.5, b.alpha > 0.5
        iou = (ma & mb).sum() / (ma | mb).sum()
        assert iou > 0.995, iou
        both = interior(ma & mb)
        assert both.sum() > 500
        dz = np.abs(a.depth[both] - b.depth[both])
        assert np.quantile(dz, 0.99) < 2e-6, np.quantile(dz, 0.99)
        assert np.median(dz) < 1e-6
        assert dz.max() < 1e-3  # no pixel sees a different surface
        cos = np.sum(a.normals[both] * b.normals[both], axis=1)
        assert np.mean(cos > 0.99999) > 0.99
        drgb = np.abs(a.rgb[both].astype(int) - b.rgb[both].astype(int)).max(axis=1)
        assert np.mean(drgb <= 1) > 0.99


def test_projection_of_a_known_point(gl: GLRenderer) -> None:
    """A tiny mesh at a known 3D point lands on the pixel the protocol's camera math predicts
    (computed here from scratch: position, look-at with up +Y, vertical fov)."""
    p = np.array([0.31, 0.22, -0.17])
    tiny = trimesh.creation.icosphere(subdivisions=3, radius=0.012)
    tiny.apply_translation(p)
    mesh = Mesh.from_arrays(tiny.vertices, tiny.faces)
    yaw, pitch, r, fov, w, h = 120.0, 25.0, 2.0, 40.0, 300, 200
    (view,) = gl.render(mesh, [Camera(yaw, pitch, r, fov, w, h)], normalize=False)
    y, pt = math.radians(yaw), math.radians(pitch)
    eye = r * np.array([math.cos(pt) * math.sin(y), math.sin(pt), math.cos(pt) * math.cos(y)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    q = p - eye
    z = q @ fwd
    f = h / 2 / math.tan(math.radians(fov) / 2)
    col = w / 2 + f * (q @ right) / z
    row = h / 2 - f * (q @ up) / z
    rows, cols = np.nonzero(view.alpha > 0)
    assert len(rows) >= 4
    assert abs(cols.mean() + 0.5 - col) < 0.5 and abs(rows.mean() + 0.5 - row) < 0.5
    assert view.depth[view.alpha > 0].mean() == pytest.approx(z, abs=0.012)


def test_one_renderer_many_meshes_equals_fresh_renderers(gl: GLRenderer) -> None:
    meshes = list(shapes().values())
    cams = rig("turntable:3", size=96)
    reused = [gl.render(m, cams) for m in meshes]
    gl.render(meshes[0], rig("ref", size=(70, 50)))  # a size change re-creates the framebuffers
    reused.append(gl.render(meshes[1], cams))
    for m, views in zip([*meshes, meshes[1]], reused, strict=True):
        with GLRenderer(96, 96) as fresh:
            for a, b in zip(views, fresh.render(m, cams), strict=True):
                np.testing.assert_array_equal(a.rgb, b.rgb)
                np.testing.assert_array_equal(a.alpha, b.alpha)
                np.testing.assert_array_equal(a.depth, b.depth)
                np.testing.assert_array_equal(a.normals, b.normals)


def _closed_variants() -> dict[str, Mesh]:
    ico = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    torus = trimesh.creation.torus(0.35, 0.12, major_sections=160, minor_sections=64)
    rng = np.random.default_rng(0)
    flipped = ico.faces.copy()
    sel = rng.random(len(flipped)) < 0.5
    flipped[sel] = flipped[sel][:, ::-1]  # inconsistent winding: must not be culled
    bowl = ico.faces[ico.triangles_center[:, 1] < 0.2]  # open: the inside is visible from above
    return {
        "sphere": Mesh.from_arrays(ico.vertices, ico.faces),
        "inverted": Mesh.from_arrays(ico.vertices, ico.faces[:, ::-1]),
        "torus split seams": Mesh.from_arrays(
            torus.vertices[torus.faces].reshape(-1, 3), np.arange(3 * len(torus.faces)).reshape(-1, 3)
        ),
        "inconsistent": Mesh.from_arrays(ico.vertices, flipped),
        "bowl": Mesh.from_arrays(ico.vertices, bowl),
    }


def test_closed_orientation() -> None:
    from gen3deval.render.shading import closed_orientation

    got = {k: closed_orientation(m) for k, m in _closed_variants().items()}
    assert got == {"sphere": 1, "inverted": -1, "torus split seams": 1, "inconsistent": 0, "bowl": 0}
    a, b = trimesh.creation.icosphere(2), trimesh.creation.icosphere(2)
    b.apply_translation((3, 0, 0))
    b.invert()
    mixed = trimesh.util.concatenate([a, b])
    assert closed_orientation(Mesh.from_arrays(mixed.vertices, mixed.faces)) == 0


def test_face_culling_changes_nothing(gl: GLRenderer) -> None:
    """Auto culling (closed meshes only) gives the same images as drawing every face."""
    cams = rig("trellis8", size=128)[::3]
    with GLRenderer(128, 128, cull="never") as plain:
        for name, mesh in _closed_variants().items():
            for a, b in zip(gl.render(mesh, cams), plain.render(mesh, cams), strict=True):
                np.testing.assert_array_equal(a.alpha, b.alpha, err_msg=name)
                both = a.alpha > 0
                # Ties between a silhouette's front and back faces may resolve differently: <0.2% of pixels.
                assert np.mean(np.any(a.rgb != b.rgb, axis=2)[both]) < 2e-3, name
                assert np.mean(np.abs(a.depth[both] - b.depth[both]) > 1e-5) < 2e-3, name
            if name == "bowl":  # the inside shows from above: more than the outline of a disc's rim
                assert a.alpha.sum() > 0.2 * 128 * 128 * 0.3


def test_interleaved_contexts_do_not_interfere(gl: GLRenderer) -> None:
    """Another GL context made current after ours (a second renderer, pyrender, ...) must not capture
    our draws."""
    import moderngl

    mesh, cams = shapes()["torus"], rig("ref", size=64)
    before = gl.render(mesh, cams)[0]
    other = GLRenderer(32, 32)
    foreign = moderngl.create_context(standalone=True, backend="egl")  # now current
    after = gl.render(mesh, cams)[0]
    np.testing.assert_array_equal(before.rgb, after.rgb)
    np.testing.assert_array_equal(before.depth, after.depth)
    assert other.render(mesh, rig("ref", size=32))[0].alpha.any()
    foreign.release()
    other.release()
    np.testing.assert_array_equal(gl.render(mesh, cams)[0].rgb, before.rgb)


def test_asset_material_is_red_and_grey_material_is_grey(gl: GLRenderer, rc: RaycastRenderer) -> None:
    mesh = sphere(0.5, 3, color=(0.9, 0.05, 0.05, 1.0))
    for r in (gl, rc):
        (asset,) = r.render(mesh, rig("ref", size=64))
        (grey,) = r.render(mesh, rig("ref", size=64), material="grey")
        fg = asset.alpha > 0.5
        red = asset.rgb[fg].astype(int)
        assert (
            (red[:, 0] > 100).all()
            and (red[:, 0] > 3 * red[:, 1]).all()
            and (red[:, 0] > 3 * red[:, 2]).all()
        )
        g = grey.rgb[grey.alpha > 0.5].astype(int)
        assert (g[:, 0] == g[:, 1]).all() and (g[:, 1] == g[:, 2]).all() and g[:, 0].max() > 100
        np.testing.assert_array_equal(asset.alpha, grey.alpha)


def _textured_quad() -> Mesh:
    """A unit quad in the z = 0 plane facing +Z; its texture is red in the top half (first rows) and blue
    below; glTF uv (0, 0) is the top-left corner of the texture."""
    tex = np.zeros((8, 8, 4), np.uint8)
    tex[:4] = (255, 0, 0, 255)
    tex[4:] = (0, 0, 255, 255)
    v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], dtype=np.float64)
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], dtype=np.float32)  # v down: top edge has v = 0
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return Mesh(v, faces, np.zeros(2, np.int32), (Material((1, 1, 1, 1), tex),), uv=uv)


def test_texture_orientation_and_vertex_colours(gl: GLRenderer, rc: RaycastRenderer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gen3deval.mesh.io import load_mesh, save_mesh

    quad = _textured_quad()
    cam = [Camera(0, 0, 2.0, 40, 64, 64)]
    saved = load_mesh(save_mesh(quad, tmp_path / "quad.glb"))
    for r in (gl, rc):
        for m in (quad, saved):  # also through GLB: load_mesh keeps glTF's v-down convention
            (v,) = r.render(m, cam, normalize=False)
            top, bottom = v.rgb[20, 32].astype(int), v.rgb[44, 32].astype(int)
            assert top[0] > 150 and top[2] < 30, top
            assert bottom[2] > 150 and bottom[0] < 30, bottom
    # Vertex colours multiply the base colour; GL interpolation equals the ray caster's barycentric one.
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    vc = np.c_[(s.vertices + 0.5).clip(0, 1), np.ones(len(s.vertices))].astype(np.float32)
    m = Mesh(
        s.vertices,
        s.faces.astype(np.int64),
        np.zeros(len(s.faces), np.int32),
        (Material(),),
        vertex_colors=vc,
    )
    cams = rig("turntable:2", size=96)
    for a, b in zip(gl.render(m, cams), rc.render(m, cams), strict=True):
        both = interior((a.alpha > 0.5) & (b.alpha > 0.5))
        d = np.abs(a.rgb[both].astype(int) - b.rgb[both].astype(int)).max(axis=1)
        assert np.quantile(d, 0.99) <= 2
        assert a.rgb[both].std(axis=0).min() > 10  # actually colourful


def test_textured_and_plain_materials_in_one_mesh(gl: GLRenderer, rc: RaycastRenderer) -> None:
    """A plain material drawn after a textured one must not pick up the texture."""
    quad = _textured_quad()
    shift = np.array([0.6, 0.0, 0.0])
    mesh = Mesh(
        np.vstack([quad.vertices - shift, quad.vertices + shift]),
        np.vstack([quad.faces, quad.faces + 4]),
        np.array([0, 0, 1, 1], np.int32),
        (quad.materials[0], Material((0.1, 0.9, 0.1, 1.0))),
        uv=np.vstack([quad.uv, quad.uv]),
    )
    cam = [Camera(0, 0, 3.0, 40, 96, 96)]
    for r in (gl, rc):
        (v,) = r.render(mesh, cam, normalize=False)
        left_top, right_top = v.rgb[37, 22].astype(int), v.rgb[37, 74].astype(int)
        assert left_top[0] > 150 and left_top[1] < 30, left_top  # red texture half
        assert right_top[1] > 150 and right_top[0] < 60 and right_top[2] < 60, right_top  # plain green


def test_empty_mesh_renders_blank_views(gl: GLRenderer, rc: RaycastRenderer) -> None:
    empty = Mesh.from_arrays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    for r in (gl, rc):
        views = r.render(empty, rig("turntable:2", size=32))
        assert all((v.alpha == 0).all() and (v.rgb == 255).all() for v in views)


def test_bad_options_and_meshes_are_clear_errors(gl: GLRenderer) -> None:
    with pytest.raises(ConfigError, match="material"):
        gl.render(sphere(0.5, 1), rig("ref", 16), material="shiny")
    with pytest.raises(ConfigError, match="background"):
        gl.render(sphere(0.5, 1), rig("ref", 16), background="green")
    with pytest.raises(ConfigError, match="backend"):
        Renderer(backend="vulkan")
    bad = Mesh.from_arrays([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], [[0, 1, 2]], source="bad.glb")
    with pytest.raises(Exception, match=r"bad\.glb.*NaN"):
        gl.render(bad, rig("ref", 16))


def test_missing_egl_library_is_a_render_error_naming_it() -> None:
    with pytest.raises(RenderError) as err:
        GLRenderer(16, 16, libegl="/nonexistent/libEGL.so.1")
    msg = str(err.value)
    assert "libEGL.so.1" in msg and "apt-get install libegl1" in msg and "libgl1-mesa-dri" in msg


def test_auto_backend_falls_back_to_raycast_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLCONTEXT_LINUX_LIBEGL", "/nonexistent/libEGL.so.1")  # read by glcontext
    with pytest.warns(RuntimeWarning, match="libEGL"):
        r = Renderer(size=32, backend="auto")
    assert r.backend == "raycast" and r.info["renderer"] == "raycast"
    views = r.render(sphere(0.5, 2), "ref")
    assert views[0].alpha.sum() > 50
    with pytest.raises(RenderError):
        Renderer(size=32, backend="gl")


def test_public_renderer_and_module_level_render() -> None:
    import gen3deval

    mesh = sphere(3.0, 2)  # normalised to a unit box before rendering
    r = Renderer(size=48, backend="gl")
    assert r.backend == "gl" and r.info["gl_renderer"]
    views = r.render(mesh, "trellis8")
    assert len(views) == 8 and isinstance(views[0], View) and views[0].rgb.shape == (48, 48, 3)
    # Normalised: the unit-box sphere (radius 0.5) gives the same silhouette as a radius-0.5 sphere.
    small = r.render(sphere(0.5, 2), "trellis8", normalize=False)
    np.testing.assert_array_equal(views[0].alpha, small[0].alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = render(mesh, rig="ref", size=48, backend="gl")
        b = gen3deval.render(mesh, rig="ref", size=48, backend="gl")
    np.testing.assert_array_equal(a[0].rgb, b[0].rgb)
    from gen3deval.render import get_renderer

    assert get_renderer("gl", 48) is get_renderer("gl", 48)
