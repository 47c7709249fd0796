"""GL near/far planes with ``normalize=False``: an off-centre mesh is not clipped (issue 8, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from gen3deval.mesh.types import Mesh
from gen3deval.render.cameras import Camera
from gen3deval.render.gl import GLRenderer
from gen3deval.render.raycast import RaycastRenderer
from gen3deval.render.shading import depth_range

# A sphere far off the camera's axis: its depth along the axis (1.6 at its front) is much less than its
# distance minus its radius (sqrt(5) - 0.4 = 1.84), where planes taken from the distance put the near plane.
CENTER = np.array([1.0, 0.0, 0.0])
RADIUS = 0.4


def test_depth_range_encloses_an_off_axis_sphere() -> None:
    cam = Camera(yaw_deg=0, pitch_deg=0, radius=2.0, fov_deg=90, width=64, height=64)
    near, far = depth_range(cam.view, CENTER, RADIUS)
    assert near <= 2.0 - RADIUS and far >= 2.0 + RADIUS
    assert near == pytest.approx(0.99 * (2.0 - RADIUS)) and far == pytest.approx(1.01 * (2.0 + RADIUS))


def test_off_centre_mesh_is_not_clipped(gl: GLRenderer, rc: RaycastRenderer) -> None:
    s = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    s.apply_translation(CENTER)
    mesh = Mesh.from_arrays(s.vertices, s.faces)
    cam = Camera(yaw_deg=0, pitch_deg=0, radius=2.0, fov_deg=90, width=256, height=256)
    (v,) = gl.render(mesh, [cam], normalize=False)
    (ref,) = rc.render(mesh, [cam], normalize=False)
    hit = v.alpha > 0.5
    assert hit.sum() > 500
    # the front of the sphere is at depth 2 - 0.4 = 1.6 (the facets lie within 1e-3 inside the sphere)
    assert v.depth[hit].min() == pytest.approx(2.0 - RADIUS, abs=2e-3)
    # and the GL depth agrees with the ray caster's everywhere both see the sphere (a clipped front
    # shows the inside of the back half, ~0.2-0.8 deeper)
    both = hit & (ref.alpha > 0.5)
    assert both.sum() > 0.98 * hit.sum()
    np.testing.assert_allclose(v.depth[both], ref.depth[both], atol=5e-3)
