"""The learned models a run uses (CLIP, LPIPS), resolved once before any work.

Each model a protocol's metrics need is looked up locally (never downloaded): found, it is described by
``{"id", "path", "weights_sha256"}``, which the fingerprint records and the score stage's key includes (new
weights rescore, and only the score stages); not found (no weights in the cache, torch not installed), its
metrics are *skipped* with one line saying how to provide it, and the rest of the run goes on. A later run
with the weights scores exactly the skipped stages (their key changes).
"""

from __future__ import annotations

from typing import Any

from gen3deval.config import Protocol
from gen3deval.errors import Gen3DEvalError


def _resolve(model: str, protocol: Protocol) -> dict[str, Any]:
    if model == "clip":
        from gen3deval.models.clip import resolve_clip

        return dict(resolve_clip(protocol.clip_model_id()).to_dict())
    if model == "lpips":
        from gen3deval.models.lpips_weights import lpips_source

        return dict(lpips_source())
    raise Gen3DEvalError(f"unknown model kind {model!r}")


def resolve_models(protocol: Protocol) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({model: {"id", "path", "weights_sha256"}}, {metric key: why it is skipped}) of ``protocol``."""
    learned = protocol.learned()
    models: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for model in sorted(set(learned.values())):
        try:
            models[model] = _resolve(model, protocol)
        except ImportError as exc:
            why = (
                f"{model} needs the 'clip' extra ({exc.name or exc}): pip install 'gen3deval[clip]' "
                "(install torch==2.13.0 first)"
            )
            skipped.update({k: why for k, m in learned.items() if m == model})
        except Gen3DEvalError as exc:
            skipped.update({k: str(exc) for k, m in learned.items() if m == model})
    return models, skipped


def fingerprint_models(
    protocol: Protocol, models: dict[str, dict[str, Any]], skipped: dict[str, str]
) -> dict[str, Any]:
    """The ``models`` entries of the fingerprint: id and weights hash of each model used, or unavailable."""
    out: dict[str, Any] = {}
    for model in sorted(set(protocol.learned().values())):
        if model in models:
            out[model] = {"id": models[model]["id"], "weights_sha256": models[model]["weights_sha256"]}
        else:
            ident = protocol.clip_model_id() if model == "clip" else model
            out[model] = {"id": ident, "unavailable": True}
    return out


def score_key_part(models: dict[str, dict[str, Any]], skipped: dict[str, str]) -> list[Any]:
    """What the score stage's key adds for learned metrics: each model's weights hash, the skipped keys."""
    return [
        "learned",
        sorted((m, str(src.get("weights_sha256"))) for m, src in models.items()),
        sorted(skipped),
    ]
