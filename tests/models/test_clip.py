"""CLIP model loading and CLIP metrics, on a tiny random-weight CLIP written in code.

The tiny model goes through exactly the path of a real checkpoint: a model folder, and the same files
placed in a Hugging Face cache layout resolved offline by id. Scores are checked against transformers
called directly on the same PNG files, with CLIP preprocessing re-implemented in numpy/PIL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from PIL import Image

from gen3deval.errors import DependencyError, Gen3DEvalError, UserInputError
from gen3deval.metrics.clip import (
    clip_image_sim,
    clip_image_to_3d,
    clip_metrics,
    clip_score,
    clip_score_clamped,
    clip_scores_batch,
    composite,
    images_of,
)
from gen3deval.models import clip as mclip
from gen3deval.models.clip import (
    ClipEncoder,
    ModelUnavailable,
    get_clip,
    resolve_clip,
    weights_sha256,
)
from gen3deval.models.testing import make_random_clip
from testdata import hf_cache_entry, offline_hf

SRC = Path(__file__).resolve().parents[2] / "src"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_clip(tmp_path_factory.mktemp("clip") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def enc(tiny: Path) -> ClipEncoder:
    return get_clip(str(tiny), device="cpu")


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """trellis8 renders of one shared lowpoly object, over white and over black."""
    from testdata import SHARED_DATA

    glb = SHARED_DATA / "lowpoly304" / "objects" / "character" / "kaykit_adventurers_barbarian.glb"
    if not glb.exists():
        pytest.skip(f"shared data not found at {glb}")
    from gen3deval.mesh.io import load_mesh
    from gen3deval.render import render

    mesh = load_mesh(glb)
    return {bg: render(mesh, "trellis8", size=512, background=bg) for bg in ("white", "black")}


# ---------------------------------------------------------------- independent reference


def _reference_pixels(png: Path) -> np.ndarray:
    """CLIP preprocessing in numpy/PIL for a square image: bicubic resize to 224, /255, normalise."""
    im = Image.open(png).convert("RGB")
    assert im.size[0] == im.size[1]
    a = np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    return ((a - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None].astype(np.float32)


def _reference_scores(folder: Path, pngs: list[Path], text: str) -> np.ndarray:
    """Per-view cosines computed with transformers directly (CLIPModel features, CLIPProcessor)."""
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    proc = CLIPProcessor(image_processor=mclip.image_processor_class().from_pretrained(folder),
                         tokenizer=CLIPTokenizer.from_pretrained(folder))  # fmt: skip
    images = [Image.open(p).convert("RGB") for p in pngs]
    inputs = proc(text=[text], images=images, return_tensors="pt", padding=True)
    # The processor's pixels are CLIP's standard preprocessing (checked against numpy/PIL).
    for i, p in enumerate(pngs):
        np.testing.assert_allclose(inputs["pixel_values"][i].numpy(), _reference_pixels(p)[0], atol=1e-5)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img = getattr(img, "pooler_output", img).double().numpy()
    txt = getattr(txt, "pooler_output", txt).double().numpy()
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img @ txt[0]


# ---------------------------------------------------------------- loading


def test_tiny_model_loads_through_resolve_and_get_clip(tiny: Path, enc: ClipEncoder) -> None:
    src = resolve_clip(str(tiny))
    assert src.path == str(tiny.resolve()) and src.id == str(tiny)
    assert src.weights_sha256 == hashlib.sha256((tiny / "model.safetensors").read_bytes()).hexdigest()
    assert src.to_dict() == {"id": str(tiny), "path": src.path, "weights_sha256": src.weights_sha256}
    assert enc.source == src and enc.device == "cpu" and enc.dtype == torch.float32
    assert get_clip(str(tiny), device="cpu") is enc  # loaded once per process
    assert get_clip(src, device="cpu").source == src  # an already resolved source loads as well
    assert (enc.dim, enc.max_tokens) == (16, 77)


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path, tiny: Path) -> None:
    again = make_random_clip(tmp_path / "a", seed=0)
    other = make_random_clip(tmp_path / "b", seed=1)
    assert weights_sha256(again) == weights_sha256(tiny) != weights_sha256(other)


def test_hf_cache_layout_resolves_offline_by_id(
    tmp_path: Path, tiny: Path, enc: ClipEncoder, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    """The id path: a cache entry as huggingface_hub writes it (blobs + snapshot symlinks + refs/main)."""
    home = tmp_path / "hf"
    snap = hf_cache_entry(home, "org/tiny-clip", tiny, "0123456789abcdef0123456789abcdef01234567")
    offline_hf(monkeypatch, home)

    src = resolve_clip("org/tiny-clip")
    assert Path(src.path) == snap
    assert src.weights_sha256 == enc.source.weights_sha256  # hashes the blob behind the symlink
    by_id = get_clip("org/tiny-clip", device="cpu")
    assert by_id is not enc and by_id.source.id == "org/tiny-clip"
    rng = np.random.default_rng(3)
    ims = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    np.testing.assert_array_equal(by_id.embed_images(ims), enc.embed_images(ims))
    assert no_network == []


def test_missing_model_id_is_one_line_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    offline_hf(monkeypatch, tmp_path / "empty_home")
    with pytest.raises(ModelUnavailable) as ei:
        resolve_clip("openai/clip-vit-base-patch32")
    msg = str(ei.value)
    assert "\n" not in msg and "openai/clip-vit-base-patch32" in msg
    assert "huggingface-cli download openai/clip-vit-base-patch32" in msg and "--clip-model" in msg
    with pytest.raises(ModelUnavailable):
        get_clip("openai/clip-vit-base-patch32", device="cpu")
    assert no_network == []
    # A run skips the metric on ModelUnavailable; a DependencyError would stop the whole run.
    assert isinstance(ei.value, Gen3DEvalError) and not isinstance(ei.value, DependencyError)


def test_bad_folders_are_model_unavailable(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ModelUnavailable, match="is no such folder"):
        resolve_clip(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"no config\.json"):
        resolve_clip(str(tmp_path / "empty"))
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    shutil.copy(tiny / "config.json", noweights)
    with pytest.raises(ModelUnavailable, match=r"no \*\.safetensors"):
        resolve_clip(str(noweights))


def test_missing_torch_is_model_unavailable_with_install_hint(tiny: Path) -> None:
    """In a fresh interpreter where torch cannot be imported (a finder refuses it)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from gen3deval.models.clip import resolve_clip, ModelUnavailable\n"
        "try:\n"
        f"    resolve_clip({str(tiny)!r})\n"
        "except ModelUnavailable as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith(
        "needs torch, not installed: pip install 'gen3deval[clip]' (install torch==2.13.0 first)"
    )


def test_importing_the_packages_does_not_import_torch() -> None:
    code = (
        "import sys, gen3deval.models, gen3deval.metrics.clip, gen3deval.models.clip\n"
        "gen3deval.models.DEFAULT_CLIP\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_weights_hash_follows_the_weight_files(tmp_path: Path, tiny: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    before = resolve_clip(str(copy)).weights_sha256
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01  # last byte: inside the tensor data
    w.write_bytes(bytes(data))
    after = resolve_clip(str(copy)).weights_sha256
    assert after != before and after == hashlib.sha256(bytes(data)).hexdigest()
    # Several files: sha256 of their digests in name order; safetensors preferred over .bin.
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "model-00002-of-00002.safetensors").write_bytes(b"two")
    (shards / "model-00001-of-00002.safetensors").write_bytes(b"one")
    (shards / "pytorch_model.bin").write_bytes(b"ignored")
    d1, d2 = (hashlib.sha256(b).hexdigest() for b in (b"one", b"two"))
    assert weights_sha256(shards) == hashlib.sha256(f"{d1}\n{d2}".encode()).hexdigest()


# ---------------------------------------------------------------- metrics


def test_clip_score_equals_transformers_on_the_same_pngs(
    tmp_path: Path, tiny: Path, enc: ClipEncoder, renders: dict[str, list]
) -> None:
    views = renders["white"]
    pngs = []
    for i, v in enumerate(views):
        pngs.append(tmp_path / f"view_{i:03d}.png")
        Image.fromarray(v.rgb).save(pngs[-1])
    text = "a barbarian warrior with an axe"
    ref = _reference_scores(tiny, pngs, text)
    assert clip_score(views, text, enc) == pytest.approx(ref.mean(), abs=1e-5)
    assert clip_score(views, text, str(tiny)) == pytest.approx(ref.mean(), abs=1e-5)  # by folder name
    assert clip_score_clamped(views, text, enc) == pytest.approx(np.maximum(ref, 0).mean(), abs=1e-5)
    # The PNGs decoded again give the same number as the in-memory views.
    decoded = [np.asarray(Image.open(p)) for p in pngs]
    assert clip_score(decoded, text, enc) == pytest.approx(ref.mean(), abs=1e-5)


def test_clamped_score_differs_from_raw_when_some_cosines_are_negative(enc: ClipEncoder) -> None:
    colours = [0, 64, 128, 192, 255, (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    ims = [np.zeros((64, 64, 3), np.uint8) + np.array(c, np.uint8) for c in colours]
    texts = ["a hammer", "!!!", "zzzz", "a red chair", "cat"]
    cos = enc.embed_images(ims) @ enc.embed_texts(texts).T  # (8 images, 5 texts)
    mixed = [j for j in range(len(texts)) if (cos[:, j] < 0).any() and (cos[:, j] > 0).any()]
    assert mixed, "random weights should give both signs for some text"
    text, c = texts[mixed[0]], cos[:, mixed[0]]
    assert clip_score(ims, text, enc) == pytest.approx(c.mean(), abs=1e-6)
    assert clip_score_clamped(ims, text, enc) == pytest.approx(np.maximum(c, 0).mean(), abs=1e-6)
    assert clip_score_clamped(ims, text, enc) > clip_score(ims, text, enc) + 1e-3


def test_clip_sees_white_background_and_black_changes_it(enc: ClipEncoder, renders: dict[str, list]) -> None:
    white, black = renders["white"], renders["black"]
    for w, b in zip(white, black, strict=True):
        bg = w.alpha == 0
        assert bg.any() and (images_of([w])[0][bg] == 255).all() and (images_of([b])[0][bg] == 0).all()
    text = "a barbarian"
    assert abs(clip_score(white, text, enc) - clip_score(black, text, enc)) > 1e-3


def test_composite_white_vs_black_differs_exactly_where_alpha_below_one() -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (32, 48, 4), dtype=np.uint8)
    rgba[:8, :, 3] = 255
    rgba[8:12, :, 3] = 0
    w, b = composite(rgba, "white"), composite(rgba, "black")
    alpha = rgba[..., 3]
    differs = (w != b).any(axis=2)
    np.testing.assert_array_equal(differs, alpha < 255)
    np.testing.assert_array_equal(w[alpha == 255], rgba[..., :3][alpha == 255])
    assert (w[alpha == 0] == 255).all() and (b[alpha == 0] == 0).all()
    exact = rgba[..., :3] * (alpha[..., None] / 255.0) + 255.0 * (1 - alpha[..., None] / 255.0)
    assert np.abs(w.astype(float) - exact).max() <= 0.5
    with pytest.raises(UserInputError, match="'white' or 'black'"):
        composite(rgba, "grey")


def test_long_text_is_truncated_to_77_tokens(enc: ClipEncoder) -> None:
    # The test tokenizer has no merges: "cat" is 3 tokens, so 25 words fill the 75 content tokens.
    assert len(enc.tokenizer("cat " * 100)["input_ids"]) == 302
    long, cut, shorter = enc.embed_texts(["cat " * 100, "cat " * 25, "cat " * 24])
    np.testing.assert_allclose(long, cut, atol=1e-6)
    assert np.abs(long - shorter).max() > 1e-4


def test_image_sim_and_image_to_3d(enc: ClipEncoder, renders: dict[str, list]) -> None:
    white, black = renders["white"], renders["black"]
    assert clip_image_sim(white, white, enc) == pytest.approx(1.0, abs=1e-6)
    e_w, e_b = enc.embed_images(images_of(white)), enc.embed_images(images_of(black))
    assert clip_image_sim(white, black, enc) == pytest.approx(
        np.einsum("nd,nd->n", e_w, e_b).mean(), abs=1e-6
    )
    photo = white[3].rgb
    assert clip_image_to_3d(photo, black, enc) == pytest.approx((e_b @ e_w[3]).mean(), abs=1e-6)
    with pytest.raises(UserInputError, match="4 reference views"):
        clip_image_sim(white, white[:4], enc)


class CountingEncoder(ClipEncoder):
    """The real encoder, counting its forward calls."""

    def __init__(self, source: mclip.ModelSource) -> None:
        super().__init__(source, "cpu")
        self.calls = {"images": 0, "texts": 0}

    def embed_images(self, images, batch_size=64):  # type: ignore[no-untyped-def]
        self.calls["images"] += 1
        return super().embed_images(images, batch_size)

    def embed_texts(self, texts, batch_size=256):  # type: ignore[no-untyped-def]
        self.calls["texts"] += 1
        return super().embed_texts(texts, batch_size)


def test_clip_metrics_one_pass_and_missing_inputs(tiny: Path, enc: ClipEncoder) -> None:
    rng = np.random.default_rng(2)
    cand = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    refv = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    photo = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    counting = CountingEncoder(resolve_clip(str(tiny)))
    keys = ["clip_score", "clip_score_clamped", "clip_image_sim", "clip_image_to_3d"]
    got = clip_metrics(keys, cand, text="a toy", ref_views=refv, image=photo, model=counting)
    assert counting.calls == {"images": 1, "texts": 1}
    assert list(got) == keys
    assert got["clip_score"] == pytest.approx(clip_score(cand, "a toy", enc), abs=1e-6)
    assert got["clip_score_clamped"] == pytest.approx(clip_score_clamped(cand, "a toy", enc), abs=1e-6)
    assert got["clip_image_sim"] == pytest.approx(clip_image_sim(cand, refv, enc), abs=1e-6)
    assert got["clip_image_to_3d"] == pytest.approx(clip_image_to_3d(photo, cand, enc), abs=1e-6)
    for key, needs in [
        ("clip_score", "text"),
        ("clip_image_sim", "reference views"),
        ("clip_image_to_3d", "input image"),
    ]:
        with pytest.raises(UserInputError, match=f"{key} needs the case's {needs}"):
            clip_metrics([key], cand, model=counting)
    with pytest.raises(UserInputError, match="unknown CLIP metric"):
        clip_metrics(["clip_scor"], cand, text="x", model=counting)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    with pytest.raises(UserInputError, match=r"view 0: .*composite"):
        clip_score([rgba], "x", counting)


def test_batched_equals_one_by_one(enc: ClipEncoder) -> None:
    rng = np.random.default_rng(4)
    items = [([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)], t)
             for n, t in [(3, "a hammer"), (8, "a chair"), (1, "a hammer"), (5, "a very long caption " * 20)]]  # fmt: skip
    one_by_one = [clip_score(v, t, enc) for v, t in items]
    for bs in (1, 5, 64):  # batches that straddle asset boundaries
        np.testing.assert_allclose(clip_scores_batch(items, enc, batch_size=bs), one_by_one, atol=1e-5)
    flat = [im for v, _ in items for im in v]
    np.testing.assert_allclose(
        enc.embed_images(flat, batch_size=1), enc.embed_images(flat, batch_size=64), atol=1e-5
    )
    texts = [t for _, t in items]
    np.testing.assert_allclose(enc.embed_texts(texts, batch_size=1), enc.embed_texts(texts), atol=1e-5)


def test_an_image_repeated_in_one_call_gets_its_embedding_twice(tiny: Path) -> None:
    # The memo computed a key repeated within one call once, but left the repeat's row uninitialised (garbage,
    # often NaN): clip_image_sim(a, a) on a fresh encoder was NaN, e.g. an oracle against its own reference.
    enc = ClipEncoder(resolve_clip(str(tiny)), "cpu")
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    e = enc.embed_images([a, b, a, a])
    assert np.isfinite(e).all()
    assert np.array_equal(e[0], e[2]) and np.array_equal(e[0], e[3]) and not np.array_equal(e[0], e[1])
    t = enc.embed_texts(["a cat", "a dog", "a cat"])
    assert np.isfinite(t).all() and np.array_equal(t[0], t[2])
    assert clip_image_sim([a, a], [a, a], ClipEncoder(resolve_clip(str(tiny)), "cpu")) == pytest.approx(
        1.0, abs=1e-6
    )
