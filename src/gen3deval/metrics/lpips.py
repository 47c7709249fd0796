"""LPIPS v0.1 with AlexNet (Zhang et al. 2018), in torch, from the weights of :mod:`gen3deval.models.lpips_weights`.

The reference definition (``lpips.LPIPS(net="alex", version="0.1")``), PROTOCOLS.md section 7:

1. RGB in [0, 1] (uint8 / 255) is scaled to [-1, 1], then the LPIPS scaling layer:
   ``(x - SHIFT) / SCALE`` per channel;
2. AlexNet features after relu1..relu5 (torchvision layout: conv 11/4 pad 2, maxpool 3/2, conv 5 pad 2,
   maxpool 3/2, three conv 3 pad 1);
3. each feature map is unit-normalised over channels (``f / (||f|| + 1e-10)``), the squared difference of the
   two images goes through that layer's 1x1 linear head (non-negative weights, no bias), is averaged over
   space, and the five layers are summed.

Identical images give exactly 0. The model is built once per process and device (CUDA when available) and
evaluates a whole rig in one batched forward (both images of every view pair together).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import DependencyError, UserInputError

# The LPIPS ScalingLayer constants (ImageNet mean/std expressed for inputs in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 32  # AlexNet's two 3/2 max-pools need relu1 maps of >= 7 pixels: images of >= 31 pixels a side


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise DependencyError(
            "the lpips metric needs torch: pip install 'gen3deval[clip]' (install torch==2.13.0 first)"
        ) from None
    return torch


@functools.cache
def _model_class() -> Any:
    torch = _torch()
    nn = torch.nn

    class AlexLPIPS(nn.Module):  # type: ignore[name-defined]
        """(x0, x1) (N, 3, H, W) in [-1, 1] -> (N,) LPIPS distances."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
            self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
            self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
            self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
            self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
            for i, c in enumerate((64, 192, 384, 256, 256)):
                setattr(self, f"lin{i}", nn.Conv2d(c, 1, 1, bias=False))
            self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

        def features(self, x: Any) -> list[Any]:
            f = torch.nn.functional
            h1 = f.relu(self.conv1((x - self.shift) / self.scale))
            h2 = f.relu(self.conv2(f.max_pool2d(h1, 3, 2)))
            h3 = f.relu(self.conv3(f.max_pool2d(h2, 3, 2)))
            h4 = f.relu(self.conv4(h3))
            h5 = f.relu(self.conv5(h4))
            return [h1, h2, h3, h4, h5]

        def forward(self, x0: Any, x1: Any) -> Any:
            n = x0.shape[0]
            total = torch.zeros(n, dtype=x0.dtype, device=x0.device)
            # one pass over both images of every pair
            for i, feat in enumerate(self.features(torch.cat([x0, x1]))):
                unit = feat / (torch.sqrt(torch.sum(feat * feat, dim=1, keepdim=True)) + EPS)
                diff = (unit[:n] - unit[n:]) ** 2
                total = total + getattr(self, f"lin{i}")(diff).mean(dim=(1, 2, 3))
            return total

    return AlexLPIPS


@functools.cache
def get_lpips_model(device: str | None = None) -> Any:
    """The AlexNet-LPIPS torch module (eval mode, float32) on ``device`` (None: CUDA if available, else CPU),
    built once per process and device. Raises DependencyError when torch or the weights are missing."""
    from gen3deval.models.lpips_weights import load_weights

    torch = _torch()
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = {k: torch.from_numpy(v) for k, v in load_weights().items()}
    model = _model_class()()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(dev)


def _to_signed(img: Any, name: str) -> NDArray[np.float32]:
    """(H, W, 3) uint8 (0..255) or float (0..1) -> float32 in [-1, 1]."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise UserInputError(f"{name}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    if min(a.shape[:2]) < MIN_SIZE:
        raise UserInputError(
            f"{name}: LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {a.shape[:2]}"
        )
    if a.dtype == np.uint8:
        unit = a.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(a.dtype, np.floating):
        unit = a.astype(np.float32)
        lo, hi = float(np.min(unit)), float(np.max(unit))
        # a float image outside [0, 1] is almost always 0..255 or already [-1, 1]: both give wrong numbers
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise UserInputError(f"{name}: float pixels must be in [0, 1], got range [{lo:g}, {hi:g}]")
    else:
        raise UserInputError(f"{name}: expected uint8 (0..255) or float (0..1) pixels, got {a.dtype}")
    return unit * np.float32(2.0) - np.float32(1.0)


def _rgb(view: Any) -> Any:
    return view.rgb if hasattr(view, "rgb") else view


def lpips_pairs(
    images_a: Sequence[Any], images_b: Sequence[Any], *, batch_size: int = 16, device: str | None = None
) -> NDArray[np.float64]:
    """LPIPS of each pair (images_a[i], images_b[i]): (N,) float64. Images are (H, W, 3) uint8 or float in
    [0, 1]; all pairs of a batch must share one size. ``batch_size`` pairs (2x images) go in one forward."""
    if len(images_a) != len(images_b):
        raise UserInputError(
            f"different numbers of images: candidate {len(images_a)} vs reference {len(images_b)}"
        )
    if not images_a:
        raise UserInputError("no images to compare")
    xa = [_to_signed(a, f"candidate image {i}") for i, a in enumerate(images_a)]
    xb = [_to_signed(b, f"reference image {i}") for i, b in enumerate(images_b)]
    for i, (a, b) in enumerate(zip(xa, xb, strict=True)):
        if a.shape != b.shape or a.shape != xa[0].shape:
            raise UserInputError(
                f"image {i}: sizes differ (candidate {a.shape}, reference {b.shape}, first {xa[0].shape})"
            )
    torch = _torch()
    model = get_lpips_model(device)
    dev = next(model.parameters()).device
    out: list[NDArray[np.float64]] = []
    with torch.inference_mode():
        for s in range(0, len(xa), max(1, batch_size)):
            ta = torch.from_numpy(np.stack(xa[s : s + batch_size])).permute(0, 3, 1, 2).to(dev)
            tb = torch.from_numpy(np.stack(xb[s : s + batch_size])).permute(0, 3, 1, 2).to(dev)
            out.append(model(ta, tb).double().cpu().numpy())
    return np.concatenate(out)


def lpips(a: Any, b: Any, *, device: str | None = None) -> float:
    """LPIPS v0.1 AlexNet distance of two (H, W, 3) images (uint8, or float in [0, 1]); 0 for equal images."""
    return float(lpips_pairs([a], [b], device=device)[0])


def views_lpips(
    views_a: Sequence[Any], views_b: Sequence[Any], *, batch_size: int = 16, device: str | None = None
) -> float:
    """Mean over views of :func:`lpips` (candidate vs reference views, same rig and order). Views are
    anything with ``.rgb`` (e.g. :class:`gen3deval.render.View`) or raw images; a rig of up to
    ``batch_size`` views is one forward pass."""
    if len(views_a) != len(views_b):
        raise UserInputError(
            f"different numbers of views: candidate {len(views_a)} vs reference {len(views_b)}"
        )
    if not views_a:
        raise UserInputError("no views to compare")
    vals = lpips_pairs(
        [_rgb(v) for v in views_a], [_rgb(v) for v in views_b], batch_size=batch_size, device=device
    )
    return float(vals.mean())
