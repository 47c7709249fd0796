"""Score stages in batches, so a learned model (CLIP) sees many assets per forward pass.

With CLIP metrics, the engine holds ready ``score`` stages back in a :class:`ScoreQueue` and hands a worker up
to ``size`` of them at once, when that many are waiting or no other stage is left to run (so rendering never
waits for scoring, and a batch is only short at the end). The worker embeds every image of the batch in one
call (:func:`gen3deval.engine.stages.prefetch_learned`), then runs each stage as usual: each is still its own
row, committed on its own. Batching changes no number beyond float rounding (CLIP runs the same images).
"""

from __future__ import annotations

import heapq
from typing import Any


class ScoreQueue:
    """Ready score tasks waiting for a batch (a heap by task priority)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self.waiting: list[Any] = []

    def __len__(self) -> int:
        return len(self.waiting)

    def offer(self, task: Any) -> None:
        heapq.heappush(self.waiting, task)

    def take(self, other_work: bool) -> list[Any]:
        """The next batch: ``size`` tasks when that many wait, or whatever waits when there is no
        ``other_work`` to give a free worker; else nothing (let other stages run, the batch fills up)."""
        if not self.waiting or (len(self.waiting) < self.size and other_work):
            return []
        return [heapq.heappop(self.waiting) for _ in range(min(self.size, len(self.waiting)))]
