"""Learned models behind metrics (loaded lazily; torch/transformers live in the ``clip`` extra).

- :mod:`gen3deval.models.clip`: CLIP resolution (local folder / local HF cache, never a download),
  weight fingerprints, :func:`get_clip` (one cached encoder per process per model and device).
- :mod:`gen3deval.models.testing`: :func:`make_random_clip`, random-weight CLIP folders for tests
  and benchmarks.

Names resolve lazily so that importing the package never imports torch.
"""

from __future__ import annotations

from gen3deval._lazy import lazy_getattr

_EXPORTS = {
    "DEFAULT_CLIP": "gen3deval.models.clip",
    "ModelUnavailable": "gen3deval.models.clip",
    "ModelSource": "gen3deval.models.clip",
    "ClipEncoder": "gen3deval.models.clip",
    "resolve_clip": "gen3deval.models.clip",
    "get_clip": "gen3deval.models.clip",
    "make_random_clip": "gen3deval.models.testing",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
