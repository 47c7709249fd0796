"""Image metrics between renders of a candidate and a reference (PROTOCOLS.md section 7).

Images are (H, W, 3) uint8 sRGB, already alpha-composited over the rig's background (white by default) by the
renderer; they are compared as RGB in [0, 1] (value / 255), no further compositing or colour conversion.
Alpha masks are (H, W) floats in [0, 1].

- ``mse``: mean over pixels and channels of (a - b)^2.
- ``psnr``: min(10 log10(1 / mse), 100) in dB: capped at ``PSNR_CAP_DB`` = 100 dB, which identical images
  get (instead of ``inf``, which would make every mean over views or cases infinite). 100 dB is mse 1e-10,
  far below one 8-bit level ((1/255)^2 ~ 1.5e-5 gives 48 dB), so the cap changes no other value.
- ``ssim``: scikit-image ``structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1`` (Wang et al. 2004), per channel, averaged over channels.
- ``silhouette_iou``: IoU of the masks ``alpha > 0.5``; 1.0 when both masks are empty (identical silhouettes).

Over a rig, each metric is computed per view and averaged (so PSNR is the mean of per-view PSNRs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import UserInputError
from gen3deval.metrics.base import PSNR_CAP_DB


class ViewLike(Protocol):
    """Anything with ``rgb`` (H, W, 3) uint8 and ``alpha`` (H, W) float, e.g. :class:`gen3deval.render.View`."""

    rgb: Any
    alpha: Any


def _unit_rgb(img: NDArray[Any], name: str) -> NDArray[np.float64]:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise UserInputError(f"{name}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if np.issubdtype(a.dtype, np.floating):
        # float images are taken as already in [0, 1]
        return a.astype(np.float64)
    raise UserInputError(f"{name}: expected uint8 (0..255) or float (0..1) pixels, got {a.dtype}")


def _pair(a: NDArray[Any], b: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    fa, fb = _unit_rgb(a, "candidate image"), _unit_rgb(b, "reference image")
    if fa.shape != fb.shape:
        raise UserInputError(f"image sizes differ: candidate {fa.shape} vs reference {fb.shape}")
    return fa, fb


def mse(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Mean squared error of two (H, W, 3) images (uint8 or float in [0, 1]), RGB scaled to [0, 1]."""
    fa, fb = _pair(a, b)
    return float(np.mean((fa - fb) ** 2))


def psnr_from_mse(err: float) -> float:
    """min(10 log10(1 / err), ``PSNR_CAP_DB``) in dB: 100 for ``err`` = 0 (identical images)."""
    return PSNR_CAP_DB if err <= 0 else min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / err))


def psnr(a: NDArray[Any], b: NDArray[Any]) -> float:
    """10 log10(1 / mse) in dB (peak 1 after scaling), capped at 100 dB (equal images give 100)."""
    return psnr_from_mse(mse(a, b))


def ssim(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Structural similarity (Gaussian sigma 1.5, data range 1, population covariances), channel mean."""
    from skimage.metrics import structural_similarity

    fa, fb = _pair(a, b)
    if min(fa.shape[:2]) < 7:
        raise UserInputError(f"SSIM needs images of at least 7x7 pixels, got {fa.shape[:2]}")
    return float(
        structural_similarity(
            fa,
            fb,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
    )


def silhouette_iou(alpha_a: NDArray[Any], alpha_b: NDArray[Any], threshold: float = 0.5) -> float:
    """IoU of the masks ``alpha > threshold`` of two (H, W) alpha images; 1.0 if both masks are empty."""
    ma = np.asarray(alpha_a) > threshold
    mb = np.asarray(alpha_b) > threshold
    if ma.shape != mb.shape or ma.ndim != 2:
        raise UserInputError(f"alpha masks must be (H, W) of the same size, got {ma.shape} and {mb.shape}")
    union = int(np.count_nonzero(ma | mb))
    return 1.0 if union == 0 else int(np.count_nonzero(ma & mb)) / union


def _check_views(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> None:
    if len(views_a) != len(views_b):
        raise UserInputError(
            f"different numbers of views: candidate {len(views_a)} vs reference {len(views_b)}"
        )
    if not views_a:
        raise UserInputError("no views to compare")


def views_mse(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> float:
    """Mean over views of :func:`mse`."""
    _check_views(views_a, views_b)
    return float(np.mean([mse(a.rgb, b.rgb) for a, b in zip(views_a, views_b, strict=True)]))


def views_psnr(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> float:
    """Mean over views of :func:`psnr` (each capped at 100 dB)."""
    _check_views(views_a, views_b)
    return float(np.mean([psnr(a.rgb, b.rgb) for a, b in zip(views_a, views_b, strict=True)]))


def views_ssim(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> float:
    """Mean over views of :func:`ssim`."""
    _check_views(views_a, views_b)
    return float(np.mean([ssim(a.rgb, b.rgb) for a, b in zip(views_a, views_b, strict=True)]))


def views_silhouette_iou(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> float:
    """Mean over views of :func:`silhouette_iou` of the alpha channels."""
    _check_views(views_a, views_b)
    return float(np.mean([silhouette_iou(a.alpha, b.alpha) for a, b in zip(views_a, views_b, strict=True)]))


def image_metrics(views_a: Sequence[ViewLike], views_b: Sequence[ViewLike]) -> dict[str, float]:
    """``mse``, ``psnr``, ``ssim``, ``silhouette_iou`` of candidate views vs reference views (same rig, same
    order), each the mean over the views. Raises UserInputError when counts or sizes differ."""
    _check_views(views_a, views_b)
    rows = []
    for i, (a, b) in enumerate(zip(views_a, views_b, strict=True)):
        try:
            err = mse(a.rgb, b.rgb)
            rows.append(
                (
                    err,
                    psnr_from_mse(err),
                    ssim(a.rgb, b.rgb),
                    silhouette_iou(a.alpha, b.alpha),
                )
            )
        except UserInputError as exc:
            raise UserInputError(f"view {i}: {exc}") from None
    cols = np.asarray(rows, dtype=np.float64)
    return {
        "mse": float(cols[:, 0].mean()),
        "psnr": float(cols[:, 1].mean()),
        "ssim": float(cols[:, 2].mean()),
        "silhouette_iou": float(cols[:, 3].mean()),
    }
