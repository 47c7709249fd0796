"""Stages in batches, so a learned model sees many cases per forward pass.

Two kinds of stage are batched: ``score`` stages when CLIP scores them, and the ``generate`` stages of a local
model system that declares ``batch_size`` > 1 and ``prefetch`` (``hf``). The engine holds such ready stages back
in :class:`BatchQueues` (one queue per kind: ``score``, or ``generate`` of one system) and hands a worker up to a
queue's size of them at once, when that many are waiting or no other stage is ready to run (so a free worker never
waits for a batch to fill, and a batch is only short when there is nothing else to do). The worker first does the
model work of the whole batch in one call (:func:`gen3deval.engine.scoring.prefetch_learned`: every image of the
batch embedded at once; a system's ``prefetch``: every prompt generated at once), then runs each stage as usual,
each finding its result in the model's memo: every stage is still its own row, committed on its own. Batching
changes no number beyond float rounding (the same inputs go through the same model).
"""

from __future__ import annotations

import heapq
from typing import Any


class BatchQueues:
    """Ready tasks waiting for a batch: ``{key: (size, heap by task priority)}``."""

    def __init__(self) -> None:
        self.queues: dict[str, tuple[int, list[Any]]] = {}

    def __len__(self) -> int:
        return sum(len(q) for _, q in self.queues.values())

    def offer(self, key: str, size: int, task: Any) -> None:
        heapq.heappush(self.queues.setdefault(key, (max(1, int(size)), []))[1], task)

    def take(self, other_work: bool) -> list[Any]:
        """The next batch: a full one when some queue has one; else, when there is no ``other_work`` to give a
        free worker, whatever waits in the queue whose first task comes first; else nothing."""
        full = [(q[0], key) for key, (size, q) in self.queues.items() if len(q) >= size]
        if full:
            key = min(full)[1]
        elif other_work:
            return []
        else:
            waiting = [(q[0], key) for key, (_, q) in self.queues.items() if q]
            if not waiting:
                return []
            key = min(waiting)[1]
        size, q = self.queues[key]
        return [heapq.heappop(q) for _ in range(min(size, len(q)))]
