"""Iterative revision with a fixed budget k (issue 11, item 5): per system, and per category, the
``single`` (attempt 1), ``final`` (attempt k) and ``best`` (best@<=k) aggregates of every metric, the
executability recovery curve, and the model's token / cost / latency totals.

Definitions (PROTOCOLS.md section 10), per system with k = its largest attempt:

- ``single``: each case's attempt 1; ``final``: each case's last attempt <= k (attempt k when the run is
  complete); ``best``: each case's best attempt <= k by the ranking metric (executable first, then the value in
  the metric's direction, then the earliest): an **oracle diagnostic** (it peeks at the score), never a score.
  Every metric of a mode is aggregated on the same picked rows with :func:`aggregate_metric` (the metric's own
  statistic, ``valid`` and ``all`` with failures = the metric's worst), and VSR beside it.
- ``recovery[i-1]`` (executability recovery, PROTOCOLS.md section 10): the share of the system's cases with an
  executable program at some attempt <= i (cumulative: it never falls); ``executable_at[i-1]``: the share whose
  attempt i itself is executable (a revision can break a working program). A case without an attempt-i row
  counts as not executable at i.
- ``usage`` (every attempt: each is a model call): calls, prompt and completion tokens, cost (``usage.cost``
  when the endpoint reports it; None when no call reported one) and latency (median, p90) from
  ``row["remote"]`` (the vlm system's generate record).

:func:`attach_revision` adds ``revision`` (None for a single-attempt system) and ``usage`` (None without model
calls) to every system of a summary; :func:`revision_html` renders the section (the paper-style table, the
recovery curve as inline SVG, the totals and, per case, every attempt's render in a row).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gen3deval.report.aggregate import aggregate_metric, max_attempt, select_attempts, to_float, vsr
from gen3deval.report.remote_jobs import distribution

__all__ = ["attach_revision", "paper_metrics", "revision_block", "revision_html", "usage_summary"]

MODES = ("single", "final", "best")
# The paper-style table's metrics (Code3DBench: CD and F@5), first present of each group; else the ranking one.
_PAPER_GROUPS = (("chamfer_l2", "chamfer_l1"), ("fscore@0.05", "fscore@0.02", "fscore@0.01"), ("best_iou",))
MAX_ATTEMPT_CASES = 300
ATTEMPT_THUMB = 96
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _attempt(r: Mapping[str, Any]) -> int:
    return int(r.get("attempt") or 1)


def _pick(rows: Sequence[Mapping[str, Any]], mode: str, k: int, head: str | None, hib: bool) -> list[Any]:
    spec = {"single": "single", "final": f"final@{k}", "best": f"best@<={k}"}[mode]
    return select_attempts(rows, spec, key=head, higher_is_better=hib)


def _mode_stats(
    rows: Sequence[Mapping[str, Any]], infos: Mapping[str, Any], kw: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "n": len(rows),
        "n_executable": sum(1 for r in rows if r.get("executable")),
        "vsr": vsr(rows, **kw),
        "metrics": {key: aggregate_metric(rows, key, info, **kw) for key, info in infos.items()},
    }


def _curves(rows: Sequence[Mapping[str, Any]], k: int) -> tuple[list[float | None], list[float | None]]:
    """(recovery, executable_at): shares of the cases, one per attempt 1..k."""
    cases = sorted({str(r["case"]) for r in rows})
    ok = {(str(r["case"]), _attempt(r)) for r in rows if r.get("executable")}
    if not cases:
        return [None] * k, [None] * k
    now = [sum((c, i) in ok for c in cases) / len(cases) for i in range(1, k + 1)]
    by = [
        sum(any((c, j) in ok for j in range(1, i + 1)) for c in cases) / len(cases) for i in range(1, k + 1)
    ]
    return list(by), list(now)


def revision_block(
    rows: Sequence[Mapping[str, Any]],
    infos: Mapping[str, Any],
    head: str | None,
    kw: Mapping[str, Any],
    *,
    k: int | None = None,
    per_category: bool = True,
) -> dict[str, Any] | None:
    """The ``revision`` entry of one system's rows (every attempt); None when it made one attempt only.

    {"k", "n_cases", "ranking_metric", "recovery": [k shares], "executable_at": [k shares],
    "single" / "final" / "best": {"n", "n_executable", "vsr", "metrics": {key: {"valid", "all", "undefined"}}},
    "best_is": "oracle diagnostic ...", "per_category": {category: the same without per_category}}.
    ``k`` defaults to the largest attempt in ``rows`` (categories use their system's).
    """
    k = k or max_attempt(rows)
    if k <= 1:
        return None
    hib = bool(infos[head]["higher_is_better"]) if head and head in infos else True
    recovery, executable_at = _curves(rows, k)
    out: dict[str, Any] = {
        "k": k,
        "n_cases": len({str(r["case"]) for r in rows}),
        "ranking_metric": head,
        "recovery": recovery,
        "executable_at": executable_at,
    }
    for mode in MODES:
        out[mode] = _mode_stats(_pick(rows, mode, k, head, hib), infos, kw)
    out["best_is"] = f"oracle diagnostic: each case's best attempt <= {k} by {head or 'executability'}"
    if per_category:
        by_cat: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in rows:
            by_cat[str(r.get("category") or "default")].append(r)
        cats: dict[str, Any] = {}
        for cat in sorted(by_cat):
            cats[cat] = revision_block(by_cat[cat], infos, head, kw, k=k, per_category=False)
        out["per_category"] = cats
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def usage_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Model calls of one system (every attempt): {"calls", "prompt_tokens", "completion_tokens", "cost",
    "latency_s": {n, median, p90}, "finish_reasons": {reason: count}}; None when no row records a model call
    (``remote`` with token counts or a latency). Token and cost totals are None when no call reported them."""
    recs = [
        r["remote"]
        for r in rows
        if isinstance(r.get("remote"), Mapping)
        and any(key in r["remote"] for key in ("prompt_tokens", "completion_tokens", "latency_s"))
    ]
    if not recs:
        return None

    def total(key: str) -> float | None:
        vals = [v for v in (_num(x.get(key)) for x in recs) if v is not None]
        return float(sum(vals)) if vals else None

    reasons: dict[str, int] = defaultdict(int)
    for x in recs:
        reasons[str(x.get("finish_reason") or "unknown")] += 1
    tokens = {key: total(key) for key in ("prompt_tokens", "completion_tokens")}
    return {
        "calls": len(recs),
        "prompt_tokens": None if tokens["prompt_tokens"] is None else int(tokens["prompt_tokens"]),
        "completion_tokens": None
        if tokens["completion_tokens"] is None
        else int(tokens["completion_tokens"]),
        "cost": total("cost"),
        "latency_s": distribution(x.get("latency_s") for x in recs),
        "finish_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def attach_revision(
    systems: Sequence[dict[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    infos: Mapping[str, Any],
    head: str | None,
    kw: Mapping[str, Any],
) -> None:
    """Set ``revision`` and ``usage`` of every summary system from all its rows (every attempt)."""
    by_system: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_system[str(r["system"])].append(r)
    for s in systems:
        srows = by_system.get(s["system"], [])
        s["revision"] = revision_block(srows, infos, head, kw)
        s["usage"] = usage_summary(srows)


def paper_metrics(infos: Mapping[str, Any], head: str | None) -> list[str]:
    """The metrics of the paper-style table: the first present of (chamfer_l2, chamfer_l1), of (F@5, F@2,
    F@1) and best_iou, in that order; the ranking metric when none is present."""
    keys = [next((k for k in group if k in infos), None) for group in _PAPER_GROUPS]
    out = [k for k in keys if k]
    if not out and head and head in infos:
        out = [head]
    return out


# --- HTML ---------------------------------------------------------------------------------------------------


def _svg_curve(systems: Sequence[Mapping[str, Any]]) -> str:
    """The recovery curve: share executable (0..1) at each attempt, one polyline per system."""
    from gen3deval.report.html import e

    k = max(int(s["revision"]["k"]) for s in systems)
    w, h, left, bottom, top, right = 360, 180, 40, 28, 10, 10
    pw, ph = w - left - right, h - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (pw * (i - 1) / (k - 1) if k > 1 else pw / 2)
        return round(x, 1), round(top + ph * (1 - v), 1)

    out = [
        f'<svg class="curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="executability recovery after each attempt">'
    ]
    for v in (0.0, 0.5, 1.0):
        _, y = xy(1, v)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end" font-size="10">{v:.0%}</text>')
    for i in range(1, k + 1):
        x, _ = xy(i, 0.0)
        out.append(f'<text x="{x}" y="{h - 10}" text-anchor="middle" font-size="10">{i}</text>')
    for n, s in enumerate(systems):
        colour = _COLOURS[n % len(_COLOURS)]
        alone = [(i, v) for i, v in enumerate(s["revision"]["executable_at"], start=1) if v is not None]
        coords = " ".join(f"{x},{y}" for x, y in (xy(i, v) for i, v in alone))
        out.append(
            f'<polyline class="at" points="{coords}" fill="none" stroke="{colour}" stroke-dasharray="4 3">'
        )
        out.append(f"<title>{e(s['system'])}: attempt i alone</title></polyline>")
        pts = [(i, v) for i, v in enumerate(s["revision"]["recovery"], start=1) if v is not None]
        coords = " ".join(f"{x},{y}" for x, y in (xy(i, v) for i, v in pts))
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2">')
        out.append(f"<title>{e(s['system'])}: recovery</title></polyline>")
        for i, v in pts:
            x, y = xy(i, v)
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"><title>{e(s["system"])}: '
                       f"attempt {i}, {v:.0%} executable by then</title></circle>")  # fmt: skip
    out.append("</svg>")
    legend = " ".join(
        f'<span style="color:{_COLOURS[n % len(_COLOURS)]}">&#9632;</span> {e(s["system"])}'
        for n, s in enumerate(systems)
    )
    return (
        "".join(out)
        + f'<div class="n">{legend}; x: attempt; y: share of cases executable at some attempt &lt;= i (solid) and at attempt i alone (dashed)</div>'
    )


def _paper_table(
    entries: Sequence[tuple[str, Mapping[str, Any]]], infos: Mapping[str, Any], keys: Sequence[str]
) -> str:
    """The paper-style table of ``entries`` ([(row label, revision block)]): VSR and ``keys`` per mode."""
    from gen3deval.report.html import _est_cell, e

    out = [
        '<div class="scroll"><table class="leaderboard"><thead><tr><th rowspan="2" class="l">system</th>'
        '<th rowspan="2">k</th>'
    ]
    titles = ("Single", "Final@k", "Best@&lt;=k (oracle)")
    for title in titles:
        out.append(f'<th colspan="{1 + len(keys)}">{title}</th>')
    sub = "<th>VSR</th>" + "".join(
        f'<th title="{e(key)}; {e(infos[key]["statistic"])} over all cases, failures = worst">'
        f"{e(infos[key]['display'])} {'↑' if infos[key]['higher_is_better'] else '↓'}</th>"
        for key in keys
    )
    out.append("</tr><tr>" + sub * len(titles) + "</tr></thead><tbody>")
    for label, rev in entries:
        out.append(f'<tr><td class="l">{e(label)}</td><td>{rev["k"]}</td>')
        for mode in MODES:
            m = rev[mode]
            out.append(_est_cell(m["vsr"], 1.0, f"{m['n_executable']}/{m['n']}"))
            for key in keys:
                est = m["metrics"].get(key)
                if est is None:
                    out.append("<td>-</td>")
                    continue
                valid = est["valid"]
                out.append(_est_cell(est["all"], infos[key]["scale"], f"valid n={valid.n}"))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _every_metric(systems: Sequence[Mapping[str, Any]], infos: Mapping[str, Any]) -> str:
    from gen3deval.report.html import _metric_cells, _metric_th, _sub_th, e

    out = [
        "<details><summary>Every metric: single, final@k and best@&lt;=k (valid and all-cases)</summary>"
        '<div class="scroll"><table class="leaderboard"><thead><tr><th rowspan="2" class="l">system</th>'
        '<th rowspan="2">mode</th>'
    ]
    out += [_metric_th(key, info) for key, info in infos.items()]
    out.append("</tr><tr>" + "".join(_sub_th(info) for info in infos.values()) + "</tr></thead><tbody>")
    for s in systems:
        rev = s["revision"]
        for mode, label in zip(MODES, ("single", f"final@{rev['k']}", f"best@<={rev['k']}"), strict=True):
            out.append(f'<tr><td class="l">{e(s["system"])}</td><td>{e(label)}</td>')
            for key, info in infos.items():
                m = rev[mode]["metrics"].get(key)
                out.append(_metric_cells(m, info["scale"], None) if m else "<td>-</td><td>-</td>")
            out.append("</tr>")
    out.append("</tbody></table></div></details>")
    return "".join(out)


def _seconds(value: float) -> str:
    """A model answer's latency: ``"0.84 s"``, ``"12.3 s"``, else as :func:`human_duration`."""
    from gen3deval.report.remote_jobs import human_duration

    return f"{value:.3g} s" if value < 90 else human_duration(value)


def _usage_table(systems: Sequence[Mapping[str, Any]]) -> str:
    from gen3deval.report.html import e

    used = [s for s in systems if s.get("usage")]
    if not used:
        return ""

    def count(v: Any) -> str:
        return "-" if v is None else f"{v:,}"

    out = [
        '<p class="note">Model calls, every attempt: tokens as the endpoint reported them; cost when it '
        "reports <code>usage.cost</code>; latency of each answer (median, p90).</p>"
        '<div class="scroll"><table class="leaderboard"><thead><tr><th class="l">system</th><th>calls</th>'
        "<th>prompt tokens</th><th>completion tokens</th><th>cost</th><th>latency</th>"
        '<th class="l">finish reasons</th></tr></thead><tbody>'
    ]
    for s in used:
        u = s["usage"]
        lat = u["latency_s"]
        lat_cell = (
            f'{e(_seconds(lat["median"]))}<div class="ci">p90 {e(_seconds(lat["p90"]))}</div>'
            if lat["n"]
            else "-"
        )
        cost = "-" if u["cost"] is None else e(f"{u['cost']:.4g}")
        reasons = ", ".join(f"{k}: {v}" for k, v in u["finish_reasons"].items())
        out.append(
            f'<tr><td class="l">{e(s["system"])}</td><td>{u["calls"]}</td><td>{count(u["prompt_tokens"])}</td>'
            f"<td>{count(u['completion_tokens'])}</td><td>{cost}</td><td>{lat_cell}</td>"
            f'<td class="l">{e(reasons)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _attempt_gallery(
    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], run_dir: Path, max_cases: int
) -> str:
    """Per case and system, one row: the reference, then attempt 1..k (render and ranking metric, or the
    error class with its message on hover)."""
    from gen3deval.report.html import _artifact, _num, _picture, _resolve, e
    from gen3deval.report.images import embed_images

    systems = [s["system"] for s in summary["systems"] if s.get("revision")]
    head = summary.get("headline")
    info = summary["metrics"].get(head) if head else None
    wanted_sys = set(systems)
    grid: dict[str, dict[str, dict[int, Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if str(r["system"]) in wanted_sys:
            grid[str(r["case"])][str(r["system"])][_attempt(r)] = r
    if not grid:
        return ""
    k = max(_attempt(r) for per in grid.values() for by in per.values() for r in by.values())
    case_ids = sorted(grid)
    shown = case_ids[:max_cases]
    paths = [
        _resolve(_artifact(r, key), run_dir)
        for cid in shown
        for by in grid[cid].values()
        for r in by.values()
        for key in ("ref_image", "render")
    ]
    pics = embed_images([p for p in paths if p is not None], ATTEMPT_THUMB)
    out = [f"<h3>Every attempt per case ({len(case_ids)} cases)</h3>"]
    if len(case_ids) > len(shown):
        out.append(f'<p class="note">First {len(shown)} of {len(case_ids)} cases shown.</p>')
    out.append(
        '<div class="scroll"><table class="gallery attempts"><thead><tr><th class="l">case</th>'
        '<th class="l">system</th><th>reference</th>'
        + "".join(f"<th>attempt {i}</th>" for i in range(1, k + 1))
        + "</tr></thead><tbody>"
    )
    for cid in shown:
        for s in systems:
            by = grid[cid].get(s)
            if not by:
                continue
            ref = next((_artifact(r, "ref_image") for r in by.values() if _artifact(r, "ref_image")), None)
            cells = []
            for i in range(1, k + 1):
                row = by.get(i)
                if row is None:
                    cells.append('<td><span class="ph">no result</span></td>')
                elif not row.get("executable"):
                    cls = row.get("error_class") or "unknown"
                    cells.append(
                        f'<td><span class="ph err" title="{e(row.get("error") or "")}">{e(cls)}</span></td>'
                    )
                else:
                    pic = _picture(_artifact(row, "render"), run_dir, f"{s} {cid} attempt {i}", pics)
                    cap = ""
                    if info is not None and head is not None:
                        value = _num(to_float(row.get(head)), info["scale"])
                        cap = f'<div class="cap">{e(info["display"])} {value}</div>'
                    cells.append(f"<td>{pic}{cap}</td>")
            out.append(
                f'<tr><td class="l"><b>{e(cid)}</b></td><td class="l">{e(s)}</td>'
                f"<td>{_picture(ref, run_dir, f'reference {cid}', pics)}</td>{''.join(cells)}</tr>"
            )
    out.append("</tbody></table></div>")
    return "".join(out)


def revision_html(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    run_dir: Path,
    *,
    max_cases: int = MAX_ATTEMPT_CASES,
) -> str:
    """The attempts section of a run with revising systems: the paper-style table (Single / Final@k /
    Best@<=k of CD and F@5, or whatever :func:`paper_metrics` finds), every metric folded, the recovery curve,
    model-call totals and every attempt's render per case; ``""`` when no system made several attempts."""
    systems = [s for s in summary["systems"] if s.get("revision")]
    used = [s for s in summary["systems"] if s.get("usage")]
    if not systems and not used:
        return ""
    infos = summary["metrics"]
    if not systems:
        return "<h2>Model calls</h2>\n" + _usage_table(used)
    out = ["<h2>Attempts: single-shot vs final (revision with a fixed budget k)</h2>"]
    if systems:
        keys = paper_metrics(infos, summary.get("headline"))
        out.append(
            '<p class="note"><b>Single</b>: attempt 1; <b>Final@k</b>: the last attempt (all k always run); '
            "<b>Best@&lt;=k</b>: each case&#39;s best attempt by the ranking metric, an oracle diagnostic "
            "(it peeks at the score), not a score. Metric cells: the metric&#39;s statistic over all cases, "
            "failures scored its worst value; the leaderboard above uses the attempt mode in the header.</p>"
        )
        out.append(_paper_table([(s["system"], s["revision"]) for s in systems], infos, keys))
        per_cat = [
            (f"{s['system']} / {cat}", block)
            for s in systems
            for cat, block in (s["revision"].get("per_category") or {}).items()
        ]
        if len({label.rsplit(" / ", 1)[1] for label, _ in per_cat}) > 1:
            out.append("<details><summary>The same per category</summary>")
            out.append(_paper_table(per_cat, infos, keys) + "</details>")
        out.append(_every_metric(systems, infos))
        out.append("<h3>Executability recovery</h3>")
        out.append(_recovery_table(systems))
        out.append(_svg_curve(systems))
    out.append(_usage_table(summary["systems"]))
    if systems:
        out.append(_attempt_gallery(rows, summary, run_dir, max_cases))
    return "\n".join(out)


def _recovery_table(systems: Sequence[Mapping[str, Any]]) -> str:
    from gen3deval.report.html import e

    k = max(int(s["revision"]["k"]) for s in systems)

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    out = [
        '<p class="note">Executability recovery: the share of cases with a program that ran at some attempt '
        "&lt;= i (below: the share whose attempt i alone ran; a revision can break a working program).</p>"
        '<div class="scroll"><table><thead><tr><th class="l">system</th>'
        + "".join(f"<th>attempt {i}</th>" for i in range(1, k + 1))
        + "</tr></thead><tbody>"
    ]
    for s in systems:
        rev = s["revision"]
        cells = "".join(
            f'<td>{pct(a)}<div class="n">attempt {i} alone {pct(b)}</div></td>'
            for i, (a, b) in enumerate(zip(rev["recovery"], rev["executable_at"], strict=True), start=1)
        )
        cells += "<td>-</td>" * (k - int(rev["k"]))
        out.append(f'<tr><td class="l">{e(s["system"])}</td>{cells}</tr>')
    out.append("</tbody></table></div>")
    return "".join(out)
