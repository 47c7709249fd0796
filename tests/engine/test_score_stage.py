"""The score stage prepares each reference once per worker process (not once per system and attempt) and
scores exactly as ``compare`` does on the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen3deval.compare import compare
from gen3deval.config import get_protocol
from gen3deval.engine import scoring as stages
from testdata import LOWPOLY, lowpoly_sample

PROTOCOL = get_protocol(
    {"name": "default", "samples": 3000, "iou_resolution": 32, "rig": None, "image_metrics": []}
).params()


def test_references_are_prepared_once_and_score_like_compare(tmp_path: Path) -> None:
    objects = [LOWPOLY / r["path"] for r in lowpoly_sample()[:6]]
    ref, cands = objects[0], objects[1:4]
    stages._REFERENCES.clear()
    values = [stages.stage_score(str(c), str(ref), None, None, PROTOCOL, tmp_path).value for c in cands]
    assert len(stages._REFERENCES) == 1  # three systems/attempts, one prepared reference
    first = stages.prepared_reference(str(ref), PROTOCOL)
    assert stages.prepared_reference(str(ref), PROTOCOL) is first
    for c, v in zip(cands, values, strict=True):
        direct = compare(c, ref, samples=3000, iou_resolution=32)
        for key in (
            "chamfer_l1",
            "chamfer_l2",
            "hausdorff",
            "fscore@0.01",
            "normal_consistency",
            "volume_iou",
        ):
            assert v[key] == pytest.approx(direct[key], rel=1e-12, abs=1e-15), key
    # A least-recently-used cache of a few entries: old cases leave it.
    for other in objects[1:]:
        stages.prepared_reference(str(other), PROTOCOL)
    assert len(stages._REFERENCES) == stages.REFERENCE_CACHE_SIZE
    assert all(key[0] != str(ref) for key in stages._REFERENCES)
    # Other sampling parameters are another entry, never a stale one.
    stages.prepared_reference(str(objects[-1]), {**PROTOCOL, "samples": 1000})
    assert {k[2] for k in stages._REFERENCES if k[0] == str(objects[-1])} == {3000, 1000}
