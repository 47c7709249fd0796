"""A CAD reward for training loops: run CadQuery completions in the warm sandbox, score them against a reference.

::

    from gen3deval.reward import cad_reward

    reward = cad_reward()                                  # best_iou, the gencad protocol, 2 workers, 10 s/program
    rewards = reward(prompts, completions, ground_truth=refs)   # TRL's reward-function signature -> list[float]
    reward.last_details                                    # [{reward, error_class, metric, seconds, message}, ...]
    details = reward.score(completions, refs)              # the plain API: list[RewardDetail]
    reward.close()                                         # stop the workers (also done at exit)

- A completion is a string (a model answer: the code is taken with :func:`gen3deval.execute.extract_code`) or a
  conversational list of ``{"role", "content"}`` messages (the last assistant message is used).
- A reference is a CadQuery program (string) or a mesh file path (any format :func:`gen3deval.mesh.io.load_mesh`
  reads, +Y up), one per completion. References are executed on their own warm workers (``role="reference"``:
  never on a worker that ran a candidate), under the protocol's limits, and cached (LRU keyed by the sha256 of
  the program text or of the mesh file's bytes). A reference that fails is a :class:`RewardReferenceError`
  naming the row: a dataset problem, never a penalty for the model.
- reward = the metric's value when the program runs and yields a solid; for a lower-is-better metric (Chamfer,
  Hausdorff) it is the negated value, so that higher is always better. Otherwise the penalty of its error
  class (:data:`DEFAULT_PENALTIES`: 0.0 for every class; pass ``penalties={"syntax": -1.0, ...}``).
- The metric is computed exactly as a ``gen3deval run`` computes it: the executed meshes are stored by the run as
  GLB (float32 vertices), so vertices are rounded to float32 first, then :func:`gen3deval.compare.compare` with
  the protocol's normalisation, alignment, samples, seed and IoU resolution.
- The metric runs in ``workers`` separate processes (:mod:`gen3deval._reward_metric`): manifold3d's exact
  IoU holds the GIL, so threads of the trainer's process would score one mesh at a time.
- A batch runs ``workers`` programs at a time. Each program gets ``timeout_s`` of wall-clock and CPU time; with
  ``batch_timeout_s`` every program's limit is also cut to what is left of the batch's deadline, and a program
  not started by then gets the ``timeout`` penalty, so a call returns within about ``batch_timeout_s`` plus one
  metric computation once the workers are up (the first call starts them: a few seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.errors import ConfigError, UserInputError
from gen3deval.execute.result import ERROR_CLASSES
from gen3deval.mesh.types import Mesh

__all__ = ["DEFAULT_PENALTIES", "CadReward", "RewardDetail", "RewardReferenceError", "cad_reward"]

# The reward of a completion that does not yield a solid, per error class (PROTOCOLS.md section 9).
DEFAULT_PENALTIES: dict[str, float] = {cls: 0.0 for cls in ERROR_CLASSES}
# The error class of a row whose reference failed (reported only by the CLI; the API raises).
REFERENCE_ERROR = "reference_error"
_MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class RewardReferenceError(UserInputError):
    """A reference program failed or a reference mesh cannot be used; the message names the row."""


@dataclass
class RewardDetail:
    """The outcome of one completion.

    Attributes:
        reward: what the trainer gets (the metric, signed so higher is better, or the penalty).
        error_class: None when the program ran and was scored, else one of ``ERROR_CLASSES``.
        metric: the metric's raw value (None on failure).
        seconds: wall-clock seconds spent on this completion (extraction, execution, metric).
        message: why it failed (empty on success).
    """

    reward: float
    error_class: str | None
    metric: float | None
    seconds: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def completion_text(completion: Any) -> str:
    """The answer text of a completion: a string, or the last assistant message of a conversation
    (``[{"role": ..., "content": str | [{"type": "text", "text": ...}, ...]}, ...]``); "" when none."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list | tuple):
        msgs = [m for m in completion if isinstance(m, dict)]
        mine = [m for m in msgs if m.get("role") == "assistant"] or msgs
        if not mine:
            return ""
        content = mine[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list | tuple):
            parts = []
            for p in content:
                if isinstance(p, str):
                    parts.append(p)
                elif isinstance(p, dict) and isinstance(p.get("text"), str):
                    parts.append(p["text"])
            return "\n".join(parts)
    return ""


def _as_run_stores(mesh: Mesh) -> Mesh:
    """``mesh`` with float32 vertices, as a run stores it (GLB) before scoring; bit-identical to the round trip."""
    return Mesh.from_arrays(
        mesh.vertices.astype(np.float32).astype(np.float64), mesh.faces, source=mesh.source
    )


class CadReward:
    """The reward callable (see the module docstring); make it with :func:`cad_reward`."""

    def __init__(
        self,
        metric: str = "best_iou",
        penalties: dict[str, float] | None = None,
        reference: str = "ground_truth",
        workers: int = 2,
        timeout_s: float = 10.0,
        batch_timeout_s: float | None = None,
        protocol: str | dict[str, Any] = "gencad",
        normalize: str | None = None,
        cache_size: int = 256,
        metric_processes: bool = True,
    ) -> None:
        from gen3deval.compare import _split_keys
        from gen3deval.config import get_protocol
        from gen3deval.metrics.base import metric_info

        proto = get_protocol(protocol)
        if normalize is not None:
            from gen3deval.config import NORMALIZE

            if normalize not in NORMALIZE:
                raise ConfigError(f"normalize: unknown {normalize!r}; expected one of {', '.join(NORMALIZE)}")
            proto = replace(proto, normalize=normalize)
        _split_keys([metric])  # UserInputError naming the known metrics
        self.metric = metric
        self.higher_is_better = metric_info(metric).higher_is_better
        unknown = sorted(set(penalties or {}) - set(ERROR_CLASSES))
        if unknown:
            raise ConfigError(
                f"penalties: unknown error class {unknown[0]!r}; expected {', '.join(ERROR_CLASSES)}"
            )
        self.penalties = {**DEFAULT_PENALTIES, **{k: float(v) for k, v in (penalties or {}).items()}}
        if int(workers) < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if not (float(timeout_s) > 0):
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if batch_timeout_s is not None and not (float(batch_timeout_s) > 0):
            raise ConfigError(f"batch_timeout_s must be > 0 or None, got {batch_timeout_s}")
        self.reference = reference
        self.workers = int(workers)
        self.timeout_s = float(timeout_s)
        self.batch_timeout_s = None if batch_timeout_s is None else float(batch_timeout_s)
        self.protocol = proto
        self.limits = replace(proto.limits, wall_s=self.timeout_s, cpu_s=self.timeout_s)
        self.cache_size = max(1, int(cache_size))
        self.metric_processes = bool(metric_processes)
        p = proto
        self._params = {
            "normalize": p.normalize,
            "align": p.align,
            "samples": p.samples,
            "seed": p.seed,
            "thresholds": list(p.thresholds),
            "iou_resolution": p.iou_resolution,
        }
        self.__name__ = f"cad_{metric}"  # trainers (TRL) log each reward function under its __name__
        self.last_details: list[dict[str, Any]] = []
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._pools: dict[str, Any] = {}
        self._finalizer = weakref.finalize(self, _shutdown_pools, self._pools)

    # --- the trainer's signature -------------------------------------------------------------------------

    def __call__(self, prompts: Any = None, completions: Any = None, **columns: Any) -> list[float]:
        """TRL's reward signature: ``completions`` (strings or conversations) and the reference column
        ``columns[reference]`` (a list aligned with them); other columns are ignored."""
        if completions is None:
            raise ConfigError("the reward needs completions")
        if self.reference not in columns:
            have = ", ".join(sorted(columns)) or "none"
            raise ConfigError(f"no reference column {self.reference!r} among the columns ({have})")
        details = self.score(completions, columns[self.reference], column=self.reference)
        return [d.reward for d in details]

    def score(
        self, completions: Sequence[Any], references: Sequence[Any], *, column: str = "reference"
    ) -> list[RewardDetail]:
        """One :class:`RewardDetail` per completion (input order); also kept as dicts in ``last_details``.
        Raises :class:`RewardReferenceError` naming the first row whose reference fails."""
        details = self._score(completions, references, column=column, raise_reference=True)
        return details

    # --- workers -----------------------------------------------------------------------------------------

    def _metric_pool(self) -> _MetricPool:
        with self._lock:
            if "metric" not in self._pools:
                self._pools["metric"] = _MetricPool(self.workers)
            pool: _MetricPool = self._pools["metric"]
            return pool

    def _pool(self, role: str) -> Any:
        from gen3deval.execute.cadquery_pool import WorkerPool

        with self._lock:
            if role not in self._pools:
                self._pools[role] = WorkerPool(self.workers)
            return self._pools[role]

    def warm(self) -> None:
        """Start the candidate workers (and metric processes) now; the first call would otherwise start them."""
        pool = self._pool("candidate")
        if pool.size < self.workers:
            pool.warm(self.workers)
        if self.metric_processes:
            self._metric_pool().warm()

    def worker_pids(self) -> list[int]:
        """Process ids of the warm worker templates (candidate and reference)."""
        with self._lock:
            pools = list(self._pools.values())
        return [
            w.proc.pid
            for p in pools
            if not isinstance(p, _MetricPool)
            for w in list(p._all)
            if w.proc is not None
        ]

    def metric_pids(self) -> list[int]:
        """Process ids of the metric processes."""
        with self._lock:
            pool = self._pools.get("metric")
        return pool.pids() if pool is not None else []

    def close(self) -> None:
        """Stop every worker of this reward (the next call starts new ones); also done at exit."""
        with self._lock:
            pools = dict(self._pools)
            self._pools.clear()
        _shutdown_pools(pools)

    def __enter__(self) -> CadReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- references --------------------------------------------------------------------------------------

    def _reference_key(self, ref: Any, where: str) -> tuple[str, Any]:
        """(cache key, source) of a reference: ("mesh", path) / ("program", text) / ("meshobj", Mesh)."""
        if isinstance(ref, Mesh):
            h = hashlib.sha256(ref.vertices.tobytes() + ref.faces.tobytes()).hexdigest()
            return f"mesh:{h}", ("meshobj", ref)
        if isinstance(ref, Path) or (
            isinstance(ref, str) and "\n" not in ref and ref.strip().lower().endswith(_MESH_SUFFIXES)
        ):
            path = Path(ref)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise RewardReferenceError(f"{where}: reference mesh {path}: {exc.strerror or exc}") from None
            return f"file:{hashlib.sha256(data).hexdigest()}", ("mesh", path)
        if isinstance(ref, str) and ref.strip():
            return f"program:{hashlib.sha256(ref.encode('utf-8')).hexdigest()}", ("program", ref)
        what = "an empty reference" if isinstance(ref, str) or ref is None else type(ref).__name__
        raise RewardReferenceError(
            f"{where}: expected a CadQuery program or a mesh file path as the reference, got {what}"
        )

    def _build_reference(self, source: tuple[str, Any], where: str) -> Any:
        """The scoring reference: its mesh, vertices rounded to float32 as a run stores it."""
        from gen3deval.compare import _as_mesh
        from gen3deval.errors import MeshLoadError

        kind, obj = source
        if kind == "program":
            from gen3deval.execute.cadquery_pool import check_program

            limits = self.protocol.limits  # references run exactly as in a run
            res = check_program(obj, limits) or self._pool("reference").run(obj, limits)
            if not res.executable or res.mesh is None:
                raise RewardReferenceError(
                    f"{where}: the reference program failed ({res.error_class}): {res.message}"
                )
            mesh = res.mesh
        elif kind == "mesh":
            from gen3deval.mesh.io import load_mesh

            try:
                mesh = load_mesh(obj)
            except MeshLoadError as exc:
                raise RewardReferenceError(f"{where}: reference mesh {exc}") from None
        else:
            mesh = obj
        mesh = _as_run_stores(mesh)
        try:
            _as_mesh(mesh, "y", "reference")  # what compare checks (faces, finite, area): fail here, by row
        except UserInputError as exc:
            raise RewardReferenceError(f"{where}: reference: {exc}") from None
        return mesh

    def _references(
        self, references: Sequence[Any], column: str, raise_reference: bool
    ) -> tuple[list[Any], dict[int, str]]:
        """The scoring reference of every row (cached; misses built in parallel) and {row: error}."""
        keys: list[str | None] = []
        errors: dict[int, str] = {}
        todo: dict[str, tuple[int, tuple[str, Any]]] = {}
        for i, ref in enumerate(references):
            try:
                key, source = self._reference_key(ref, f"{column} of row {i}")
            except RewardReferenceError as exc:
                if raise_reference:
                    raise
                errors[i] = str(exc)
                keys.append(None)
                continue
            keys.append(key)
            with self._lock:
                hit = key in self._cache
            if not hit and key not in todo:
                todo[key] = (i, source)
        built: dict[str, Any] = {}
        failed: dict[str, str] = {}
        if todo:

            def build(item: tuple[str, tuple[int, tuple[str, Any]]]) -> None:
                key, (row, source) = item
                try:
                    built[key] = self._build_reference(source, f"{column} of row {row}")
                except RewardReferenceError as exc:
                    failed[key] = str(exc)

            with ThreadPoolExecutor(self.workers, thread_name_prefix="reward-ref") as ex:
                list(ex.map(build, todo.items()))
            if failed and raise_reference:
                first = min(failed, key=lambda k: todo[k][0])
                raise RewardReferenceError(failed[first])
            with self._lock:
                for k, value in built.items():
                    self._cache[k] = value
                    self._cache.move_to_end(k)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        out: list[Any] = []
        for i, maybe in enumerate(keys):
            if maybe is None:
                out.append(None)
                continue
            key = maybe
            if key in failed:
                errors[i] = failed[key] if todo[key][0] == i else f"{column} of row {i}: {failed[key]}"
                out.append(None)
                continue
            with self._lock:
                value = self._cache.get(key)
                if value is not None:
                    self._cache.move_to_end(key)
            out.append((key, value if value is not None else built[key]))
        return out, errors

    # --- scoring -----------------------------------------------------------------------------------------

    def _score(
        self, completions: Sequence[Any], references: Sequence[Any], *, column: str, raise_reference: bool
    ) -> list[RewardDetail]:
        completions, references = list(completions), list(references)
        if len(completions) != len(references):
            raise ConfigError(
                f"{len(completions)} completions but {len(references)} references in {column!r}: "
                "they must be aligned"
            )
        if not completions:
            self.last_details = []
            return []
        refs, ref_errors = self._references(references, column, raise_reference)
        self.warm()
        deadline = None if self.batch_timeout_s is None else time.monotonic() + self.batch_timeout_s

        def one(i: int) -> RewardDetail:
            if i in ref_errors:
                return RewardDetail(math.nan, REFERENCE_ERROR, None, 0.0, ref_errors[i])
            return self._one(completions[i], refs[i], deadline)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="reward") as ex:
            details = list(ex.map(one, range(len(completions))))
        self.last_details = [d.to_dict() for d in details]
        return details

    def _fail(self, cls: str, message: str, t0: float) -> RewardDetail:
        return RewardDetail(self.penalties[cls], cls, None, time.monotonic() - t0, message[:600])

    def _one(self, completion: Any, reference: tuple[str, Mesh], deadline: float | None) -> RewardDetail:
        from gen3deval.execute.cadquery_pool import check_program
        from gen3deval.execute.extract import extract_code

        t0 = time.monotonic()
        code = extract_code(completion_text(completion), "cadquery")
        if code is None:
            return self._fail("no_code", "the completion holds no CadQuery program", t0)
        limits = self.limits
        early = check_program(code, limits)
        if early is not None:
            return self._fail(str(early.error_class), early.message, t0)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.05:
                return self._fail("timeout", "the batch deadline passed before the program ran", t0)
            if left < limits.wall_s:
                limits = replace(limits, wall_s=left, cpu_s=min(limits.cpu_s, left))
        res = self._pool("candidate").run(code, limits)
        if not res.executable or res.mesh is None:
            return self._fail(res.error_class or "runtime", res.message or "the program produced no mesh", t0)
        cand = _as_run_stores(res.mesh)
        key, ref_mesh = reference
        job = (cand.vertices, cand.faces, key, ref_mesh.vertices, ref_mesh.faces, self.metric, self._params)
        if self.metric_processes:
            try:
                out = self._metric_pool().call(job)
            except EOFError:
                return self._fail("memory", "the metric process died scoring this mesh (out of memory?)", t0)
        else:
            from gen3deval._reward_metric import metric_job

            out = metric_job(*job)
        if isinstance(out, str):
            return self._fail("invalid_geometry", f"the candidate mesh cannot be scored: {out}", t0)
        values = out
        value = values.get(self.metric)
        if value is None:
            # Undefined only when the reference encloses no volume: the dataset's problem, not the model's.
            reason = values.get(f"{self.metric}_reason", "undefined")
            raise RewardReferenceError(f"{self.metric} is undefined against this reference: {reason}")
        value = float(value)
        reward = value if self.higher_is_better else -value
        return RewardDetail(reward, None, value, time.monotonic() - t0)


class _MetricProcess:
    """One ``python -m gen3deval._reward_metric`` (see that module), used by one thread at a time."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gen3deval._reward_metric"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a trainer's Ctrl-C reaches the parent, which closes us
        )

    def call(self, job: tuple[Any, ...]) -> Any:
        """The job's result; EOFError when the process died."""
        from gen3deval._reward_metric import read_frame, write_frame

        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            write_frame(self.proc.stdin, job)  # type: ignore[arg-type]
            status, value = read_frame(self.proc.stdout)  # type: ignore[arg-type]
        except (OSError, EOFError, ValueError) as exc:
            raise EOFError(str(exc)) from None
        if status != "ok":
            raise RuntimeError(f"the metric process failed: {value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()


class _MetricPool:
    """Up to ``size`` metric processes, started on first use; a dead one is replaced."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: queue.Queue[_MetricProcess] = queue.Queue()
        self._all: list[_MetricProcess] = []
        self._lock = threading.Lock()

    def warm(self) -> None:
        with self._lock:
            new = [_MetricProcess() for _ in range(self.size - len(self._all))]
            self._all += new
        for p in new:
            self._idle.put(p)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.proc.pid for p in self._all]

    def call(self, job: tuple[Any, ...]) -> Any:
        with self._lock:
            grow = self._idle.empty() and len(self._all) < self.size
            if grow:
                self._all.append(_MetricProcess())
                self._idle.put(self._all[-1])
        proc = self._idle.get()
        try:
            out = proc.call(job)
        except EOFError:
            with self._lock:
                self._all.remove(proc)
            proc.close()
            raise
        self._idle.put(proc)
        return out

    def shutdown(self) -> None:
        with self._lock:
            procs, self._all = list(self._all), []
        for p in procs:
            p.close()


def _shutdown_pools(pools: dict[str, Any]) -> None:
    for pool in list(pools.values()):
        with contextlib.suppress(Exception):
            pool.shutdown()
    pools.clear()


def cad_reward(
    metric: str = "best_iou",
    penalties: dict[str, float] | None = None,
    reference: str = "ground_truth",
    workers: int = 2,
    timeout_s: float = 10.0,
    batch_timeout_s: float | None = None,
    protocol: str | dict[str, Any] = "gencad",
    normalize: str | None = None,
    cache_size: int = 256,
    metric_processes: bool = True,
) -> CadReward:
    """A reward callable ``r(prompts, completions, **columns) -> list[float]`` (see the module docstring).

    Args:
        metric: a geometry metric key of the registry (``best_iou``, ``volume_iou``, ``chamfer_l2``,
            ``fscore@0.02``, ...), computed as the ``protocol`` does.
        penalties: {error class: reward} overriding :data:`DEFAULT_PENALTIES` (0.0 each).
        reference: the dataset column holding the references (programs or mesh paths).
        workers: programs run at a time (each a warm CadQuery worker, ~0.3 GiB; references get their own).
        timeout_s: wall-clock and CPU seconds per program. batch_timeout_s: optional deadline of a call.
        protocol: the preset (or ``{"name": ..., field: value}``) giving normalisation, alignment, samples,
            seed, IoU resolution and the references' limits; ``normalize`` overrides its normalisation.
        cache_size: references kept (LRU).
        metric_processes: compute the metric in ``workers`` separate processes (default; manifold3d's exact
            IoU holds the GIL, so threads would score one mesh at a time); False: in the calling process.
    """
    return CadReward(
        metric=metric,
        penalties=penalties,
        reference=reference,
        workers=workers,
        timeout_s=timeout_s,
        batch_timeout_s=batch_timeout_s,
        protocol=protocol,
        normalize=normalize,
        cache_size=cache_size,
        metric_processes=metric_processes,
    )
