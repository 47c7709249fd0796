"""Image metrics vs numpy / scikit-image references and analytic cases (PROTOCOLS.md section 7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gen3deval.errors import UserInputError
from gen3deval.metrics.image import image_metrics, mse, psnr, silhouette_iou, ssim


@dataclass
class FakeView:  # the renderer's View is duck-typed here: only rgb and alpha are read
    rgb: np.ndarray
    alpha: np.ndarray


def rand_img(rng, h=48, w=40):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_mse_and_psnr_analytic():
    a = np.zeros((10, 10, 3), dtype=np.uint8)
    b = np.full((10, 10, 3), 51, dtype=np.uint8)  # 51/255 = 0.2 exactly in [0,1] terms -> mse 0.04
    assert mse(a, b) == pytest.approx(0.04, abs=1e-15)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-12)
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    assert mse(a, white) == 1.0 and psnr(a, white) == 0.0


def test_against_skimage_and_numpy():
    rng = np.random.default_rng(0)
    a = rand_img(rng)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    fa, fb = a / 255.0, b / 255.0
    assert mse(a, b) == pytest.approx(np.mean((fa - fb) ** 2), rel=1e-14)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(fa, fb, data_range=1.0), rel=1e-12)
    ref_ssim = structural_similarity(
        fa, fb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2
    )
    assert ssim(a, b) == pytest.approx(ref_ssim, abs=1e-12)
    # channel-averaged: the mean of the three single-channel SSIMs
    per_channel = [
        structural_similarity(
            fa[..., c],
            fb[..., c],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for c in range(3)
    ]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert 0.0 < ssim(a, b) < 1.0


def test_identical_images():
    rng = np.random.default_rng(1)
    a = rand_img(rng)
    assert mse(a, a) == 0.0
    assert psnr(a, a) == 100.0  # capped (PROTOCOLS.md section 7): never inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    alpha = rng.random(a.shape[:2]).astype(np.float32)
    assert silhouette_iou(alpha, alpha) == 1.0


def test_silhouette_iou_analytic():
    a = np.zeros((10, 10), dtype=np.float32)
    b = np.zeros((10, 10), dtype=np.float32)
    a[:, :6] = 1.0  # 60 pixels
    b[:, 4:] = 0.9  # 60 pixels, overlap 20
    assert silhouette_iou(a, b) == pytest.approx(20 / 100)
    # threshold 0.5 is strict: alpha exactly 0.5 is background
    c = np.full((10, 10), 0.5, dtype=np.float32)
    assert silhouette_iou(a, c) == 0.0
    assert silhouette_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_image_metrics_averages_views():
    rng = np.random.default_rng(2)
    va = [FakeView(rand_img(rng), rng.random((48, 40))) for _ in range(3)]
    vb = [FakeView(rand_img(rng), rng.random((48, 40))) for _ in range(3)]
    m = image_metrics(va, vb)
    assert set(m) == {"mse", "psnr", "ssim", "silhouette_iou"}
    assert m["mse"] == pytest.approx(np.mean([mse(a.rgb, b.rgb) for a, b in zip(va, vb, strict=True)]))
    assert m["psnr"] == pytest.approx(np.mean([psnr(a.rgb, b.rgb) for a, b in zip(va, vb, strict=True)]))
    assert m["ssim"] == pytest.approx(np.mean([ssim(a.rgb, b.rgb) for a, b in zip(va, vb, strict=True)]))
    assert m["silhouette_iou"] == pytest.approx(
        np.mean([silhouette_iou(a.alpha, b.alpha) for a, b in zip(va, vb, strict=True)])
    )
    same = image_metrics(va, va)
    assert same["mse"] == 0.0 and same["psnr"] == 100.0
    # one identical view of three: the mean stays finite (the cap), as the inf aggregates did not
    mixed = image_metrics(va, [va[0], *vb[1:]])
    expected = (
        100.0 + sum(10 * math.log10(1 / mse(a.rgb, b.rgb)) for a, b in zip(va[1:], vb[1:], strict=True))
    ) / 3
    assert mixed["psnr"] == pytest.approx(expected, rel=1e-12) and math.isfinite(mixed["psnr"])
    assert same["ssim"] == pytest.approx(1.0) and same["silhouette_iou"] == 1.0


def test_registry_view_functions_match_image_metrics():
    from gen3deval.metrics.base import metric_info

    rng = np.random.default_rng(3)
    va = [FakeView(rand_img(rng), rng.random((48, 40))) for _ in range(2)]
    vb = [FakeView(rand_img(rng), rng.random((48, 40))) for _ in range(2)]
    m = image_metrics(va, vb)
    for key in ("mse", "psnr", "ssim", "silhouette_iou"):
        assert metric_info(key)(va, vb) == pytest.approx(m[key], rel=1e-14)


def test_errors():
    rng = np.random.default_rng(4)
    a = rand_img(rng)
    with pytest.raises(UserInputError, match="sizes differ"):
        mse(a, a[:10])
    with pytest.raises(UserInputError, match=r"\(H, W, 3\)"):
        mse(a[..., 0], a[..., 0])
    with pytest.raises(UserInputError, match="numbers of views"):
        image_metrics([FakeView(a, a[..., 0] / 255)], [])
    with pytest.raises(UserInputError, match="view 1"):
        image_metrics(
            [FakeView(a, np.zeros(a.shape[:2])), FakeView(a, np.zeros(a.shape[:2]))],
            [FakeView(a, np.zeros(a.shape[:2])), FakeView(a[:20], np.zeros((20, a.shape[1])))],
        )


def test_psnr_cap_only_at_the_top():
    from gen3deval.metrics.base import PSNR_CAP_DB, metric_info
    from gen3deval.metrics.image import psnr_from_mse

    assert PSNR_CAP_DB == 100.0 and "100" in metric_info("psnr").description
    assert psnr_from_mse(0.0) == 100.0 and psnr_from_mse(1e-12) == 100.0
    # one 8-bit level everywhere: 20 log10(255) = 48.13 dB, untouched by the cap
    assert psnr_from_mse((1 / 255) ** 2) == pytest.approx(20 * math.log10(255), rel=1e-12)
    assert psnr_from_mse(1.0) == 0.0
