"""Reports: statistics over result rows, CSV/markdown tables and one self-contained HTML page.

``write_reports(run_dir, rows, meta)`` writes into ``run_dir``:

- ``results.jsonl``: the rows, sorted by (case, system, attempt), one JSON object a line;
- ``summary.json``: ``meta``, the aggregates (valid-only and all-cases with the metric's own statistic, 95%
  bootstrap intervals, undefined counts), VSR, error classes, paired differences to the best system,
  failures, warnings and, for runs with several attempts, single vs final and per system a ``revision``
  block (single / final@k / best@<=k of every metric, executability recovery) and model-call ``usage``;
- ``leaderboard.csv``, ``per_category.csv``, ``errors.csv`` and their ``.md`` versions;
- ``report.html``: the page (returned).

Non-finite numbers in the JSON files are ``null`` (strict JSON has no infinity, and numbers stay numbers):
a null statistic with ``n > 0`` is infinitely bad (see :mod:`gen3deval.report.jsonio`). In CSV: ``inf`` and
an empty cell for no value; text cells that a spreadsheet would run as a formula are escaped.
Aggregation rules are in :mod:`gen3deval.report.aggregate`; the terminal leaderboard of ``gen3deval run`` is
:func:`gen3deval.report.terminal.leaderboard_lines`. Row and meta formats: the engine/report contract
(a row per case x system x attempt with ``case``, ``category``, ``system``, ``attempt``, ``executable``,
``error_class``, ``error``, metric keys, ``artifacts``, ``protocol``; meta with ``run_id``, ``created``, ``suite``,
``systems``, ``protocol``, ``n_cases``, ``metrics``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gen3deval.report.aggregate import select_attempts
from gen3deval.report.bootstrap import N_RESAMPLES, SEED, Estimate, PairedDiff, bootstrap_ci, paired_bootstrap
from gen3deval.report.jsonio import dumps, read_results, write_jsonl, write_text_atomic
from gen3deval.report.summary import summarize

__all__ = [
    "Estimate",
    "PairedDiff",
    "bootstrap_ci",
    "paired_bootstrap",
    "read_results",
    "sort_rows",
    "summarize",
    "write_reports",
]

_REQUIRED = ("case", "system")


def sort_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated copies of ``rows`` sorted by (case, system, attempt); ``category`` defaults to "default",
    ``attempt`` to 1. Raises ValueError naming the row index and the missing key."""
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"results row {i} is a {type(row).__name__}, expected a dict")
        for key in _REQUIRED:
            if row.get(key) is None or str(row[key]) == "":
                raise ValueError(f"results row {i} has no {key!r}: {dict(row)!r:.200}")
        r = dict(row)
        r["case"], r["system"] = str(r["case"]), str(r["system"])
        r["category"] = str(r.get("category") or "default")
        try:
            r["attempt"] = int(r.get("attempt") or 1)
        except (TypeError, ValueError):
            raise ValueError(f"results row {i} has a non-integer attempt {r.get('attempt')!r}") from None
        r["executable"] = bool(r.get("executable"))
        out.append(r)
    out.sort(key=lambda r: (r["case"], r["system"], r["attempt"]))
    keys = [(r["case"], r["system"], r["attempt"]) for r in out]
    dup = next((a for a, b in itertools.pairwise(keys) if a == b), None)
    if dup is not None:
        raise ValueError(f"duplicate results row for case {dup[0]!r}, system {dup[1]!r}, attempt {dup[2]}")
    return out


def write_reports(
    run_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    *,
    attempts: str = "single",
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    headline: str | None = None,
) -> Path:
    """Write results.jsonl, summary.json, the CSV/markdown tables and report.html; return report.html's path.

    Args:
        run_dir: the run folder (created if needed); artifact paths in rows are relative to it.
        rows: results rows (the engine/report contract), any order.
        meta: run metadata; ``meta["metrics"]`` gives display names and directions.
        attempts: which attempt of each case the leaderboard uses: ``single`` (attempt 1), ``final`` (the
            last), ``final@k`` (the last <= k) or ``best@<=k`` (the best <= k by the headline; a diagnostic).
        n_resamples, seed: bootstrap settings (defaults: 10,000 and 0, PROTOCOLS.md section 10).
        headline: metric to rank by (default: ``meta["headline"]`` or the first of best_iou, volume_iou, F@2 ...).
    """
    from gen3deval.report.html import write_html
    from gen3deval.report.tables import write_tables

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = sort_rows(rows)
    write_jsonl(out / "results.jsonl", ordered)
    summary = summarize(
        ordered, meta, attempts=attempts, n_resamples=n_resamples, seed=seed, headline=headline
    )
    from gen3deval.report.compat import compat_block

    block = compat_block(ordered, summary)  # gencad runs: the numbers as mecagent reports them, labelled
    if block:
        summary["compat"] = {"mecagent": block}
    doc = {
        "format": "gen3deval-summary/2",
        "non_finite": "written as null; a statistic of null with n > 0 (or a worst of null) is infinitely bad",
        "meta": meta,
        **summary,
    }
    write_text_atomic(out / "summary.json", dumps(doc, indent=2) + "\n")
    write_tables(out, summary, meta)
    head = summary.get("headline")
    hib = bool(summary["metrics"][head]["higher_is_better"]) if head else True
    picked = select_attempts(ordered, attempts, key=head, higher_is_better=hib)
    return write_html(out, picked, summary, meta, all_rows=ordered)
