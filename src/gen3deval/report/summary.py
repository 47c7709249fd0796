"""The whole summary of a run: per-system and per-category aggregates, ranking, paired differences to the
best system, error classes, failures, warnings and, when a run has several attempts, single vs final.

:func:`summarize` returns plain data (JSON-ready up to non-finite floats and :class:`Estimate` records) that
the CSV/markdown tables, ``summary.json``, the HTML page and the terminal leaderboard all read. The
statistics are defined in :mod:`gen3deval.report.aggregate` and :mod:`gen3deval.report.bootstrap`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gen3deval.report.aggregate import (
    HEADLINE_ORDER,
    aggregate_metric,
    error_histogram,
    max_attempt,
    metric_columns,
    metric_infos,
    select_attempts,
    vsr,
)
from gen3deval.report.bootstrap import LEVEL, N_RESAMPLES, SEED, Estimate, paired_bootstrap
from gen3deval.report.remote_jobs import attach_system_stats
from gen3deval.report.revision import attach_revision

__all__ = ["choose_headline", "summarize"]


def choose_headline(infos: Mapping[str, Any], requested: str | None = None) -> str | None:
    """The headline metric: ``requested`` when the run has it, else the first of HEADLINE_ORDER present."""
    if requested and requested in infos:
        return requested
    for key in HEADLINE_ORDER:
        if key in infos:
            return key
    return next(iter(infos), None)


def _better_key(est: Estimate, higher_is_better: bool) -> float:
    """Sort key: smaller is better."""
    if est.value is None:
        return math.inf
    return -est.value if higher_is_better else est.value


def _by_system(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        out[str(r["system"])].append(r)
    return out


def summarize(
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    *,
    attempts: str = "single",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    headline: str | None = None,
) -> dict[str, Any]:
    """Everything the tables and the HTML show, as plain data.

    Keys: ``attempts``, ``bootstrap``, ``metrics`` ({key: info}, the headline first), ``headline``,
    ``systems`` (ranked, each with ``vsr``, ``errors``, ``metrics`` {key: {"valid", "all", "undefined"}},
    ``vs_best``, and ``remote`` / ``mesh_stats``: None unless the system ran remote jobs / delivered meshes
    with statistics, see :mod:`gen3deval.report.remote_jobs`; ``revision`` / ``usage``: None unless the
    system made several attempts / model calls, see :mod:`gen3deval.report.revision`), ``per_category``, ``errors``, ``failures``,
    ``warnings``, ``max_attempt`` and ``attempt_modes`` (None unless some row has attempt > 1).
    """
    # The headline decides best@<=k, so it is chosen on every row first.
    all_infos = metric_infos(rows, meta)
    head = choose_headline(all_infos, headline or meta.get("headline"))
    hib_head = all_infos[head]["higher_is_better"] if head else True
    selected = select_attempts(rows, attempts, key=head, higher_is_better=hib_head)
    infos = metric_infos(selected, meta)
    if head in infos:  # the ranking metric is the first column everywhere
        infos = {head: infos[head], **{k: v for k, v in infos.items() if k != head}}
    else:
        head = choose_headline(infos, headline or meta.get("headline"))
    kw: dict[str, Any] = {"n_resamples": n_resamples, "seed": seed, "level": level}

    by_system = _by_system(selected)
    order = [str(s) for s in meta.get("systems") or [] if str(s) in by_system]
    order += sorted(s for s in by_system if s not in order)

    systems: list[dict[str, Any]] = []
    for name in order:
        srows = by_system[name]
        systems.append(
            {
                "system": name,
                "n": len(srows),
                "n_executable": sum(1 for r in srows if r.get("executable")),
                "vsr": vsr(srows, **kw),
                "errors": error_histogram(srows),
                "metrics": {k: aggregate_metric(srows, k, info, **kw) for k, info in infos.items()},
            }
        )

    def rank_key(s: dict[str, Any]) -> tuple[float, float, str]:
        head_key = _better_key(s["metrics"][head]["all"], infos[head]["higher_is_better"]) if head else 0.0
        return (head_key, -(s["vsr"].value or 0.0), s["system"])

    systems.sort(key=rank_key)
    for i, s in enumerate(systems, start=1):
        s["rank"] = i
        s["vs_best"] = None
    # Remote jobs and mesh statistics count every attempt (each one is a job that ran).
    attach_system_stats(systems, rows, meta)
    # Revision (single / final@k / best@<=k of every metric, recovery) and model-call totals: every attempt.
    attach_revision(systems, rows, all_infos, head, kw)
    if head and len(systems) > 1:
        _paired_to_best(systems, by_system, head, infos[head], kw)

    per_category: list[dict[str, Any]] = []
    for s in systems:
        by_cat: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in by_system[s["system"]]:
            by_cat[str(r.get("category") or "default")].append(r)
        for cat in sorted(by_cat):
            crows = by_cat[cat]
            per_category.append(
                {
                    "system": s["system"],
                    "category": cat,
                    "n": len(crows),
                    "n_executable": sum(1 for r in crows if r.get("executable")),
                    "vsr": vsr(crows, **kw),
                    "metrics": {k: aggregate_metric(crows, k, info, **kw) for k, info in infos.items()},
                }
            )

    errors = [
        {
            "system": s["system"],
            "error_class": cls,
            "count": count,
            "share": count / s["n"] if s["n"] else None,
        }
        for s in systems
        for cls, count in s["errors"].items()
    ]
    failures = [
        {
            "case": str(r["case"]),
            "category": str(r.get("category") or "default"),
            "system": str(r["system"]),
            "attempt": int(r.get("attempt") or 1),
            "error_class": str(r.get("error_class") or "unknown"),
            "error": str(r.get("error") or ""),
        }
        for r in sorted(selected, key=lambda r: (str(r["case"]), str(r["system"])))
        if not r.get("executable")
    ]
    k_max = max_attempt(rows)
    return {
        "attempts": attempts,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": level, "method": "percentile"},
        "metrics": infos,
        "headline": head,
        "systems": systems,
        "per_category": per_category,
        "errors": errors,
        "failures": failures,
        "warnings": _warnings(rows, selected, meta, order, by_system),
        "max_attempt": k_max,
        "attempt_modes": (
            attempt_modes(rows, all_infos, head, [s["system"] for s in systems], **kw) if k_max > 1 else None
        ),
    }


def _paired_to_best(
    systems: list[dict[str, Any]],
    by_system: Mapping[str, Sequence[Mapping[str, Any]]],
    head: str,
    info: Mapping[str, Any],
    kw: Mapping[str, Any],
) -> None:
    """Set ``vs_best`` of every system but the first: paired bootstrap of the headline over common cases."""
    best = systems[0]
    hib = info["higher_is_better"]
    best_ids, best_vals, _, _ = metric_columns(by_system[best["system"]], head, info["worst"], hib)
    best_map = dict(zip(best_ids, best_vals, strict=True))
    for s in systems[1:]:
        ids, vals, _, _ = metric_columns(by_system[s["system"]], head, info["worst"], hib)
        common = [(v, best_map[i]) for i, v in zip(ids, vals, strict=True) if i in best_map]
        a = np.asarray([c[0] for c in common], dtype=np.float64)
        b = np.asarray([c[1] for c in common], dtype=np.float64)
        s["vs_best"] = {
            "system": best["system"],
            "metric": head,
            **paired_bootstrap(a, b, statistic=info["statistic"], **kw).to_dict(),
        }


def attempt_modes(
    rows: Sequence[Mapping[str, Any]],
    infos: Mapping[str, Any],
    head: str | None,
    systems: Sequence[str],
    **kw: Any,
) -> list[dict[str, Any]]:
    """Single-shot vs final (and the best@<=K oracle diagnostic) per system: VSR and the headline metric.

    Returns [{"mode", "label", "systems": {name: {"n", "n_executable", "vsr", "headline"}}}], modes
    ``single``, ``final`` and ``best@<=K`` (K = the largest attempt).
    """
    k = max_attempt(rows)
    hib = infos[head]["higher_is_better"] if head else True
    out: list[dict[str, Any]] = []
    for mode, label in (
        ("single", "single (attempt 1)"),
        ("final", f"final (last attempt, up to {k})"),
        (f"best@<={k}", f"best@<={k} (best attempt by the metric: an oracle diagnostic)"),
    ):
        picked = _by_system(select_attempts(rows, mode, key=head, higher_is_better=hib))
        per: dict[str, Any] = {}
        for name in systems:
            srows = picked.get(name, [])
            per[name] = {
                "n": len(srows),
                "n_executable": sum(1 for r in srows if r.get("executable")),
                "vsr": vsr(srows, **kw),
                "headline": aggregate_metric(srows, head, infos[head], **kw) if head else None,
            }
        out.append({"mode": mode, "label": label, "systems": per})
    return out


def _warnings(
    rows: Sequence[Mapping[str, Any]],
    selected: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    order: Sequence[str],
    by_system: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[str]:
    out: list[str] = []
    hashes = {str((r.get("protocol") or {}).get("hash")) for r in rows if isinstance(r.get("protocol"), dict)}
    if len(hashes) > 1:
        out.append(
            f"rows carry {len(hashes)} different protocol fingerprints ({', '.join(sorted(hashes))}): "
            "their scores are not comparable"
        )
    meta_hash = (meta.get("protocol") or {}).get("hash") if isinstance(meta.get("protocol"), dict) else None
    if meta_hash and hashes and hashes != {str(meta_hash)}:
        out.append(
            f"the run's protocol fingerprint {meta_hash} differs from the rows' ({', '.join(sorted(hashes))})"
        )
    cases = {str(r["case"]) for r in selected}
    for name in order:
        missing = len(cases - {str(r["case"]) for r in by_system[name]})
        if missing:
            out.append(f"system {name!r} has no result for {missing} of {len(cases)} cases (run incomplete?)")
    for name in meta.get("systems") or []:
        if str(name) not in by_system:
            out.append(f"system {name!r} has no results")
    if meta.get("unfinished"):
        out.append(f"{meta['unfinished']} case/system pipelines are unfinished and not in this report")
    skipped = meta.get("skipped_metrics") or {}
    for why in dict.fromkeys(skipped.values()):
        out.append(f"skipped {', '.join(k for k, w in skipped.items() if w == why)}: {why}")
    if rows and not selected:
        out.append("no row is selected by the attempt mode (no attempt 1?): nothing to aggregate")
    return out
