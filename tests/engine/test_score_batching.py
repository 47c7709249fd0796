"""Score stages scored by CLIP go to a worker in batches (one forward pass for several assets' views), with
the numbers of one-at-a-time scoring, and a rendering worker never waits for a batch to fill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gen3deval.config import build_spec
from gen3deval.engine.batching import BatchQueues
from gen3deval.engine.build import build_engine
from gen3deval.engine.results import build_rows
from gen3deval.engine.store import Store
from gen3deval.engine.workers import _InlineExecutor
from testdata import LOWPOLY, toys4k_tree

pytest.importorskip("transformers")


class _Spy(_InlineExecutor):
    """The inline executor, recording the stages of each submission."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def submit(self, fn: Any, *args: Any) -> Any:
        self.calls.append([stage for stage, _kw, _wd in args[0]])
        return super().submit(fn, *args)


def _run(
    tree: Path, clip: Path, out: Path, batch: int
) -> tuple[list[list[str]], dict[str, float], list[int]]:
    """(stages of each submission, {case: clip_score}, images per CLIP image forward pass)."""
    from gen3deval.models.clip import get_clip

    enc = get_clip(str(clip))
    forwards: list[int] = []
    real = enc.model.get_image_features

    def counted(pixel_values: Any, **kw: Any) -> Any:
        forwards.append(int(pixel_values.shape[0]))
        return real(pixel_values=pixel_values, **kw)

    enc.model.get_image_features = counted
    spec = build_spec(
        {
            "suites": [f"toys4k:{tree}"],
            "systems": ["oracle"],
            "protocol": {"name": "clip3d", "clip_model": str(clip)},
        },
        out=out,
        jobs=1,
    )
    engine, suites = build_engine(spec)
    engine.inline = True
    engine.score_batch = batch
    spy = _Spy()
    engine._make_executor = lambda: spy  # type: ignore[method-assign]
    engine.run(suites=suites, spec={})
    with Store(out, readonly=True) as store:
        rows, _ = build_rows(store)
    return spy.calls, {r["case"]: r["clip_score"] for r in rows}, forwards


@pytest.mark.skipif(not LOWPOLY.is_dir(), reason="shared data not available")
def test_scores_go_in_batches_with_the_numbers_of_one_at_a_time(tmp_path: Path) -> None:
    from gen3deval.models.clip import clear_cache
    from gen3deval.models.testing import make_random_clip

    tree = toys4k_tree(tmp_path / "toys", 5, bad_rows=False)
    clip = make_random_clip(tmp_path / "clip", "tiny", seed=1)
    clear_cache()
    calls, batched, forwards = _run(tree, clip, tmp_path / "b", batch=2)
    scores = [c for c in calls if "score" in c]
    # Renders run first (a free worker never waits for a batch); the 5 scores then go 2 + 2 + 1.
    assert [len(c) for c in scores] == [2, 2, 1] and all(set(c) == {"score"} for c in scores)
    assert all(len(c) == 1 for c in calls if "score" not in c)
    # One forward pass per batch (16, 16, 8 images); each stage then finds its views in the encoder's memo.
    assert forwards == [16, 16, 8]
    clear_cache()
    calls1, single, forwards1 = _run(tree, clip, tmp_path / "s", batch=1)
    assert all(len(c) == 1 for c in calls1) and forwards1 == [8] * 5
    assert set(single) == set(batched) and len(single) == 5
    for case, value in single.items():
        assert batched[case] == pytest.approx(value, abs=1e-6)


def test_queues_fill_while_other_work_waits_and_never_starve() -> None:
    q = BatchQueues()
    for i in (5, 1, 4):
        q.offer("score", 3, (i,))
    q.offer("generate:hf", 2, (3,))
    assert q.take(other_work=True) == [(1,), (4,), (5,)]  # full: goes, in priority order
    q.offer("score", 3, (9,))
    assert q.take(other_work=True) == []  # none full, other stages ready: they run first
    assert q.take(other_work=False) == [(3,)]  # nothing else to do: the queue whose first task comes first
    assert q.take(other_work=False) == [(9,)]
    assert q.take(other_work=False) == [] and len(q) == 0


@pytest.mark.skipif(not LOWPOLY.is_dir(), reason="shared data not available")
def test_batch_sizes_come_from_the_protocol_and_the_systems(tmp_path: Path) -> None:
    """CLIP-scored score stages batch 8 at a time; a local model system's generate stages batch by its
    batch_size; everything else runs one at a time."""
    pytest.importorskip("peft")
    from gen3deval.models.testing import make_random_vlm

    tree = toys4k_tree(tmp_path / "toys", 2, bad_rows=False)
    vlm = make_random_vlm(tmp_path / "vlm", seed=0)
    spec = build_spec(
        {
            "suites": [f"toys4k:{tree}"],
            "systems": ["oracle", {"name": "hf", "settings": {"model": str(vlm), "batch_size": 4}}],
            "protocol": {"name": "clip3d", "clip_model": str(tmp_path / "no-such-clip")},
        },
        out=tmp_path / "run",
        jobs=1,
    )
    engine, _ = build_engine(spec)
    assert engine._batch_size("generate", "hf") == 4 and engine._batch_size("generate", "oracle") == 1
    assert engine._batch_size("render", "hf") == 1
    assert engine._batch_size("score", "oracle") == 1  # CLIP unavailable (skipped): nothing to batch
    assert "clip_score" in engine.skipped_metrics
