"""Bootstrap statistics over cases (PROTOCOLS.md section 10): :func:`estimate`, :func:`bootstrap_ci`,
:func:`paired_bootstrap` and the :class:`Estimate` / :class:`PairedDiff` records.

Resampling sorts the values, then draws case indices ``floor(u * n)`` from
``u = numpy.random.default_rng(seed).random(n)``, resample after resample: one 64-bit draw per index, so the
stream does not depend on how the work is chunked, a plain Python loop reproduces it exactly, and the interval
does not depend on the order of the cases (the exact definition is above :func:`resample_statistics`).
Defaults: 10,000 resamples, seed 0, 95% percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

N_RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic over cases with its bootstrap interval.

    ``value``/``lo``/``hi`` are None when ``n`` is 0; they may be +inf (a median over mostly failed cases).
    ``statistic`` is ``"mean"`` or ``"median"``.
    """

    value: float | None
    lo: float | None
    hi: float | None
    n: int
    statistic: str = "mean"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- bootstrap ---------------------------------------------------------------------------------------------
#
# Definition (what a slow loop reproduces exactly): sort the values ascending (so the interval does not depend
# on the order of the cases); rng = np.random.default_rng(seed); for each of the n_resamples resamples draw
# u = rng.random(n) and take the cases floor(u * n); the replicate is the mean or the median of those values.
# The interval is the percentile interval of the replicates (numpy's 'linear' rule).
#
# Fast path: the resamples are summarised per n as a count matrix C (how often each case is drawn) and the two
# middle order statistics' positions, cached per n; the mean is then C @ v / n (one matrix-vector product per
# metric) and the median two lookups, since the values are sorted.

# Count matrices up to this many entries (8 bytes each) are cached per n; larger ones are made in chunks.
_CACHE_MAX_ENTRIES = 4_000_000
_CHUNK_ENTRIES = 1_000_000


def _draw_indices(rng: np.random.Generator, rows: int, n: int) -> NDArray[np.intp]:
    """(rows, n) case indices floor(u * n), u uniform in [0, 1), drawn in C order (resample by resample)."""
    return np.minimum((rng.random((rows, n)) * n).astype(np.intp), n - 1)


def _index_chunks(n: int, n_resamples: int, seed: int, chunk_entries: int) -> Iterator[NDArray[np.intp]]:
    """The (n_resamples, n) index matrix in row chunks; the same stream whatever the chunk size."""
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_entries // n)
    for start in range(0, n_resamples, rows):
        yield _draw_indices(rng, min(rows, n_resamples - start), n)


def _summarise_indices(
    idx: NDArray[np.intp],
) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.intp]]:
    """Count matrix (rows, n) and the positions of the lower/upper middle order statistic of each row."""
    rows, n = idx.shape
    flat = (np.arange(rows, dtype=np.intp)[:, None] * n + idx).ravel()
    counts = np.bincount(flat, minlength=rows * n).reshape(rows, n)
    # The k-th smallest drawn index (0-based) is the number of positions whose running count is <= k.
    cum = np.cumsum(counts, axis=1, dtype=np.int32)
    k_lo = np.count_nonzero(cum <= (n - 1) // 2, axis=1).astype(np.intp)
    k_hi = np.count_nonzero(cum <= n // 2, axis=1).astype(np.intp)
    return counts.astype(np.float64), k_lo, k_hi


@lru_cache(maxsize=8)
def _cached_summary(
    n: int, n_resamples: int, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.intp]]:
    idx = next(_index_chunks(n, n_resamples, seed, n * n_resamples))
    out = _summarise_indices(idx)
    for a in out:
        a.flags.writeable = False
    return out


def _check_statistic(statistic: str) -> None:
    if statistic not in ("mean", "median"):
        raise ValueError(f"unknown statistic {statistic!r}; use 'mean' or 'median'")


def _mean_from_counts(counts: NDArray[np.float64], v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row means of the resamples, v sorted ascending; infinities handled apart (0 * inf would be NaN)."""
    n = len(v)
    n_neg = int(np.count_nonzero(v == -np.inf))
    n_pos = int(np.count_nonzero(v == np.inf))
    finite = slice(n_neg, n - n_pos)
    out = counts[:, finite] @ v[finite] / n
    if n_neg or n_pos:
        neg = counts[:, :n_neg].sum(axis=1) > 0
        pos = counts[:, n - n_pos :].sum(axis=1) > 0
        out = np.where(pos, np.inf, out)
        out = np.where(neg, -np.inf, out)
        out = np.where(neg & pos, np.nan, out)
    return out


def _median_of_sorted(v: NDArray[np.float64]) -> float:
    n = len(v)
    return _midpoint(float(v[(n - 1) // 2]), float(v[n // 2]))


def _midpoint(a: float, b: float) -> float:
    return a if a == b else (a + b) / 2.0


def resample_statistics(
    values: Sequence[float] | NDArray[np.float64],
    *,
    statistic: str = "mean",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> NDArray[np.float64]:
    """(n_resamples,) bootstrap replicates of ``statistic`` (``mean``/``median``) of ``values`` (n > 0, no NaN)."""
    _check_statistic(statistic)
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.ndim != 1 or len(v) == 0 or np.isnan(v).any():
        raise ValueError("bootstrap needs a non-empty 1-D array of values without NaN")
    n = len(v)
    if n * n_resamples <= _CACHE_MAX_ENTRIES:
        counts, k_lo, k_hi = _cached_summary(n, n_resamples, seed)
        if statistic == "mean":
            return _mean_from_counts(counts, v)
        return _midpoints(v[k_lo], v[k_hi])
    # Large n: no cache; gather the values chunk by chunk (same draws, same statistic).
    out = np.empty(n_resamples, dtype=np.float64)
    pos = 0
    for idx in _index_chunks(n, n_resamples, seed, _CHUNK_ENTRIES):
        if statistic == "mean":
            with np.errstate(invalid="ignore"):
                rep = v[idx].mean(axis=1)
        else:
            ordered = np.sort(idx, axis=1)
            rep = _midpoints(v[ordered[:, (n - 1) // 2]], v[ordered[:, n // 2]])
        out[pos : pos + len(rep)] = rep
        pos += len(rep)
    return out


def _midpoints(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(invalid="ignore"):
        return np.where(a == b, a, (a + b) / 2.0)


def percentile_interval(replicates: NDArray[np.float64], level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``replicates`` (numpy's default 'linear' rule).

    Written out (instead of ``np.percentile``) so that +inf replicates give +inf, not NaN.
    """
    s = np.sort(np.asarray(replicates, dtype=np.float64))
    alpha = (1.0 - level) / 2.0
    return _quantile_sorted(s, alpha), _quantile_sorted(s, 1.0 - alpha)


def _quantile_sorted(s: NDArray[np.float64], q: float) -> float:
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    a, b = float(s[lo]), float(s[hi])
    if a == b:
        return a
    return a + (b - a) * (h - lo)


def bootstrap_ci(
    values: Sequence[float] | NDArray[np.float64],
    *,
    statistic: str = "mean",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` of ``values`` over cases (resampled with replacement)."""
    return percentile_interval(
        resample_statistics(values, statistic=statistic, n_resamples=n_resamples, seed=seed), level
    )


def statistic_of(values: Sequence[float] | NDArray[np.float64], statistic: str) -> float:
    """The mean or median of ``values`` (median of an even count: midpoint of the two middle values)."""
    _check_statistic(statistic)
    v = np.sort(np.asarray(values, dtype=np.float64))
    if statistic == "median":
        return _median_of_sorted(v)
    with np.errstate(invalid="ignore"):
        return float(np.mean(v))


def estimate(
    values: Sequence[float] | NDArray[np.float64],
    *,
    statistic: str = "mean",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate:
    """The statistic of ``values`` with its bootstrap interval; all None for no values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return Estimate(None, None, None, 0, statistic)
    lo, hi = bootstrap_ci(v, statistic=statistic, n_resamples=n_resamples, seed=seed, level=level)
    return Estimate(statistic_of(v, statistic), lo, hi, len(v), statistic)


@dataclass(frozen=True)
class PairedDiff:
    """``statistic(a) - statistic(b)`` over the same cases, with its paired bootstrap interval.

    ``share_positive`` is the share of resamples with a positive difference.
    """

    diff: float | None
    lo: float | None
    hi: float | None
    n: int
    statistic: str
    share_positive: float | None

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _diff(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    # Equal statistics (including both +inf: both medians are failures) differ by 0, not NaN.
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, a - b)


def _row_stat(sample: NDArray[np.float64], statistic: str) -> NDArray[np.float64]:
    if statistic == "mean":
        with np.errstate(invalid="ignore"):
            return sample.mean(axis=1)
    s = np.sort(sample, axis=1)
    n = s.shape[1]
    a, b = s[:, (n - 1) // 2], s[:, n // 2]
    with np.errstate(invalid="ignore"):
        return np.where(a == b, a, (a + b) / 2.0)


def paired_bootstrap(
    a: Sequence[float] | NDArray[np.float64],
    b: Sequence[float] | NDArray[np.float64],
    *,
    statistic: str = "mean",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> PairedDiff:
    """Paired bootstrap of ``statistic(a) - statistic(b)``; a[i] and b[i] are two systems on case i.

    Each resample draws cases (indices floor(u * n), as :func:`resample_statistics`, but in the given order:
    the pairs must stay together) and takes the difference of the two statistics.
    """
    _check_statistic(statistic)
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape or va.ndim != 1:
        raise ValueError(
            f"paired bootstrap needs two 1-D arrays of equal length, got {va.shape} and {vb.shape}"
        )
    n = len(va)
    if n == 0:
        return PairedDiff(None, None, None, 0, statistic, None)
    reps = np.empty(n_resamples, dtype=np.float64)
    pos = 0
    for idx in _index_chunks(n, n_resamples, seed, _CHUNK_ENTRIES):
        reps[pos : pos + len(idx)] = _diff(_row_stat(va[idx], statistic), _row_stat(vb[idx], statistic))
        pos += len(idx)
    lo, hi = percentile_interval(reps, level)
    diff = float(_diff(np.array([statistic_of(va, statistic)]), np.array([statistic_of(vb, statistic)]))[0])
    return PairedDiff(diff, lo, hi, n, statistic, float(np.mean(reps > 0)))
