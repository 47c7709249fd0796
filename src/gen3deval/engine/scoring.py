"""The ``score`` stage: metrics of a candidate against its reference, and the learned metrics.

- Geometry (:func:`gen3deval.compare.compare`) and model-free image metrics, when the case has a reference mesh.
- Learned metrics: LPIPS and CLIP image similarity (candidate vs reference renders), the CLIP score (renders vs
  the case's caption) and CLIP image-to-3D (renders vs the case's input image), which need no reference mesh.
- :func:`prefetch_learned`: a worker given several score stages at once embeds all their images in one CLIP
  call first (:mod:`gen3deval.engine.batching`).

The reference's loaded mesh and surface samples are cached per worker process (a few entries, keyed by the
artifact path, which is its content hash): a case's systems and attempts share them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.engine.stages import StageResult, read_views_png

# Prepared references of this process: {(artifact path, normalize, samples, seed): PreparedReference}.
_REFERENCES: OrderedDict[tuple[str, str, int, int], Any] = OrderedDict()
REFERENCE_CACHE_SIZE = 4


def prepared_reference(path: str, protocol: dict[str, Any]) -> Any:
    """The reference of the score stage, loaded and sampled once per worker process.

    A :class:`~gen3deval.compare.PreparedReference` (mesh, normalised mesh, surface samples). An artifact
    path names its content, so the path is the cache key; the stages of a case run close together, so a
    small LRU holds every system's and attempt's reference.
    """
    from gen3deval.compare import prepare_reference

    key = (path, str(protocol["normalize"]), int(protocol["samples"]), int(protocol["seed"]))
    hit = _REFERENCES.get(key)
    if hit is not None:
        _REFERENCES.move_to_end(key)
        return hit
    ref = prepare_reference(path, normalize=key[1], samples=key[2], seed=key[3])
    _REFERENCES[key] = ref
    while len(_REFERENCES) > REFERENCE_CACHE_SIZE:
        _REFERENCES.popitem(last=False)
    return ref


def stage_score(
    candidate_mesh: str,
    reference_mesh: str | None,
    candidate_renders: list[str] | None,
    reference_renders: list[str] | None,
    protocol: dict[str, Any],
    workdir: Path,
    text: str | None = None,
    input_image: str | None = None,
    models: dict[str, str] | None = None,
    skip: list[str] | None = None,
) -> StageResult:
    """Geometry metrics (gen3deval.compare) and image metrics of the stored renders (with a reference mesh),
    and the learned metrics: LPIPS / CLIP image similarity (with reference renders), the reference-free CLIP
    score (``text``) and CLIP image-to-3D (``input_image``). ``models``: {model: local folder or file} of
    the learned models found; ``skip``: learned metric keys whose model is unavailable (not computed)."""
    from gen3deval.config import protocol_from_params

    proto = protocol_from_params(protocol)
    value: dict[str, Any] = {}
    if reference_mesh is not None:
        value.update(_geometry_scores(candidate_mesh, reference_mesh, proto, protocol))
    learned = {k: m for k, m in proto.learned().items() if k not in set(skip or ())}
    pair = [k for k in proto.image_metrics if k not in proto.learned()]
    need_renders = bool(pair or learned)
    if not need_renders:
        return StageResult(value=_jsonable(value))
    size, bg, rig_name = int(protocol["render_size"]), protocol["background"], protocol["rig"]
    va = read_views_png(candidate_renders, rig_name, size, bg) if candidate_renders else None
    vb = read_views_png(reference_renders, rig_name, size, bg) if reference_renders else None
    if pair and va and vb:
        from gen3deval.metrics.image import image_metrics

        im = image_metrics(va, vb)
        value.update({k: im.get(k) for k in pair})
    if learned and va:
        value.update(_learned_scores(learned, va, vb, text, input_image, models or {}, proto))
    return StageResult(value=_jsonable(value))


def _geometry_scores(
    candidate_mesh: str, reference_mesh: str, proto: Any, protocol: dict[str, Any]
) -> dict[str, Any]:
    from gen3deval.compare import compare
    from gen3deval.mesh.io import load_mesh

    geometry = proto.geometry_keys()
    if not geometry:
        return {}
    return dict(
        compare(
            load_mesh(candidate_mesh),
            prepared_reference(reference_mesh, protocol),
            normalize=protocol["normalize"],
            align=protocol["align"],
            samples=int(protocol["samples"]),
            seed=int(protocol["seed"]),
            metrics=geometry,
            thresholds=list(protocol["thresholds"]),
            iou_resolution=int(protocol["iou_resolution"]),
        )
    )


def _undefined(value: dict[str, Any], key: str, reason: str) -> None:
    value[key] = None
    value[f"{key}_method"] = "undefined"
    value[f"{key}_reason"] = reason


def _learned_scores(
    learned: dict[str, str],
    va: list[Any],
    vb: list[Any] | None,
    text: str | None,
    input_image: str | None,
    models: dict[str, str],
    proto: Any,
) -> dict[str, Any]:
    """The learned metrics ``learned`` ({key: model}) of candidate views ``va`` (reference views ``vb``)."""
    value: dict[str, Any] = {}
    clip_keys: list[str] = []
    for key, model in learned.items():
        if key in ("lpips", "clip_image_sim") and not vb:
            continue  # no reference renders (no reference mesh, or its render failed): not this case's metric
        if key in ("clip_score", "clip_score_clamped") and not (text and text.strip()):
            _undefined(value, key, "the case has no caption or prompt")
        elif key == "clip_image_to_3d" and not input_image:
            _undefined(value, key, "the case has no input image")
        elif model == "clip":
            clip_keys.append(key)
        elif key == "lpips":
            from gen3deval.metrics.lpips import views_lpips

            assert vb is not None
            value["lpips"] = views_lpips(va, vb)
    if clip_keys:
        from gen3deval.metrics.clip import clip_metrics

        image = _input_rgb(input_image, proto.background) if "clip_image_to_3d" in clip_keys else None
        value.update(
            clip_metrics(
                clip_keys,
                va,
                text=text,
                ref_views=vb,
                image=image,
                model=models.get("clip") or proto.clip_model_id(),
            )
        )
        if text is not None and any(k.startswith("clip_score") for k in clip_keys):
            value["clip_text"] = text
        value["clip_views"] = len(va)
    return value


def prefetch_learned(batch: list[dict[str, Any]]) -> None:
    """Embed the CLIP inputs of several score stages (their kwargs) in one call per model, so each stage then
    finds its embeddings in the encoder's memo (one forward pass of many assets instead of one each).
    Best effort: any problem is left for the stage itself to report."""
    from gen3deval.config import protocol_from_params

    images: dict[str, list[Any]] = {}
    texts: dict[str, list[str]] = {}
    try:
        for kw in batch:
            proto = protocol_from_params(kw["protocol"])
            keys = {
                k for k, m in proto.learned().items() if m == "clip" and k not in set(kw.get("skip") or ())
            }
            model = (kw.get("models") or {}).get("clip")
            if not keys or not model or not kw.get("candidate_renders"):
                continue
            size, bg, rig_name = int(proto.render_size), proto.background, str(proto.rig)
            imgs = images.setdefault(model, [])
            imgs += [v.rgb for v in read_views_png(kw["candidate_renders"], rig_name, size, bg)]
            if "clip_image_sim" in keys and kw.get("reference_renders"):
                imgs += [v.rgb for v in read_views_png(kw["reference_renders"], rig_name, size, bg)]
            if "clip_image_to_3d" in keys and kw.get("input_image"):
                imgs.append(_input_rgb(kw["input_image"], bg))
            if keys & {"clip_score", "clip_score_clamped"} and kw.get("text"):
                texts.setdefault(model, []).append(str(kw["text"]))
        from gen3deval.models.clip import get_clip

        for model in images.keys() | texts.keys():
            enc = get_clip(model)
            if images.get(model):
                enc.embed_images(images[model])
            if texts.get(model):
                enc.embed_texts(texts[model])
    except Exception:
        return


def _input_rgb(path: str | None, background: str) -> Any:
    """The input image as (H, W, 3) uint8, alpha composited over ``background`` like every render."""
    from PIL import Image

    from gen3deval.metrics.clip import composite

    assert path is not None
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    return composite(rgba, background)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, float) and math.isnan(v):
            v = None
        if isinstance(v, dict):
            v = _jsonable(v)
        out[k] = v
    return out
