"""The result of rendering one camera: :class:`View` (re-exported by :mod:`gen3deval.render`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import ConfigError
from gen3deval.render.cameras import Camera

# What a render reads back: "all" (colour, alpha, depth, normals) or "color" (colour and alpha only: what
# image metrics such as CLIP need; no float32 depth/normal pass to compute or read).
PASSES = ("all", "color")


def check_passes(passes: str) -> None:
    """Raise :class:`ConfigError` unless ``passes`` is one of :data:`PASSES`."""
    if passes not in PASSES:
        raise ConfigError(f"unknown render passes {passes!r}; choose one of {', '.join(PASSES)}")


@dataclass(frozen=True, eq=False)
class View:
    """One rendered view. Row 0 is the top of the image.

    Attributes:
        rgb: (H, W, 3) uint8 sRGB, alpha-composited over ``background`` (white by default).
        alpha: (H, W) float32 coverage in [0, 1] (fractional on anti-aliased edges), 0 on the background.
        depth: (H, W) float32 z-depth: camera-space distance along the viewing axis (-Z) in world units
            of the rendered mesh (the bbox-normalised frame unless ``normalize=False``), not the distance
            along the ray; ``inf`` on the background. With MSAA, edge pixels hold the mean over the
            covered samples. None when rendered with ``passes="color"``.
        normals: (H, W, 3) float32 world-space unit normals of the visible surface, flipped to face the
            camera (meshes often have inconsistent winding); zero on the background. None when rendered
            with ``passes="color"``.
        camera: the camera that made the view.
        background: ``"white"`` or ``"black"``, what ``rgb`` is composited over.
    """

    rgb: NDArray[np.uint8]
    alpha: NDArray[np.float32]
    depth: NDArray[np.float32] | None
    normals: NDArray[np.float32] | None
    camera: Camera
    background: str = "white"

    @property
    def mask(self) -> NDArray[np.bool_]:
        """(H, W) silhouette: alpha > 0.5."""
        return self.alpha > 0.5
