"""The ray-cast renderer: trimesh ray queries on Embree (embreex). The fallback when no OpenGL context
can be made, and the independent oracle that the GL renderer is tested against.

One ray per pixel centre (no anti-aliasing: alpha is 0 or 1), same cameras, same shading model
(:mod:`gen3deval.render.shading`), same depth definition (camera-space z-depth along -Z in world units,
``inf`` on the background), same normals (flat face normal turned towards the camera).

Hit points are recomputed in float64 by intersecting the ray with the plane of the triangle Embree
reports (Embree itself works in float32). Textures are sampled bilinearly at level 0 with repeat
wrapping (no mipmaps, so minified textures alias more than in the GL renderer).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gen3deval.mesh.types import Mesh
from gen3deval.render.cameras import Camera
from gen3deval.render.shading import (
    BACKGROUNDS,
    GREY_SRGB,
    Prepared,
    bilinear_repeat,
    check_options,
    linear_to_srgb,
    prepare,
    shade,
    srgb_to_linear,
)
from gen3deval.render.view import View, check_passes


class RaycastRenderer:
    """CPU ray caster with the same ``render`` signature as :class:`~gen3deval.render.gl.GLRenderer`.
    ``width``/``height`` are only the default size: each camera's own size is used."""

    def __init__(self, width: int = 512, height: int = 512) -> None:
        self.size = (int(width), int(height))
        import embreex
        import trimesh

        self.info: dict[str, str] = {
            "renderer": "raycast",
            "trimesh": str(trimesh.__version__),
            "embreex": str(getattr(embreex, "__version__", "")),
        }

    def render(
        self,
        mesh: Mesh | Prepared,
        cameras: list[Camera],
        *,
        material: str = "asset",
        background: str = "white",
        normalize: bool = True,
        passes: str = "all",
    ) -> list[View]:
        """Render ``mesh`` from each camera (bbox-normalised first when ``normalize``); one View per camera.
        ``passes="color"``: colour and alpha only (the same pixels; depth and normals None)."""
        check_options(material, background)
        check_passes(passes)
        prep = mesh if isinstance(mesh, Prepared) else prepare(mesh, normalize=normalize)
        bg = BACKGROUNDS[background]
        intersector = None
        if prep.n_faces:
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            intersector = RayMeshIntersector(prep.mesh.to_trimesh())
        normals = prep.mesh.face_normals()
        tex_lin = {
            i: srgb_to_linear(t[:, :, :3] / 255.0).astype(np.float32) for i, t in prep.textures.items()
        }
        return [
            self._render_one(prep, intersector, normals, tex_lin, cam, material, bg, background, passes)
            for cam in cameras
        ]

    def _render_one(
        self,
        prep: Prepared,
        intersector: object,
        normals: NDArray[np.float64],
        tex_lin: dict[int, NDArray[np.float32]],
        cam: Camera,
        material: str,
        bg: float,
        background: str,
        passes: str = "all",
    ) -> View:
        h, w = int(cam.height), int(cam.width)
        rgb = np.full((h * w, 3), np.uint8(round(bg * 255)), dtype=np.uint8)
        alpha = np.zeros(h * w, dtype=np.float32)
        all_passes = passes == "all"
        depth = np.full(h * w, np.inf, dtype=np.float32) if all_passes else None
        nrm = np.zeros((h * w, 3), dtype=np.float32) if all_passes else None
        if intersector is not None:
            dirs = cam.ray_directions().reshape(-1, 3)
            eye = cam.position
            tri = intersector.intersects_first(np.broadcast_to(eye, dirs.shape), dirs)  # type: ignore[attr-defined]
            hit = np.flatnonzero(tri >= 0)
            f = tri[hit]
            n = normals[f]
            d = dirs[hit]
            v0 = prep.mesh.vertices[prep.mesh.faces[f, 0]]
            denom = np.einsum("ij,ij->i", n, d)
            ok = denom != 0  # degenerate triangles (zero normal) cannot be placed; drop them
            hit, f, n, d, v0, denom = hit[ok], f[ok], n[ok], d[ok], v0[ok], denom[ok]
            t = np.einsum("ij,ij->i", n, v0 - eye) / denom
            points = eye + t[:, None] * d
            n = np.where((denom > 0)[:, None], -n, n)  # turn towards the camera
            if depth is not None and nrm is not None:
                back = cam.c2w[:3, 2]
                depth[hit] = t * -(d @ back)
                nrm[hit] = n
            alpha[hit] = 1.0
            albedo = self._albedo(prep, f, points, tex_lin, material)
            lin = shade(n @ cam.c2w[:3, :3], albedo)
            rgb[hit] = np.round(linear_to_srgb(lin) * 255.0).astype(np.uint8)
        return View(
            rgb=rgb.reshape(h, w, 3),
            alpha=alpha.reshape(h, w),
            depth=None if depth is None else depth.reshape(h, w),
            normals=None if nrm is None else nrm.reshape(h, w, 3),
            camera=cam,
            background=background,
        )

    @staticmethod
    def _albedo(
        prep: Prepared,
        f: NDArray[np.int64],
        points: NDArray[np.float64],
        tex_lin: dict[int, NDArray[np.float32]],
        material: str,
    ) -> NDArray[np.float64]:
        """Linear albedo (N, 3) at hit points on faces ``f``."""
        if material == "grey":
            return np.broadcast_to(srgb_to_linear(np.full(3, GREY_SRGB)), (len(f), 3)).copy()
        mesh = prep.mesh
        fm = np.asarray(mesh.face_material)[f]
        albedo = prep.base[fm].astype(np.float64)
        if prep.vcol is None and not tex_lin:
            return albedo
        import trimesh

        corners = mesh.faces[f]
        bary = trimesh.triangles.points_to_barycentric(mesh.vertices[corners], points)
        if prep.vcol is not None:
            albedo = albedo * np.einsum("ij,ijk->ik", bary, prep.vcol[corners])
        if prep.uv is not None:
            for mat, tex in tex_lin.items():
                sel = np.flatnonzero(fm == mat)
                if len(sel):
                    uv = np.einsum("ij,ijk->ik", bary[sel], prep.uv[corners[sel]])
                    albedo[sel] = albedo[sel] * bilinear_repeat(tex, uv)
        return albedo
