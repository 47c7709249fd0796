"""The compact leaderboard ``gen3deval run`` prints at the end (before the report path).

One line per system, in rank order: rank, system, the ranking metric over all cases (failures scored the
metric's worst value) and over valid cases only, VSR with executable/n, and the undefined count when the
ranking metric was undefined somewhere. Plain text (no colours), control characters in names replaced.
Works on :func:`gen3deval.report.summary.summarize`'s result and on ``summary.json`` read back
(:func:`gen3deval.report.jsonio.read_summary`), where estimates are dicts and infinities are null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gen3deval.report.aggregate import worst_label
from gen3deval.report.tables import fmt

MAX_NAME = 32


def _clean(text: Any) -> str:
    """``text`` on one line, without control characters (a system name must not drive the terminal)."""
    s = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return s if len(s) <= MAX_NAME else s[: MAX_NAME - 3] + "..."


def _value(est: Any, info: Mapping[str, Any] | None = None, scale: float = 1.0) -> str:
    """An Estimate (or its summary.json dict) as text; a null with n > 0 from summary.json is the infinitely
    bad value (JSON has no infinity)."""
    get = est.get if isinstance(est, Mapping) else lambda k: getattr(est, k, None)
    value, n = get("value"), get("n") or 0
    if value is None and n and info is not None:
        return "inf" if not info["higher_is_better"] else "-inf"
    return fmt(None if value is None else float(value), scale)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def leaderboard_lines(summary: Mapping[str, Any]) -> list[str]:
    """The leaderboard of a :func:`gen3deval.report.summary.summarize` result as lines of text."""
    systems = summary.get("systems") or []
    if not systems:
        return ["leaderboard: no results"]
    infos = summary.get("metrics") or {}
    head = summary.get("headline")
    info = infos.get(head) if head else None
    n_cases = max(int(s["n"]) for s in systems)
    header = ["#", "system"]
    if info:
        header += [f"{info['display']} {info['statistic']} (all)", "(valid)"]
        title = (
            f"leaderboard: {n_cases} case{'' if n_cases == 1 else 's'}, ranked by {info['display']} ({head}), the {info['statistic']} "
            f"over all cases with failures = {worst_label(info)} "
            f"({'higher' if info['higher_is_better'] else 'lower'} is better); "
            f"attempts: {summary.get('attempts', 'single')}"
        )
    else:
        title = (
            f"leaderboard: {n_cases} case{'' if n_cases == 1 else 's'}, no metric has a value (ranked by VSR)"
        )
    header += ["VSR", "executable"]
    any_undefined = bool(info) and any(s["metrics"][head].get("undefined") for s in systems)
    if any_undefined:
        header.append("undefined")
    rows: list[list[str]] = []
    for s in systems:
        row = [str(s["rank"]), _clean(s["system"])]
        if info:
            m = s["metrics"][head]
            row += [_value(m["all"], info, info["scale"]), _value(m["valid"], info, info["scale"])]
        row += [_value(s["vsr"]), f"{s['n_executable']}/{s['n']}"]
        if any_undefined:
            row.append(str(s["metrics"][head].get("undefined", 0)))
        rows.append(row)
    return [title, *("  " + ln for ln in _table(header, rows, left=2))]


__all__ = ["leaderboard_lines"]
