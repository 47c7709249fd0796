"""Headless rendering of meshes from named camera rigs (PROTOCOLS.md section 6).

>>> from gen3deval.render import Renderer, render, rig, write_views
>>> views = render(mesh, rig="trellis8")                     # doctest: +SKIP
>>> views[0].rgb.shape, views[0].depth.dtype                 # doctest: +SKIP
((512, 512, 3), dtype('float32'))
>>> views = render(mesh, rig="trellis8", passes="color")     # doctest: +SKIP
>>> views[0].depth is None                                   # colour + alpha only, same pixels; faster
True

Backends: ``gl`` (moderngl on EGL, :mod:`gen3deval.render.gl`), ``raycast`` (trimesh + Embree,
:mod:`gen3deval.render.raycast`), ``auto`` (GL, falling back to ray casting with a warning).
Meshes are bbox-normalised before rendering unless ``normalize=False``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from gen3deval._callable import make_module_callable
from gen3deval.errors import ConfigError, RenderError
from gen3deval.mesh.types import Mesh
from gen3deval.render.cameras import RIGS, Camera, rig
from gen3deval.render.shading import BACKGROUNDS, MATERIALS
from gen3deval.render.view import PASSES, View

__all__ = [
    "BACKENDS",
    "BACKGROUNDS",
    "MATERIALS",
    "PASSES",
    "RIGS",
    "Camera",
    "Renderer",
    "View",
    "render",
    "rig",
    "write_views",
]

BACKENDS = ("auto", "gl", "raycast")


class _Backend(Protocol):
    info: dict[str, str]

    def render(
        self,
        mesh: Mesh,
        cameras: list[Camera],
        *,
        material: str,
        background: str,
        normalize: bool,
        passes: str = "all",
    ) -> list[View]: ...


class Renderer:
    """A renderer that keeps its backend (and its GL context) for many meshes.

    Args:
        size: default image size for rigs given by name (int for square, or (width, height)); cameras
            passed as objects keep their own size.
        backend: ``auto`` (GL, else ray casting with a warning), ``gl`` or ``raycast``.
        samples: MSAA samples for the GL backend (0 = none, the default).
    """

    def __init__(self, size: int | tuple[int, int] = 512, backend: str = "auto", *, samples: int = 0) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown render backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.size = size
        w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self._impl: _Backend
        if backend in ("auto", "gl"):
            from gen3deval.render.gl import GLRenderer

            try:
                self._impl = GLRenderer(w, h, samples=samples)
            except RenderError as exc:
                if backend == "gl":
                    raise
                warnings.warn(
                    f"{exc}; falling back to the ray-cast renderer (slower)", RuntimeWarning, stacklevel=2
                )
                backend = "raycast"
        if backend == "raycast":
            from gen3deval.render.raycast import RaycastRenderer

            self._impl = RaycastRenderer(w, h)
        self.backend = backend

    @property
    def info(self) -> dict[str, str]:
        """Backend name and versions (with the GL renderer string), for the protocol fingerprint."""
        return dict(self._impl.info)

    def render(
        self,
        mesh: Mesh,
        cameras: Sequence[Camera] | str = "trellis8",
        material: str = "asset",
        background: str = "white",
        normalize: bool = True,
        passes: str = "all",
    ) -> list[View]:
        """Render ``mesh`` from ``cameras`` (a list, or a rig name rendered at this renderer's size).

        ``material``: ``asset`` (base colours, textures, vertex colours) or ``grey`` (geometry only).
        ``background``: ``white`` (the protocol) or ``black`` (compat only). ``passes``: ``all`` (colour,
        alpha, depth, normals) or ``color`` (colour and alpha only, pixel for pixel the same; depth and
        normals are None: what image metrics need, without the float32 depth/normal pass and its
        read-back). Returns one View per camera.
        """
        cams = rig(cameras, self.size) if isinstance(cameras, str) else list(cameras)
        return self._impl.render(
            mesh, cams, material=material, background=background, normalize=normalize, passes=passes
        )


_CACHE: dict[tuple[str, int | tuple[int, int], int], Renderer] = {}


def get_renderer(backend: str = "auto", size: int | tuple[int, int] = 512, samples: int = 0) -> Renderer:
    """The process-wide renderer for (backend, size, samples), created on first use."""
    key = (backend, size if isinstance(size, int) else (int(size[0]), int(size[1])), int(samples))
    if key not in _CACHE:
        _CACHE[key] = Renderer(size=size, backend=backend, samples=samples)
    return _CACHE[key]


def render(
    mesh: Mesh,
    rig: str | Sequence[Camera] = "trellis8",
    size: int | tuple[int, int] = 512,
    material: str = "asset",
    backend: str = "auto",
    background: str = "white",
    normalize: bool = True,
    passes: str = "all",
) -> list[View]:
    """Render ``mesh`` (bbox-normalised) from a rig with a cached renderer per (backend, size);
    ``passes="color"`` for colour and alpha only (see :meth:`Renderer.render`)."""
    return get_renderer(backend, size).render(
        mesh, rig, material=material, background=background, normalize=normalize, passes=passes
    )


def _png(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def write_views(views: Sequence[View], out_dir: str | Path, passes: bool = False) -> list[Path]:
    """Write ``view_000.png``... (RGB composited over the background), ``cameras.json`` (one camera dict
    per view, :meth:`Camera.to_dict`), and with ``passes``: ``depth_000.npy`` (float32 z-depth, inf on
    the background), ``normal_000.png`` (world normals mapped by (n + 1) / 2 to 0..255, black on the
    background) and ``alpha_000.png`` (8-bit). Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if passes and any(v.depth is None or v.normals is None for v in views):
        raise ConfigError(
            "write_views(passes=True) needs views rendered with passes='all' (these have no depth)"
        )
    for i, v in enumerate(views):
        paths.append(_png(v.rgb, out / f"view_{i:03d}.png"))
        if passes:
            p = out / f"depth_{i:03d}.npy"
            np.save(p, np.ascontiguousarray(v.depth, dtype=np.float32))
            paths.append(p)
            n8 = np.round((np.asarray(v.normals) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
            n8[v.alpha <= 0] = 0
            paths.append(_png(n8, out / f"normal_{i:03d}.png"))
            paths.append(
                _png(np.round(np.asarray(v.alpha) * 255.0).astype(np.uint8), out / f"alpha_{i:03d}.png")
            )
    cam_path = out / "cameras.json"
    cam_path.write_text(json.dumps([v.camera.to_dict() for v in views], indent=1))
    paths.append(cam_path)
    return paths


make_module_callable(__name__, "render")
