"""The baseline renderer for ``bench_clip.py``: the public CLIP-score script's path, matplotlib's
``Poly3DCollection`` drawn by Agg, written correctly so that it renders what gen3deval's renderer renders.

Correct means: the same cameras (:mod:`gen3deval.render.cameras`: position, look-at, vertical fov,
image size, pixel-centre convention), the same bbox normalisation and colours
(:func:`gen3deval.render.shading.prepare`), the same flat shading and camera-fixed lights
(:func:`gen3deval.render.shading.shade`, normals turned towards the camera), sRGB output over a white
(or black) background, and hidden surfaces by the painter's algorithm (faces sorted far to near by the
mean projected depth of their corners: ``Poly3DCollection(zsort="average")``). Per face there is one
colour: the albedo at the face centroid (base colour x the mean vertex colour x the texture sampled at
the centroid uv). Polygons are drawn without anti-aliasing and without edges, so neighbouring faces
leave no hairline cracks of background between them.

The projection is gen3deval's own: :class:`_CameraAxes` replaces ``Axes3D.get_proj`` by the camera's
OpenGL matrix (projection x view), whose normalised device coordinates fill the axes; mplot3d then does
what it does for any 3D axes (project every vertex, sort, draw). To give the baseline its best case, the
figure, the canvas and the face collection are made once per mesh and only the camera and the face
colours change between views (a script that makes a figure per view is slower still).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from numpy.typing import NDArray

from gen3deval.mesh.types import Mesh
from gen3deval.render.cameras import Camera
from gen3deval.render.shading import (
    BACKGROUNDS,
    GREY_SRGB,
    Prepared,
    bilinear_repeat,
    depth_range,
    face_cross,
    linear_to_srgb,
    prepare,
    shade,
    srgb_to_linear,
    unit_normals,
)


class _CameraAxes(Axes3D):
    """3D axes whose projection is a given 4 x 4 matrix (world -> clip space) instead of mplot3d's
    elevation/azimuth camera."""

    name = "gen3deval_camera"
    camera_matrix: NDArray[np.float64] = np.eye(4)

    def get_proj(self) -> NDArray[np.float64]:
        return self.camera_matrix


def face_albedo(prep: Prepared, material: str = "asset") -> NDArray[np.float64]:
    """(F, 3) linear albedo of each face at its centroid."""
    mesh = prep.mesh
    nf = mesh.n_faces
    if material == "grey":
        return np.broadcast_to(srgb_to_linear(np.full(3, GREY_SRGB)), (nf, 3)).copy()
    fm = np.asarray(mesh.face_material)
    albedo = prep.base[fm].astype(np.float64)
    if prep.vcol is not None:
        albedo *= prep.vcol[mesh.faces].mean(axis=1)
    if prep.uv is not None:
        for mat, tex in prep.textures.items():
            sel = np.flatnonzero(fm == mat)
            if len(sel):
                tex_lin = srgb_to_linear(tex[:, :, :3] / 255.0).astype(np.float32)
                uv = prep.uv[mesh.faces[sel]].mean(axis=1)
                albedo[sel] *= bilinear_repeat(tex_lin, uv)
    return albedo


class MplRenderer:
    """Renders meshes with matplotlib (Agg); ``render`` returns (H, W, 3) uint8 sRGB images, one per
    camera. Square images only (mplot3d keeps its axes square)."""

    def __init__(self, size: int = 512, dpi: int = 100) -> None:
        self.size = int(size)
        self.fig = Figure(figsize=(self.size / dpi, self.size / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        ax = _CameraAxes(self.fig, rect=(0.0, 0.0, 1.0, 1.0))
        self.fig.add_axes(ax)
        ax.set_axis_off()
        self.ax = ax

    def render(
        self, mesh: Mesh, cameras: list[Camera], *, material: str = "asset", background: str = "white"
    ) -> list[NDArray[np.uint8]]:
        for cam in cameras:
            if (int(cam.width), int(cam.height)) != (self.size, self.size):
                raise ValueError(f"MplRenderer({self.size}) renders {self.size}x{self.size} cameras only")
        prep = prepare(mesh, normalize=True)
        if not prep.n_faces:
            bg = round(BACKGROUNDS[background] * 255)
            return [np.full((self.size, self.size, 3), bg, np.uint8) for _ in cameras]
        tris = prep.mesh.vertices[prep.mesh.faces]  # (F, 3, 3)
        normals = unit_normals(face_cross(prep.mesh.vertices, prep.mesh.faces)).astype(np.float64)
        centroids = tris.mean(axis=1)
        albedo = face_albedo(prep, material)
        bg = BACKGROUNDS[background]
        self.fig.patch.set_facecolor((bg, bg, bg))
        self.ax.patch.set_facecolor((bg, bg, bg))
        coll: Any = Poly3DCollection(
            tris, linewidths=0.0, edgecolors="none", antialiased=False, zsort="average"
        )
        self.ax.add_collection3d(coll, autolim=False)
        # Pixel centres at NDC x = 2 (j + 0.5) / W - 1 (cameras.py): the axes' 2D limits are NDC [-1, 1].
        self.ax.viewLim.intervalx = (-1.0, 1.0)
        self.ax.viewLim.intervaly = (-1.0, 1.0)
        images = []
        try:
            for cam in cameras:
                view = cam.view
                near, far = depth_range(view, prep.center, prep.radius)
                self.ax.camera_matrix = cam.projection(near, far) @ view
                # Flat shading with the lights fixed to the camera; normals turned towards the eye.
                to_eye = cam.position[None, :] - centroids
                n = np.where((np.einsum("ij,ij->i", normals, to_eye) < 0)[:, None], -normals, normals)
                rgb = linear_to_srgb(shade(n @ cam.c2w[:3, :3], albedo))
                coll.set_facecolor(np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1))
                self.canvas.draw()
                images.append(np.asarray(self.canvas.buffer_rgba())[:, :, :3].copy())
        finally:
            coll.remove()
        return images
