"""CLIP metrics over rendered views (PROTOCOLS.md sections 7 and 8).

Views are anything with an ``.rgb`` (H, W, 3) uint8 attribute (:class:`gen3deval.render.View`,
already composited over the run's background by the renderer) or raw (H, W, 3) uint8 arrays.
Scores are raw cosines of L2-normalised CLIP embeddings in [-1, 1] (reports show them x100);
no logit scale.

- ``clip_score``: mean over views of cos(image_v, text).
- ``clip_score_clamped``: mean over views of max(cos, 0) (x100 = torchmetrics ``CLIPScore``).
- ``clip_image_sim``: mean over view pairs of cos(a_i, b_i) (same rig, same order).
- ``clip_image_to_3d``: mean over views of cos(input image, view_i) (TRELLIS image-to-3D protocol).

``model`` is a Hugging Face id or a model folder (see :func:`gen3deval.models.clip.resolve_clip`),
a resolved :class:`~gen3deval.models.clip.ModelSource`, or a loaded :class:`~gen3deval.models.clip.ClipEncoder`;
ids, folders and sources load once per process (:func:`~gen3deval.models.clip.get_clip`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.errors import UserInputError
from gen3deval.models.clip import DEFAULT_CLIP, ClipEncoder, ModelSource, get_clip

CLIP_KEYS = ("clip_score", "clip_score_clamped", "clip_image_sim", "clip_image_to_3d")
BACKGROUNDS = {"white": 255, "black": 0}


def _encoder(model: str | ModelSource | ClipEncoder) -> ClipEncoder:
    return model if isinstance(model, ClipEncoder) else get_clip(model)


def images_of(views: Any) -> list[NDArray[np.uint8]]:
    """The (H, W, 3) uint8 RGB images of ``views`` exactly as CLIP gets them.

    Accepts a sequence of views (objects with ``.rgb``) or arrays, one (H, W, 3) array, or an
    (N, H, W, 3) stack. RGBA is refused: composite it first (:func:`composite`).
    """
    if isinstance(views, np.ndarray):
        items: Iterable[Any] = [views] if views.ndim == 3 else list(views)
    else:
        items = views
    out = []
    for i, v in enumerate(items):
        a = np.asarray(v.rgb if hasattr(v, "rgb") else v)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            hint = " (RGBA: use composite() first)" if a.ndim == 3 and a.shape[2] == 4 else ""
            raise UserInputError(
                f"view {i}: expected an (H, W, 3) uint8 RGB image, got {a.dtype} {a.shape}{hint}"
            )
        out.append(a)
    if not out:
        raise UserInputError("no views to score")
    return out


def composite(rgba: NDArray[np.uint8], background: str = "white") -> NDArray[np.uint8]:
    """(H, W, 3) uint8: straight (non-premultiplied) alpha ``rgba`` (H, W, 4) uint8 over white or black,
    in 8-bit sRGB like PIL: round((rgb a + bg (255 - a)) / 255), exact integer arithmetic.
    An (H, W, 3) input is returned unchanged (opaque)."""
    if background not in BACKGROUNDS:
        raise UserInputError(f"background must be 'white' or 'black', not {background!r}")
    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise UserInputError(f"composite: expected an (H, W, 4) uint8 RGBA image, got {a.dtype} {a.shape}")
    if a.shape[2] == 3:
        return a
    rgb = a[..., :3].astype(np.uint32)
    alpha = a[..., 3:].astype(np.uint32)
    num = rgb * alpha + BACKGROUNDS[background] * (255 - alpha)
    return ((num + 127) // 255).astype(np.uint8)  # round half up; num/255 is never exactly .5


def _mean_cos(emb: NDArray[np.float32], ref: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-row cosines of unit rows ``emb`` (N, D) against ``ref`` (D,) or (N, D)."""
    if ref.ndim == 1:
        return (emb.astype(np.float64) @ ref.astype(np.float64)).astype(np.float64)
    return np.einsum("nd,nd->n", emb.astype(np.float64), ref.astype(np.float64))


def clip_score(views: Any, text: str, model: str | ModelSource | ClipEncoder = DEFAULT_CLIP) -> float:
    """Mean over views of cos(CLIP image, CLIP text): the raw cosine (not x100)."""
    return clip_metrics(["clip_score"], views, text=text, model=model)["clip_score"]


def clip_score_clamped(views: Any, text: str, model: str | ModelSource | ClipEncoder = DEFAULT_CLIP) -> float:
    """Mean over views of max(cos, 0); x100 equals torchmetrics' ``CLIPScore``."""
    return clip_metrics(["clip_score_clamped"], views, text=text, model=model)["clip_score_clamped"]


def clip_image_sim(
    views_a: Any, views_b: Any, model: str | ModelSource | ClipEncoder = DEFAULT_CLIP
) -> float:
    """Mean over view pairs of cos(a_i, b_i); both view lists come from the same rig, in the same order."""
    return clip_metrics(["clip_image_sim"], views_a, ref_views=views_b, model=model)["clip_image_sim"]


def clip_image_to_3d(
    image: NDArray[np.uint8], views: Any, model: str | ModelSource | ClipEncoder = DEFAULT_CLIP
) -> float:
    """Mean over views of cos(CLIP(image), CLIP(view_i)); ``image`` (H, W, 3) uint8 (composite RGBA first)."""
    return clip_metrics(["clip_image_to_3d"], views, image=image, model=model)["clip_image_to_3d"]


def clip_metrics(
    keys: Iterable[str],
    views: Any,
    *,
    text: str | None = None,
    ref_views: Any = None,
    image: NDArray[np.uint8] | None = None,
    model: str | ModelSource | ClipEncoder = DEFAULT_CLIP,
    batch_size: int = 64,
) -> dict[str, float]:
    """The requested CLIP ``keys`` for one asset's ``views``, with ONE image forward pass for all the
    images needed (candidate views, reference views, input image) and one text pass.

    Raises UserInputError naming a key whose input (``text``, ``ref_views``, ``image``) is missing,
    an unknown key, or reference views that do not pair with the candidate's.
    """
    keys = list(dict.fromkeys(keys))
    unknown = [k for k in keys if k not in CLIP_KEYS]
    if unknown:
        raise UserInputError(f"unknown CLIP metric(s) {unknown}; known: {list(CLIP_KEYS)}")
    need = {
        "clip_score": text,
        "clip_score_clamped": text,
        "clip_image_sim": ref_views,
        "clip_image_to_3d": image,
    }
    what = {"clip_score": "text", "clip_score_clamped": "text", "clip_image_sim": "reference views",
            "clip_image_to_3d": "input image"}  # fmt: skip
    for k in keys:
        if need[k] is None:
            raise UserInputError(f"{k} needs the case's {what[k]}, which is missing")
    if not keys:
        return {}
    cand = images_of(views)
    extra: list[NDArray[np.uint8]] = []
    if "clip_image_sim" in keys:
        ref = images_of(ref_views)
        if len(ref) != len(cand):
            raise UserInputError(
                f"clip_image_sim: {len(cand)} candidate views but {len(ref)} reference views"
            )
        extra += ref
    if "clip_image_to_3d" in keys:
        extra += images_of([image])
    enc = _encoder(model)
    emb = enc.embed_images(cand + extra, batch_size=batch_size)
    n = len(cand)
    c_emb, rest = emb[:n], emb[n:]
    out: dict[str, float] = {}
    if "clip_score" in keys or "clip_score_clamped" in keys:
        cos = _mean_cos(c_emb, enc.embed_texts([str(text)])[0])
        if "clip_score" in keys:
            out["clip_score"] = float(cos.mean())
        if "clip_score_clamped" in keys:
            out["clip_score_clamped"] = float(np.maximum(cos, 0.0).mean())
    if "clip_image_sim" in keys:
        out["clip_image_sim"] = float(_mean_cos(c_emb, rest[:n]).mean())
        rest = rest[n:]
    if "clip_image_to_3d" in keys:
        out["clip_image_to_3d"] = float(_mean_cos(c_emb, rest[0]).mean())
    return {k: out[k] for k in keys}


def clip_scores_batch(
    items: Sequence[tuple[Any, str]],
    model: str | ModelSource | ClipEncoder = DEFAULT_CLIP,
    batch_size: int = 64,
) -> list[float]:
    """``clip_score`` of many assets: ``items`` = [(views, text), ...]. Images of consecutive assets share
    forward batches of up to ``batch_size`` images; the distinct texts go through one text pass.
    Returns one raw cosine mean per item, in order."""
    enc = _encoder(model)
    per_item = [images_of(v) for v, _ in items]
    texts = [t for _, t in items]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserInputError(f"item {i}: clip_score needs a text, got {type(t).__name__}")
    uniq = list(dict.fromkeys(texts))
    t_emb = enc.embed_texts(uniq) if uniq else np.zeros((0, enc.dim), np.float32)
    row = {t: i for i, t in enumerate(uniq)}
    flat = [im for ims in per_item for im in ims]
    emb = enc.embed_images(flat, batch_size=batch_size)
    scores, s = [], 0
    for ims, t in zip(per_item, texts, strict=True):
        scores.append(float(_mean_cos(emb[s : s + len(ims)], t_emb[row[t]]).mean()))
        s += len(ims)
    return scores
