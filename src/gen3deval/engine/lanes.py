"""Where model stages run: the run's executor (:func:`run_executor`) and its model lanes.

The generate stages of a system whose model must not be loaded in every worker (a local model on a GPU) run in
that system's own small pool, one worker per GPU, so its weights load once per GPU (on Ray, the executor gives
such stages one long-lived actor per GPU instead, :mod:`gen3deval.engine.ray_executor`).

:class:`LanedExecutor` wraps the run's executor: a ``work_batch`` call whose items are all generate stages of a
laned system goes to that system's lane (a pool of ``n`` spawned workers, worker ``k`` pinned to GPU ``k`` through
``CUDA_VISIBLE_DEVICES``), everything else to the main executor. To the engine it is one executor: a worker that
dies in either breaks the whole (every stage in flight is rerun alone, as with one pool). A system asks for a lane
with a ``model_workers`` attribute > 0 (``hf``: one per visible GPU when it runs on CUDA, none on the CPU, where
every worker may load its own copy and the cores are the limit).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def _lane_init(counter: Any, gpus: int, parent: int, threads: int, render_backend: str) -> None:
    from gen3deval.engine.workers import _worker_init

    with counter.get_lock():
        k = counter.value
        counter.value += 1
    if gpus > 0:
        # The k-th worker of the lane sees only GPU k: cuda:0 in it is that GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
    _worker_init(parent, threads, render_backend)


def lane_pool(workers: int, gpus: int, render_backend: str) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned stage workers, worker k pinned to GPU k mod ``gpus`` (no pinning for 0)."""
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_lane_init,
        initargs=(counter, gpus, os.getpid(), 1, render_backend),
    )


class LanedExecutor:
    """The main executor plus one lane per system label ``{label: factory}`` (pools created on first use)."""

    def __init__(self, main: Any, lanes: Mapping[str, Callable[[], Any]], slots: int) -> None:
        self.main = main
        self._factories = dict(lanes)
        self.lanes: dict[str, Any] = {}
        self.slots = slots  # workers of the main executor and of every lane (the engine's in-flight bound)

    def lane_of(self, items: list[tuple[str, dict[str, Any], str]]) -> str | None:
        labels = {
            (kw.get("system") or {}).get("label") if stage == "generate" else None for stage, kw, _ in items
        }
        if len(labels) == 1:
            (label,) = labels
            if label in self._factories:
                return str(label)
        return None

    def submit(self, fn: Callable[..., Any], items: Any, *args: Any) -> Future[Any]:
        lane = self.lane_of(items)
        if lane is None:
            return self.main.submit(fn, items, *args)
        if lane not in self.lanes:
            self.lanes[lane] = self._factories[lane]()
        return self.lanes[lane].submit(fn, items, *args)

    @property
    def _processes(self) -> dict[int, Any]:
        """Every worker process (the engine kills them when a run is interrupted)."""
        out: dict[int, Any] = {}
        for ex in (self.main, *self.lanes.values()):
            out.update(getattr(ex, "_processes", None) or {})
        return out

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        for ex in (self.main, *self.lanes.values()):
            ex.shutdown(wait=wait, cancel_futures=cancel_futures)


def run_executor(
    *,
    inline: bool,
    jobs: int,
    render_backend: str,
    kind: str,
    ray_address: str | None,
    ray_shared_dir: str | None,
    systems: Mapping[str, Any],
    clip_scores: bool,
) -> Any:
    """The executor of a run (:func:`gen3deval.engine.workers.make_executor`) with its model placement:
    ``systems`` ({label: object}, local systems only) that run a model (``prefetch``) go to one long-lived actor
    per GPU on Ray (as do score stages when ``clip_scores``); those with ``model_workers`` > 0 get a lane of
    their own in a local pool."""
    from functools import partial

    from gen3deval.engine.workers import make_executor

    model_systems = frozenset(
        label for label, obj in systems.items() if callable(getattr(obj, "prefetch", None))
    )
    ex = make_executor(
        inline,
        jobs,
        render_backend,
        kind,
        ray_address,
        ray_shared_dir,
        model_systems=model_systems,
        model_scores=clip_scores,
    )
    lanes = {
        label: (int(getattr(obj, "model_workers", 0) or 0), int(getattr(obj, "gpus", 0) or 0))
        for label, obj in systems.items()
        if int(getattr(obj, "model_workers", 0) or 0) > 0
    }
    if not lanes or inline or kind != "local":
        return ex
    factories = {label: partial(lane_pool, n, gpus, render_backend) for label, (n, gpus) in lanes.items()}
    return LanedExecutor(ex, factories, slots=jobs + sum(n for n, _ in lanes.values()))
