"""CSV and markdown tables from a summary (:func:`gen3deval.report.aggregate.summarize`).

CSV files carry raw values (no display scaling): numbers at full precision, ``inf`` for +infinity, an empty
cell for no value. Metric columns are ``KEY:valid``, ``KEY:valid_lo``, ``KEY:valid_hi``, ``KEY:n_valid``,
``KEY:all``, ``KEY:all_lo``, ``KEY:all_hi``, ``KEY:all_n`` (failures included), ``KEY:statistic`` (``mean`` or
``median``, the same for both), ``KEY:worst`` (what a failure scores) and ``KEY:n_undefined`` (valid cases where
the metric is undefined, e.g. IoU of two open surfaces). Text cells (system, category, error class) that start
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a leading ``'`` so a spreadsheet shows them as
text instead of running them as a formula; numbers (``-0.5``) stay numbers.
Markdown files show display names and display scaling (``CD x10^3`` = chamfer_l2 x 1000), ``value [lo, hi]``
with the 95% bootstrap interval, n_valid/n, and name the statistic in every column header.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gen3deval.report.aggregate import column_label, worst_label
from gen3deval.report.bootstrap import Estimate
from gen3deval.report.jsonio import write_text_atomic


def fmt(value: float | None, scale: float = 1.0, *, inf: str = "inf") -> str:
    """A number for display: 3 decimals below 10, 2 below 100, 1 above; ``inf`` for infinity; "-" for none."""
    if value is None:
        return "-"
    if math.isinf(value):
        return inf if value > 0 else f"-{inf}"
    x = value * scale
    if abs(x) < 10:
        return f"{x:.3f}"
    if abs(x) < 100:
        return f"{x:.2f}"
    return f"{x:.1f}"


def fmt_estimate(est: Estimate, scale: float = 1.0, *, inf: str = "inf") -> str:
    """``value [lo, hi]`` (or ``-`` when there are no cases)."""
    if est.value is None:
        return "-"
    return f"{fmt(est.value, scale, inf=inf)} [{fmt(est.lo, scale, inf=inf)}, {fmt(est.hi, scale, inf=inf)}]"


class _Literal(str):
    """A CSV cell that is a number written as text (``inf``): never formula-escaped."""


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text starting with a formula character gets a leading ``'``;
    numbers (int/float, and :class:`_Literal`) are returned unchanged."""
    if isinstance(value, str) and not isinstance(value, _Literal) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _raw(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return _Literal("inf" if value > 0 else "-inf")
        return value
    return value


def _metric_cells(metrics: Mapping[str, Mapping[str, Any]], infos: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, info in infos.items():
        valid, every = metrics[key]["valid"], metrics[key]["all"]
        out[f"{key}:valid"] = _raw(valid.value)
        out[f"{key}:valid_lo"] = _raw(valid.lo)
        out[f"{key}:valid_hi"] = _raw(valid.hi)
        out[f"{key}:n_valid"] = valid.n
        out[f"{key}:all"] = _raw(every.value)
        out[f"{key}:all_lo"] = _raw(every.lo)
        out[f"{key}:all_hi"] = _raw(every.hi)
        out[f"{key}:all_n"] = every.n
        out[f"{key}:statistic"] = info["statistic"]
        out[f"{key}:worst"] = _raw(float(info["worst"]))
        out[f"{key}:n_undefined"] = metrics[key].get("undefined", 0)
    return out


def leaderboard_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per system, in rank order, with VSR, every metric and the paired difference to the best."""
    infos = summary["metrics"]
    rows = []
    for s in summary["systems"]:
        vs = s.get("vs_best") or {}
        rows.append(
            {
                "rank": s["rank"],
                "system": s["system"],
                "n": s["n"],
                "n_executable": s["n_executable"],
                "vsr": _raw(s["vsr"].value),
                "vsr_lo": _raw(s["vsr"].lo),
                "vsr_hi": _raw(s["vsr"].hi),
                **_metric_cells(s["metrics"], infos),
                "headline": summary.get("headline") or "",
                "vs_best_system": vs.get("system", ""),
                "vs_best_diff": _raw(vs.get("diff")),
                "vs_best_lo": _raw(vs.get("lo")),
                "vs_best_hi": _raw(vs.get("hi")),
                "vs_best_n": vs.get("n", ""),
                "vs_best_significant": vs.get("significant", ""),
            }
        )
    return rows


def per_category_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per (system, category)."""
    infos = summary["metrics"]
    return [
        {
            "system": c["system"],
            "category": c["category"],
            "n": c["n"],
            "n_executable": c["n_executable"],
            "vsr": _raw(c["vsr"].value),
            "vsr_lo": _raw(c["vsr"].lo),
            "vsr_hi": _raw(c["vsr"].hi),
            **_metric_cells(c["metrics"], infos),
        }
        for c in summary["per_category"]
    ]


def error_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per (system, error class seen anywhere in the run), count 0 included, with the system's
    n and n_executable; share = count / n. A run without failures has one row per system with no class."""
    classes = sorted({cls for s in summary["systems"] for cls in s["errors"]}) or [""]
    rows: list[dict[str, Any]] = []
    for s in summary["systems"]:
        for cls in classes:
            count = s["errors"].get(cls, 0)
            rows.append(
                {
                    "system": s["system"],
                    "n": s["n"],
                    "n_executable": s["n_executable"],
                    "error_class": cls,
                    "count": count,
                    "share": _raw(count / s["n"]) if s["n"] else "",
                }
            )
    return rows


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text with a header (columns default to the first row's keys); text cells pass :func:`csv_cell`."""
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writerow({c: csv_cell(c) for c in cols})
    for r in rows:
        writer.writerow({c: csv_cell(r.get(c, "")) for c in cols})
    return buf.getvalue()


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; ``|`` in cells is escaped."""
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _vsr_cell(s: Mapping[str, Any]) -> str:
    return f"{fmt_estimate(s['vsr'])} ({s['n_executable']}/{s['n']})"


def _valid_cell(m: Mapping[str, Any], scale: float) -> str:
    """``value [lo, hi] (n_valid/n)``, plus ``, k undefined`` when the metric was undefined for k cases."""
    valid, every = m["valid"], m["all"]
    und = f", {m['undefined']} undefined" if m.get("undefined") else ""
    return f"{fmt_estimate(valid, scale)} ({valid.n}/{every.n}{und})"


def leaderboard_markdown(summary: Mapping[str, Any]) -> str:
    """The leaderboard: per metric a valid-only and an all-cases column, both with the metric's statistic."""
    infos = summary["metrics"]
    headers = ["#", "system", "VSR"]
    for info in infos.values():
        headers += [column_label(info, "valid"), column_label(info, "all")]
    rows = []
    for s in summary["systems"]:
        row: list[Any] = [s["rank"], s["system"], _vsr_cell(s)]
        for key, info in infos.items():
            scale = info["scale"]
            row += [_valid_cell(s["metrics"][key], scale), fmt_estimate(s["metrics"][key]["all"], scale)]
        rows.append(row)
    return markdown_table(headers, rows)


def per_category_markdown(summary: Mapping[str, Any]) -> str:
    """Per category and system: VSR and, for each metric, valid-only and all-cases aggregates."""
    infos = summary["metrics"]
    headers = ["category", "system", "VSR"]
    for info in infos.values():
        headers += [column_label(info, "valid"), column_label(info, "all")]
    rows = []
    for c in sorted(summary["per_category"], key=lambda c: (c["category"], c["system"])):
        row: list[Any] = [c["category"], c["system"], _vsr_cell(c)]
        for key, info in infos.items():
            scale = info["scale"]
            row += [_valid_cell(c["metrics"][key], scale), fmt_estimate(c["metrics"][key]["all"], scale)]
        rows.append(row)
    return markdown_table(headers, rows)


def errors_markdown(summary: Mapping[str, Any]) -> str:
    """VSR and the error-class histogram per system."""
    classes = sorted({cls for s in summary["systems"] for cls in s["errors"]})
    headers = ["system", "n", "executable", "VSR", *classes]
    rows = [
        [
            s["system"],
            s["n"],
            s["n_executable"],
            fmt_estimate(s["vsr"]),
            *[s["errors"].get(c, 0) for c in classes],
        ]
        for s in summary["systems"]
    ]
    return markdown_table(headers, rows)


def suite_label(meta: Mapping[str, Any]) -> str:
    """The suite as one line: ``meta["suite"]`` is a string or a dict with ``name``/``description``."""
    suite = meta.get("suite", "?")
    if isinstance(suite, Mapping):
        return str(suite.get("description") or suite.get("name") or "?")
    return str(suite)


def _md_header(summary: Mapping[str, Any], meta: Mapping[str, Any], title: str) -> str:
    raw = meta.get("protocol")
    proto: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    boot = summary["bootstrap"]
    return (
        f"# {title}\n\n"
        f"Run `{meta.get('run_id', '?')}`, suite {suite_label(meta)}, protocol "
        f"`{proto.get('name', '?')}` v{proto.get('version', '?')} (fingerprint `{proto.get('hash', '?')}`), "
        f"attempts: {summary['attempts']}.\n"
        f"Intervals: 95% percentile bootstrap over cases ({boot['n_resamples']} resamples, seed {boot['seed']}). "
        "Each metric has one statistic (mean, or median for unbounded distances), used for both columns: "
        "(valid) over the cases with a valid candidate (n_valid/n), (all) over every case with failures scored "
        f"the metric's worst value ({_worsts(summary)}), so (all) is never better than (valid). "
        "'undefined': valid cases where the metric has no meaning (e.g. IoU of two open surfaces), in neither.\n\n"
    )


def _worsts(summary: Mapping[str, Any]) -> str:
    return (
        ", ".join(f"{info['display']} = {worst_label(info)}" for info in summary["metrics"].values()) or "-"
    )


def write_tables(run_dir: Path, summary: Mapping[str, Any], meta: Mapping[str, Any]) -> list[Path]:
    """Write leaderboard/per_category/errors as .csv and .md into ``run_dir``; returns the paths."""
    out: list[Path] = []
    for name, rows in (
        ("leaderboard", leaderboard_rows(summary)),
        ("per_category", per_category_rows(summary)),
        ("errors", error_rows(summary)),
    ):
        path = run_dir / f"{name}.csv"
        write_text_atomic(path, to_csv(rows) if rows else to_csv([], _EMPTY_COLUMNS[name]))
        out.append(path)
    for name, title, body in (
        ("leaderboard", "Leaderboard", leaderboard_markdown(summary)),
        ("per_category", "Per category", per_category_markdown(summary)),
        ("errors", "Executability and errors", errors_markdown(summary)),
    ):
        path = run_dir / f"{name}.md"
        write_text_atomic(path, _md_header(summary, meta, title) + body)
        out.append(path)
    return out


_EMPTY_COLUMNS = {
    "leaderboard": ["rank", "system", "n", "n_executable", "vsr", "vsr_lo", "vsr_hi"],
    "per_category": ["system", "category", "n", "n_executable", "vsr", "vsr_lo", "vsr_hi"],
    "errors": ["system", "n", "n_executable", "error_class", "count", "share"],
}
