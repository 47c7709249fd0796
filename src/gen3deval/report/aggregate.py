"""Aggregate result rows into leaderboard statistics (PROTOCOLS.md section 10).

For each system (and each (system, category)) and each metric, two aggregates are computed side by side with
the SAME statistic, the metric's own (``metric_info(key).aggregate`` in the registry,
:mod:`gen3deval.metrics.base`): the mean for bounded metrics (IoU, F-score, NC, SSIM, PSNR ...), the median for
unbounded lower-is-better ones (Chamfer, Hausdorff), so a column never mixes a median with a mean:

- ``valid``: the statistic over the cases that produced a valid candidate (``executable`` true and the metric
  has a value), with ``n`` = n_valid;
- ``all``: every case counts; a failed case (``executable`` false, whatever its error class, including
  ``reference_error``) is scored the metric's ``worst`` value (0 for IoU/F/NC, -1 for SSIM, +inf for
  distances). Should a valid case score even worse than the registry's ``worst``, failures take that value
  instead, so the ``all`` column can never look better than the ``valid`` one.

A case whose candidate is valid but whose metric is None is left out of both aggregates of that metric; when
its ``{key}_method`` is ``"undefined"`` (IoU of two meshes that enclose no volume) it is counted as
``undefined`` beside the aggregates (never as a failure, never as 0). A metric with no value and no undefined
case in any row of the run is not reported. Keys the registry does not know (found in ``meta["metrics"]`` or,
for ``fscore@T``, in rows) fall back to the direction meta gives, the median, and a worst of -inf/+inf.

Every statistic comes with a seeded percentile bootstrap interval over cases
(:mod:`gen3deval.report.bootstrap`: 10,000 resamples, seed 0, 95%); system differences on the headline metric
use a paired bootstrap (the same resampled cases for both systems).

Attempts (:func:`select_attempts`): ``single`` = attempt 1; ``final`` = the last attempt of each case;
``final@k`` = the last attempt <= k; ``best@<=k`` = the best attempt <= k by the ranking metric (an oracle
diagnostic: it peeks at the score). The whole summary is made by :mod:`gen3deval.report.summary`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gen3deval.report.bootstrap import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    Estimate,
    PairedDiff,
    bootstrap_ci,
    estimate,
    paired_bootstrap,
    resample_statistics,
    statistic_of,
)

__all__ = [
    "LEVEL",
    "N_RESAMPLES",
    "SEED",
    "Estimate",
    "PairedDiff",
    "aggregate_metric",
    "bootstrap_ci",
    "estimate",
    "metric_infos",
    "paired_bootstrap",
    "resample_statistics",
    "select_attempts",
    "statistic_of",
    "to_float",
    "vsr",
]

# The headline metric (ranking, paired differences) is the first of these the run has, unless meta says.
HEADLINE_ORDER = (
    "best_iou",
    "volume_iou",
    "fscore@0.02",
    "fscore@0.01",
    "fscore@0.05",
    "chamfer_l2",
    "chamfer_l1",
    "ssim",
    "silhouette_iou",
    "clip_score",
    "psnr",
)

_ATTEMPT_MODE = re.compile(r"^(single|final|final@(\d+)|best@<=(\d+))$")


# --- rows -> numbers ---------------------------------------------------------------------------------------


def to_float(value: Any) -> float | None:
    """A metric value as float: None/NaN/non-numbers -> None; the strings "inf"/"-inf" (report files of
    older versions) -> +-inf."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "+inf", "infinity", "-inf", "-infinity"):
            return float(value.strip().lower().replace("infinity", "inf"))
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _attempt(row: Mapping[str, Any]) -> int:
    return int(row.get("attempt") or 1)


def max_attempt(rows: Iterable[Mapping[str, Any]]) -> int:
    """The largest attempt number in ``rows`` (1 when there are none)."""
    return max((_attempt(r) for r in rows), default=1)


def parse_attempt_mode(mode: str) -> tuple[str, int | None]:
    """``"single"`` -> ("single", 1); ``"final"`` -> ("final", None); ``"final@3"`` -> ("final", 3);
    ``"best@<=3"`` -> ("best", 3). ValueError for anything else (or k < 1)."""
    m = _ATTEMPT_MODE.match(str(mode).strip())
    k = int(m.group(2) or m.group(3)) if m and (m.group(2) or m.group(3)) else None
    if not m or (k is not None and k < 1):
        raise ValueError(f"unknown attempt mode {mode!r}; use single, final, final@K or best@<=K (K >= 1)")
    if m.group(1) == "single":
        return "single", 1
    return ("best" if m.group(1).startswith("best") else "final"), k


def select_attempts(
    rows: Iterable[Mapping[str, Any]],
    mode: str = "single",
    *,
    key: str | None = None,
    higher_is_better: bool = True,
) -> list[Mapping[str, Any]]:
    """The rows of one attempt per (case, system), in input order.

    ``single``: attempt 1. ``final``: the last attempt. ``final@k``: the last attempt <= k. ``best@<=k``: among
    attempts <= k the best by ``key`` (executable first, then a defined value, then the value in the metric's
    direction, then the earliest attempt); without ``key``, the first executable attempt.
    """
    kind, k = parse_attempt_mode(mode)
    if kind == "single":
        return [r for r in rows if _attempt(r) == 1]
    chosen: dict[tuple[str, str], Mapping[str, Any]] = {}
    order: list[tuple[str, str]] = []

    def rank(r: Mapping[str, Any]) -> tuple[float, ...]:
        if kind == "final":
            return (-_attempt(r),)
        v = to_float(r.get(key)) if key else None
        score = math.inf if v is None else (-v if higher_is_better else v)
        return (0.0 if r.get("executable") else 1.0, 0.0 if v is not None else 1.0, score, _attempt(r))

    for r in rows:
        if k is not None and _attempt(r) > k:
            continue
        ck = (str(r["case"]), str(r["system"]))
        if ck not in chosen:
            order.append(ck)
            chosen[ck] = r
        elif rank(r) < rank(chosen[ck]):
            chosen[ck] = r
    return [chosen[ck] for ck in order]


def _registry_info(key: str) -> Any | None:
    """The registry's MetricSpec of ``key``, or None when this version does not know the key."""
    from gen3deval.metrics.base import metric_info

    try:
        return metric_info(key)
    except Exception:  # unknown key / unparsable fscore threshold: the caller falls back
        return None


def _registry_keys() -> list[str]:
    from gen3deval.metrics.base import known_metric_keys

    return list(known_metric_keys())


def _has_data(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(
        to_float(r.get(key)) is not None or (r.get("executable") and r.get(f"{key}_method") == "undefined")
        for r in rows
    )


def metric_infos(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The metrics the report shows, in order: keys of ``meta["metrics"]``, then the registry's, then
    ``fscore@T`` keys found in rows; kept only when some row has a value (or an undefined case).

    Each -> {display, scale, higher_is_better, unit, statistic, worst, registered}. Direction, statistic and
    worst come from the metric registry (meta's direction only for keys it does not know); display, scale and
    unit from meta when it gives them (presentation only), else from the registry.
    """
    declared: Mapping[str, Any] = meta.get("metrics") or {}
    keys = list(declared)
    keys += [k for k in _registry_keys() if k not in keys]
    keys += sorted({str(k) for r in rows for k in r if str(k).startswith("fscore@") and k not in keys})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        if not _has_data(rows, key):
            continue
        given = declared.get(key)
        info: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        spec = _registry_info(key)
        if spec is not None:
            hib = bool(spec.higher_is_better)
            statistic = spec.aggregate if spec.aggregate in ("mean", "median") else "median"
            worst = float(spec.worst)
            display, unit, scale = spec.display, spec.unit, float(spec.scale)
        else:
            hib = bool(info.get("higher_is_better", True))
            statistic, worst = "median", (-math.inf if hib else math.inf)
            display, unit, scale = key, "", None
        shown = str(info.get("display") or display)
        given_scale = to_float(info.get("scale"))
        if given_scale is not None and given_scale > 0 and math.isfinite(given_scale):
            scale = given_scale
        elif info.get("display") or scale is None:
            scale = display_scale(shown)
        out[key] = {
            "display": shown,
            "scale": scale,
            "higher_is_better": hib,
            "unit": str(info.get("unit") or unit),
            "statistic": statistic,
            "worst": worst,
            "registered": spec is not None,
        }
    return out


_SCALE_POW = re.compile(r"[x×]\s*10\s*\^\s*\{?\s*([+-]?\d+)")
_SCALE_SUP = {"³": 3, "²": 2, "⁴": 4, "⁶": 6}


def display_scale(display: str) -> float:
    """The factor a display name implies: ``"CD x10^3"`` -> 1000, ``"x10³"`` -> 1000, else 1."""
    m = _SCALE_POW.search(display)
    if m:
        return float(10 ** int(m.group(1)))
    for sup, power in _SCALE_SUP.items():
        if re.search(rf"[x×]\s*10{sup}", display):
            return float(10**power)
    return 1.0


def column_label(info: Mapping[str, Any], which: str, *, arrow: bool = True) -> str:
    """An unambiguous column name, e.g. ``"CD x10^3 ↓ median (valid)"`` or
    ``"IoU ↑ mean (all, failures = 0)"``: the statistic is named, and the all-cases column says what a
    failure scores."""
    name = f"{info['display']} {direction_arrow(info)}" if arrow else str(info["display"])
    if which == "valid":
        return f"{name} {info['statistic']} (valid)"
    return f"{name} {info['statistic']} (all, failures = {worst_label(info)})"


def direction_arrow(info: Mapping[str, Any]) -> str:
    return "↑" if info["higher_is_better"] else "↓"


def worst_label(info: Mapping[str, Any]) -> str:
    """The failure score as text: ``0``, ``-1``, ``+inf``."""
    w = float(info["worst"])
    if math.isinf(w):
        return "+inf" if w > 0 else "-inf"
    return f"{w:g}"


def metric_columns(
    rows: Sequence[Mapping[str, Any]], key: str, worst: float, higher_is_better: bool = True
) -> tuple[list[str], NDArray[np.float64], NDArray[np.bool_], int]:
    """(case ids, all-cases values, valid mask, n_undefined) of one metric over ``rows``.

    Failed cases get ``worst``, or the worst valid value when a valid case scored even worse. Rows whose
    candidate is valid but whose metric is None are left out; those marked ``{key}_method == "undefined"``
    are counted in n_undefined.
    """
    ids: list[str] = []
    vals: list[float] = []
    valid: list[bool] = []
    n_undefined = 0
    for r in rows:
        if not r.get("executable"):
            ids.append(str(r["case"]))
            vals.append(math.nan)  # filled below
            valid.append(False)
            continue
        v = to_float(r.get(key))
        if v is None:
            n_undefined += r.get(f"{key}_method") == "undefined"
            continue
        ids.append(str(r["case"]))
        vals.append(v)
        valid.append(True)
    values = np.asarray(vals, dtype=np.float64)
    mask = np.asarray(valid, dtype=bool)
    if mask.any():
        seen = values[mask].min() if higher_is_better else values[mask].max()
        worst = min(worst, float(seen)) if higher_is_better else max(worst, float(seen))
    values[~mask] = worst
    return ids, values, mask, n_undefined


def aggregate_metric(
    rows: Sequence[Mapping[str, Any]],
    key: str,
    info: Mapping[str, Any],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """{"valid": Estimate, "all": Estimate, "undefined": int}, both with ``info["statistic"]``."""
    _, values, valid, n_undefined = metric_columns(rows, key, info["worst"], info["higher_is_better"])
    kw: dict[str, Any] = {
        "statistic": info["statistic"],
        "n_resamples": n_resamples,
        "seed": seed,
        "level": level,
    }
    return {
        "valid": estimate(values[valid], **kw),
        "all": estimate(values, **kw),
        "undefined": n_undefined,
    }


def vsr(
    rows: Sequence[Mapping[str, Any]],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate:
    """Valid syntax rate: executable cases / all cases, with its bootstrap interval."""
    flags = np.asarray([1.0 if r.get("executable") else 0.0 for r in rows], dtype=np.float64)
    return estimate(flags, statistic="mean", n_resamples=n_resamples, seed=seed, level=level)


def error_histogram(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count of each ``error_class`` among failed rows (``"unknown"`` when a failure has none), by count."""
    counts = Counter(str(r.get("error_class") or "unknown") for r in rows if not r.get("executable"))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
