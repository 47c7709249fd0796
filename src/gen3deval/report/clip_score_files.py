"""The files of the public Toys4k CLIP-score script, written by ``gen3deval score`` so its users can switch.

- ``clip_scores.csv``: one row per asset (case), in suite order: ``sha256``, ``file_identifier``,
  ``category``, ``aesthetic_score``, ``clip_score`` (the raw cosine, mean over the 8 views), ``num_views_rendered``,
  ``success``, ``caption_used``, ``error``; then one column per other requested metric.
- ``clip_summary.json``: ``mean_clip_score`` (mean over the successful assets, as the script), its x100
  ``mean_clip_score_scaled``, ``total_assets``, ``successful_evaluations``, ``success_rate``, and what the
  script did not say: the seeded bootstrap 95% interval of the mean, the all-assets mean with failures scored
  at the metric's worst (-1 for a cosine), the background, the caption choice, the CLIP model and the protocol fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gen3deval.report.bootstrap import estimate
from gen3deval.report.jsonio import dumps, write_text_atomic
from gen3deval.report.tables import to_csv
from gen3deval.suites.base import Case

CSV_NAME = "clip_scores.csv"
SUMMARY_NAME = "clip_summary.json"
COLUMNS = (
    "sha256",
    "file_identifier",
    "category",
    "aesthetic_score",
    "clip_score",
    "num_views_rendered",
    "success",
    "caption_used",
    "error",
)


def _value(row: Mapping[str, Any] | None, key: str) -> float | None:
    v = None if row is None else row.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def asset_rows(
    cases: Sequence[tuple[str, Case]], rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One CSV row per case ``(key, Case)``: its result row's ``metrics`` (the first is the headline), or the
    reason it has none (unfinished pipelines, failures)."""
    by_case = {str(r["case"]): r for r in rows}
    headline = metrics[0] if metrics else "clip_score"
    out = []
    for key, case in cases:
        r = by_case.get(key)
        meta = case.meta or {}
        score = _value(r, headline)
        if r is None:
            error = "not scored yet (unfinished run)"
        elif r.get("error_class"):
            error = f"[{r['error_class']}] {r.get('error') or ''}".strip()
        elif score is None:
            error = str(r.get(f"{headline}_reason") or r.get("error") or f"no {headline}")
        else:
            error = ""
        renders = ((r or {}).get("artifacts") or {}).get("renders") or []
        item: dict[str, Any] = {
            "sha256": meta.get("sha256", ""),
            "file_identifier": meta.get("file_identifier", case.id),
            "category": case.category,
            "aesthetic_score": meta.get("aesthetic_score"),
            "clip_score": _value(r, "clip_score"),
            "num_views_rendered": len(renders),
            "success": score is not None,
            "caption_used": case.caption or case.prompt or "",
            "error": error,
        }
        for m in metrics:
            if m not in item:
                item[m] = _value(r, m)
        out.append(item)
    return out


def summary(
    assets: Sequence[Mapping[str, Any]], metric: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The summary JSON of ``assets`` (from :func:`asset_rows`) for ``metric`` (``_scaled``: x100)."""
    from gen3deval.metrics.base import metric_info

    worst = metric_info(metric).worst
    ok = [float(a[metric]) for a in assets if a.get(metric) is not None]
    est = estimate(ok)
    every = estimate([float(a[metric]) if a.get(metric) is not None else worst for a in assets])
    n = len(assets)
    scaled = None if est.value is None else est.value * 100.0
    return {
        f"mean_{metric}": est.value,
        f"mean_{metric}_scaled": scaled,
        "total_assets": n,
        "successful_evaluations": len(ok),
        "success_rate": len(ok) / n if n else 0.0,
        "ci95": [est.lo, est.hi],
        "ci95_scaled": [None if x is None else x * 100.0 for x in (est.lo, est.hi)],
        f"mean_{metric}_all_assets": every.value,
        "all_assets_failures_scored": worst,
        "statistic": "mean over successful assets; interval: seeded percentile bootstrap over assets",
        **dict(extra or {}),
    }


def write_clip_score_files(
    run_dir: str | Path,
    cases: Sequence[tuple[str, Case]],
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``clip_scores.csv`` and ``clip_summary.json`` into ``run_dir``; returns their paths."""
    out = Path(run_dir)
    assets = asset_rows(cases, rows, metrics)
    columns = list(COLUMNS) + [m for m in metrics if m not in COLUMNS]
    csv_path, json_path = out / CSV_NAME, out / SUMMARY_NAME
    write_text_atomic(csv_path, to_csv(assets, columns))
    headline = metrics[0] if metrics else "clip_score"
    write_text_atomic(json_path, dumps(summary(assets, headline, extra), indent=2) + "\n")
    return csv_path, json_path
