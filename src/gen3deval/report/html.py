"""The self-contained ``report.html``: inline CSS, one small inline script, no network.

Sections: run header with the protocol fingerprint (collapsible); leaderboard sized for a laptop screen (the
ranking metric first: valid-only and all-cases with the metric's statistic, 95% intervals, n_valid/n,
undefined counts, VSR, paired difference to the best system; every other metric folded in a ``<details>``);
single vs final when the run has several attempts; per-category tables; VSR and error classes; the
failures list; and the per-case table (reference image beside each system's render and ranking-metric
value), which the inline script (``templates/report.js``) sorts by any column and filters by text and by
failure. Without the script everything is still shown, unsorted.

Images are embedded (:mod:`gen3deval.report.images`): a thumbnail in the table and, for "click to enlarge",
the picture up to 512 px in the link's ``data-full`` attribute, shown by the page's viewer; so the page works
when copied alone. The link's ``href`` still names the full-size file (relative to the run folder).
A failed case shows its error class (message on hover) instead of an image. Everything that comes from data
(ids, names, messages, paths, metadata) is HTML-escaped, and a Content-Security-Policy allows only the
page's own script (by hash) and ``data:`` images.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from gen3deval.report.aggregate import column_label, direction_arrow, to_float, worst_label
from gen3deval.report.bootstrap import Estimate
from gen3deval.report.images import FULL_SIZE, THUMB_SIZE, embed_images, thumbnail_data_uri
from gen3deval.report.jsonio import jsonable, write_text_atomic
from gen3deval.report.tables import fmt, suite_label

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html"
SCRIPT = Path(__file__).resolve().parent / "templates" / "report.js"
MAX_FAILURES = 2000
MAX_GALLERY_CASES = 1000
_INF = "∞"


def e(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return escape(str(value), quote=True)


def _href(rel: str, run_dir: Path) -> str:
    p = Path(rel)
    if p.is_absolute():
        return p.as_uri()
    # quote() also turns ':' into %3A, so a hostile "javascript:..." path cannot become a scheme.
    return quote(p.as_posix())


def _resolve(rel: str | None, run_dir: Path) -> Path | None:
    if not rel:
        return None
    p = Path(rel)
    return p if p.is_absolute() else run_dir / p


def _picture(rel: str | None, run_dir: Path, alt: str, pics: Mapping[Path, tuple[str, str] | None]) -> str:
    path = _resolve(rel, run_dir)
    if path is None or rel is None:
        return '<span class="ph">no image</span>'
    if path not in pics:
        return f'<span class="ph" title="{e(rel)}">image file missing</span>'
    pair = pics[path]
    if pair is None:
        return f'<span class="ph" title="{e(rel)}">unreadable image</span>'
    thumb, full = pair
    return (
        f'<a class="zoom" href="{e(_href(rel, run_dir))}" data-full="{full}" title="{e(alt)}" '
        f'target="_blank"><img src="{thumb}" alt="{e(alt)}" loading="lazy"></a>'
    )


def _num(value: float | None, scale: float = 1.0) -> str:
    return e(fmt(value, scale, inf=_INF))


def _est_cell(
    est: Estimate, scale: float, n_label: str | None = None, cls: str = "", undefined: int = 0
) -> str:
    """A table cell: the value, its [lo, hi] interval, a count line (``n_label``, default ``n=N``) and the
    number of undefined cases when there are any."""
    count = f'<div class="n">{e(n_label if n_label is not None else f"n={est.n}")}</div>'
    if undefined:
        count += (
            f'<div class="und" title="valid cases where the metric is undefined">{undefined} undefined</div>'
        )
    if est.value is None:
        return f'<td class="{cls}">-{count}</td>'
    ci = f'<div class="ci">[{_num(est.lo, scale)}, {_num(est.hi, scale)}]</div>'
    return f'<td class="{cls}">{_num(est.value, scale)}{ci}{count}</td>'


def _arrow(info: Mapping[str, Any]) -> str:
    return direction_arrow(info)


def _metric_th(key: str, info: Mapping[str, Any], colspan: int = 2) -> str:
    better = "higher" if info["higher_is_better"] else "lower"
    title = f"{key}; {better} is better; unit: {info.get('unit') or '-'}; statistic: {info['statistic']}"
    return (
        f'<th colspan="{colspan}" title="{e(title)}">{e(info["display"])} {_arrow(info)} '
        f"{e(info['statistic'])}</th>"
    )


def _sub_th(info: Mapping[str, Any]) -> str:
    """The two sub-headers of a metric: valid-only and all cases (with what a failure scores)."""
    return (
        f'<th title="{e(column_label(info, "valid"))}">valid</th>'
        f'<th title="{e(column_label(info, "all"))}">all, failures = {e(worst_label(info))}</th>'
    )


def _metric_cells(m: Mapping[str, Any], scale: float, best: float | None) -> str:
    valid, every = m["valid"], m["all"]
    cls = "best" if every.value is not None and every.value == best else ""
    return _est_cell(valid, scale, f"{valid.n}/{every.n}", undefined=m.get("undefined", 0)) + _est_cell(
        every, scale, None, cls
    )


def _best_values(entries: Sequence[Mapping[str, Any]], key: str, hib: bool) -> float | None:
    vals = [x["metrics"][key]["all"].value for x in entries if x["metrics"][key]["all"].value is not None]
    if not vals:
        return None
    return max(vals) if hib else min(vals)


def _header(summary: Mapping[str, Any], meta: Mapping[str, Any], n_cases: int) -> str:
    raw = meta.get("protocol")
    proto: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    suite = suite_label(meta)
    boot = summary["bootstrap"]
    systems = ", ".join(str(s["system"]) for s in summary["systems"]) or "none"
    mode = {"single": "single (attempt 1 only)", "final": "final (last attempt per case)"}.get(
        summary["attempts"], summary["attempts"]
    )
    if summary.get("max_attempt", 1) > 1:
        mode += f"; up to {summary['max_attempt']} attempts in the run"
    items = [
        ("run", meta.get("run_id", "?")),
        ("created", meta.get("created", "?")),
        ("suite", suite),
        ("cases", meta.get("n_cases", n_cases)),
        ("systems", systems),
        ("protocol", f"{proto.get('name', '?')} v{proto.get('version', '?')}"),
        ("fingerprint", proto.get("hash", "?")),
        ("background", _background(proto)),
        ("attempts", mode),
        (
            "intervals",
            f"95% percentile bootstrap over cases, {boot['n_resamples']} resamples, seed {boot['seed']}",
        ),
    ]
    out = [f"<h1>gen3deval report: {e(suite)}</h1>", '<p class="meta">']
    out.append(" &middot; ".join(f"{e(k)} <b>{e(v)}</b>" for k, v in items))
    out.append("</p>")
    for w in summary["warnings"]:
        out.append(f'<div class="warn">{e(w)}</div>')
    out.append(_suite_problems(meta))
    fp = json.dumps(jsonable(proto), indent=2, sort_keys=True, ensure_ascii=False)
    out.append(f"<details><summary>Protocol fingerprint</summary><pre>{e(fp)}</pre></details>")
    out.append(
        '<p class="note">Every number is computed under the protocol above (PROTOCOLS.md). Each metric has '
        "one statistic, named in its header (the <b>mean</b>, or the <b>median</b> for unbounded distances), "
        "used for both of its columns: <b>valid</b> over the cases with a valid candidate (n_valid/n), "
        "<b>all</b> over every case with failures scored the metric&#39;s worst value (shown in the header), "
        "so <b>all</b> is never better than <b>valid</b>. <b>undefined</b>: valid cases where the metric has no "
        "meaning (IoU when neither mesh encloses a volume), in neither column. [lo, hi] is the 95% bootstrap "
        "interval. Display scaling follows the metric name (CD x10^3 = chamfer_l2 &times; 1000; F@1 = "
        "F-score at 0.01 of the unit side).</p>"
    )
    return "\n".join(out)


def _background(proto: Mapping[str, Any]) -> str:
    """What every image was composited over before any metric (PROTOCOLS.md section 6)."""
    params = proto.get("params") if isinstance(proto.get("params"), Mapping) else {}
    bg = str(params.get("background", "white")) if params else "?"
    return "black (compat: RGBA->RGB as some scripts did)" if bg == "black" else bg


def _suite_problems(meta: Mapping[str, Any]) -> str:
    """A collapsed list of the suite loaders' problems (skipped entries, missing files), if any."""
    suite = meta.get("suite")
    parts = suite.get("suites") if isinstance(suite, Mapping) else None
    problems = [
        f"{s.get('name', '?')}: {p}"
        for s in parts or []
        if isinstance(s, Mapping)
        for p in s.get("problems") or []
    ]
    if not problems:
        return ""
    shown = problems[:MAX_FAILURES]
    more = f"<li>... {len(problems) - len(shown)} more</li>" if len(problems) > len(shown) else ""
    items = "".join(f"<li>{e(p)}</li>" for p in shown)
    return (
        f'<details class="warn"><summary>Suite problems ({len(problems)}): entries skipped or with missing '
        f"files</summary><ul>{items}{more}</ul></details>"
    )


def _leaderboard(summary: Mapping[str, Any]) -> str:
    """The ranking table (VSR, difference to the best, the ranking metric) and, folded, every metric."""
    infos = summary["metrics"]
    head = summary.get("headline")
    systems = summary["systems"]
    out = ["<h2>Leaderboard</h2>"]
    if head:
        hi = infos[head]
        out.append(
            f'<p class="note">Ranked by <b>{e(hi["display"])}</b> ({e(head)}), the {e(hi["statistic"])} over '
            f"all cases (failures = {e(worst_label(hi))}). &Delta; vs best: paired bootstrap over the cases both "
            "systems have, red when the interval excludes 0.</p>"
        )
    best = {k: _best_values(systems, k, info["higher_is_better"]) for k, info in infos.items()}
    out.append('<div class="scroll"><table class="leaderboard"><thead><tr>')
    out.append('<th rowspan="2">#</th><th rowspan="2" class="l">system</th><th rowspan="2">VSR</th>')
    if head:
        out.append(f'<th rowspan="2">&Delta; {e(infos[head]["display"])} vs best</th>')
        out.append(_metric_th(head, infos[head]) + "</tr><tr>" + _sub_th(infos[head]))
    out.append("</tr></thead><tbody>")
    for s in systems:
        out.append(f'<tr><td>{s["rank"]}</td><td class="l">{e(s["system"])}</td>')
        out.append(_est_cell(s["vsr"], 1.0, f"{s['n_executable']}/{s['n']}"))
        if head:
            out.append(_vs_best_cell(s, infos[head]["scale"]))
            out.append(_metric_cells(s["metrics"][head], infos[head]["scale"], best[head]))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    others = [k for k in infos if k != head]
    if others:
        out.append(
            f"<details><summary>Every metric ({len(infos)}): valid and all-cases columns</summary>"
            '<div class="scroll"><table class="leaderboard"><thead><tr>'
            '<th rowspan="2">#</th><th rowspan="2" class="l">system</th>'
        )
        out += [_metric_th(k, infos[k]) for k in infos]
        out.append("</tr><tr>" + "".join(_sub_th(infos[k]) for k in infos) + "</tr></thead><tbody>")
        for s in systems:
            out.append(f'<tr><td>{s["rank"]}</td><td class="l">{e(s["system"])}</td>')
            out += [_metric_cells(s["metrics"][k], infos[k]["scale"], best[k]) for k in infos]
            out.append("</tr>")
        out.append("</tbody></table></div></details>")
    return "\n".join(out)


def _attempts(summary: Mapping[str, Any]) -> str:
    """Single-shot vs final (and best@<=K) per system, when the run has more than one attempt."""
    modes = summary.get("attempt_modes")
    if not modes:
        return ""
    head = summary.get("headline")
    info = summary["metrics"].get(head) if head else None
    out = [
        "<h2>Attempts: single-shot vs final</h2>",
        '<p class="note">The leaderboard above uses the attempt mode in the header. best@&lt;=K picks each '
        "case&#39;s best attempt by the ranking metric: an oracle diagnostic, not a score.</p>",
        '<div class="scroll"><table><thead><tr><th rowspan="2" class="l">system</th>',
    ]
    out += [f'<th colspan="{2 if info else 1}">{e(m["label"])}</th>' for m in modes]
    sub = "<th>VSR</th>" + (
        f"<th>{e(info['display'])} {_arrow(info)} {e(info['statistic'])} (all)</th>" if info else ""
    )
    out.append("</tr><tr>" + sub * len(modes) + "</tr></thead><tbody>")
    for s in summary["systems"]:
        out.append(f'<tr><td class="l">{e(s["system"])}</td>')
        for m in modes:
            x = m["systems"].get(s["system"])
            if x is None:
                out.append("<td>-</td>" * (2 if info else 1))
                continue
            out.append(_est_cell(x["vsr"], 1.0, f"{x['n_executable']}/{x['n']}"))
            if info and x["headline"]:
                out.append(_est_cell(x["headline"]["all"], info["scale"]))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _vs_best_cell(s: Mapping[str, Any], scale: float) -> str:
    vs = s.get("vs_best")
    if not vs:
        return "<td>best</td>" if s["rank"] == 1 else "<td>-</td>"
    if vs.get("diff") is None:
        return f'<td title="no common cases with {e(vs["system"])}">-</td>'
    cls = "sig" if vs.get("significant") else ""
    title = (
        f"{s['system']} minus {vs['system']} on {vs['metric']} ({vs['statistic']}), {vs['n']} paired cases"
    )
    return (
        f'<td title="{e(title)}"><span class="{cls}">{_num(vs["diff"], scale)}</span>'
        f'<div class="ci">[{_num(vs["lo"], scale)}, {_num(vs["hi"], scale)}]</div>'
        f'<div class="n">n={vs["n"]}</div></td>'
    )


def _per_category(summary: Mapping[str, Any]) -> str:
    infos = summary["metrics"]
    cats = sorted({c["category"] for c in summary["per_category"]})
    systems = [s["system"] for s in summary["systems"]]
    cell: dict[tuple[str, str], Mapping[str, Any]] = {
        (c["system"], c["category"]): c for c in summary["per_category"]
    }
    out = ["<h2>Per category</h2>"]
    if not cats:
        return out[0] + '<p class="note">No results.</p>'
    # VSR per category first, then one table per metric (the headline open, the others collapsed).
    out.append(
        '<details open><summary>VSR (executable / all)</summary><div class="scroll"><table><thead><tr>'
    )
    out.append(
        '<th class="l">category</th>' + "".join(f"<th>{e(s)}</th>" for s in systems) + "</tr></thead><tbody>"
    )
    for cat in cats:
        out.append(f'<tr><td class="l">{e(cat)}</td>')
        for s in systems:
            c = cell.get((s, cat))
            out.append(_est_cell(c["vsr"], 1.0, f"{c['n_executable']}/{c['n']}") if c else "<td>-</td>")
        out.append("</tr>")
    out.append("</tbody></table></div></details>")
    for key, info in infos.items():
        scale = info["scale"]
        is_open = " open" if key == summary.get("headline") else ""
        out.append(
            f"<details{is_open}><summary>{e(info['display'])} {_arrow(info)} {e(info['statistic'])} "
            f"({e(key)}; failures = {e(worst_label(info))})</summary>"
            '<div class="scroll"><table><thead><tr><th rowspan="2" class="l">category</th>'
        )
        out += [f'<th colspan="2">{e(s)}</th>' for s in systems]
        out.append("</tr><tr>" + _sub_th(info) * len(systems) + "</tr></thead><tbody>")
        for cat in cats:
            out.append(f'<tr><td class="l">{e(cat)}</td>')
            for s in systems:
                c = cell.get((s, cat))
                if c is None:
                    out.append("<td>-</td><td>-</td>")
                    continue
                out.append(_metric_cells(c["metrics"][key], scale, None))
            out.append("</tr>")
        out.append("</tbody></table></div></details>")
    return "\n".join(out)


def _errors(summary: Mapping[str, Any]) -> str:
    systems = summary["systems"]
    classes = sorted({cls for s in systems for cls in s["errors"]})
    out = ["<h2>Executability and error classes</h2>", '<div class="scroll"><table><thead><tr>']
    out.append('<th class="l">system</th><th>n</th><th>executable</th><th>VSR</th>')
    out += [f"<th>{e(c)}</th>" for c in classes]
    out.append("</tr></thead><tbody>")
    for s in systems:
        v = s["vsr"]
        out.append(
            f'<tr><td class="l">{e(s["system"])}</td><td>{s["n"]}</td><td>{s["n_executable"]}</td>'
            f'<td>{_num(v.value)}<div class="ci">[{_num(v.lo)}, {_num(v.hi)}]</div></td>'
        )
        out += [f"<td>{s['errors'].get(c, 0)}</td>" for c in classes]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _failures(summary: Mapping[str, Any], max_rows: int) -> str:
    fails = summary["failures"]
    out = [f"<h2>Failures ({len(fails)})</h2>"]
    if not fails:
        out.append('<p class="note">No failed case.</p>')
        return "\n".join(out)
    if len(fails) > max_rows:
        out.append(f'<p class="note">First {max_rows} of {len(fails)} shown; all are in results.jsonl.</p>')
    out.append(
        '<div class="scroll"><table class="sortable"><thead><tr><th class="l">case</th><th class="l">category</th>'
    )
    out.append(
        '<th class="l">system</th><th>attempt</th><th class="l">error class</th><th class="l">message</th>'
    )
    out.append("</tr></thead><tbody>")
    for f in fails[:max_rows]:
        msg = f["error"] if len(f["error"]) <= 400 else f["error"][:400] + "..."
        out.append(
            f'<tr><td class="l">{e(f["case"])}</td><td class="l">{e(f["category"])}</td>'
            f'<td class="l">{e(f["system"])}</td><td>{f["attempt"]}</td>'
            f'<td class="l err">{e(f["error_class"])}</td><td class="msg">{e(msg)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _case_filter(systems: Sequence[str], table_id: str) -> str:
    """The filter form of the per-case table (hidden until the script runs: it does nothing without it)."""
    opts = ['<option value="">all cases</option>', '<option value="fail">some system failed</option>']
    opts += [f'<option value="f{i}">{e(s)} failed</option>' for i, s in enumerate(systems)]
    opts.append('<option value="undef">the ranking metric is undefined somewhere</option>')
    return (
        f'<form class="filter" data-table="{table_id}" hidden><input type="search" '
        'placeholder="filter by case or category" aria-label="filter by case or category">'
        f'<select aria-label="show">{"".join(opts)}</select><output></output></form>'
    )


def _gallery(
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    run_dir: Path,
    size: int,
    max_cases: int,
    full_size: int = FULL_SIZE,
) -> str:
    """The per-case table: case, category, the reference image, and per system its render with the
    ranking metric (sort key ``data-v``: the value, empty for failures and missing values)."""
    systems = [s["system"] for s in summary["systems"]]
    infos = summary["metrics"]
    head = summary.get("headline")
    by_case: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_case[str(r["case"])][str(r["system"])] = r
    case_ids = sorted(by_case)
    out = [f"<h2>Cases ({len(case_ids)})</h2>"]
    label = f"; caption and sort key: {infos[head]['display']}" if head else ""
    out.append(
        '<p class="note">Reference image beside each system&#39;s render (click a picture to enlarge'
        f"{e(label)}; click a column header to sort).</p>"
    )
    if len(case_ids) > max_cases:
        out.append(f'<p class="note">First {max_cases} of {len(case_ids)} cases shown.</p>')
    out.append(_case_filter(systems, "cases"))
    out.append(
        '<div class="scroll"><table class="gallery sortable" id="cases"><thead><tr><th class="l">case</th>'
        '<th class="l">category</th><th data-nosort>reference</th>'
    )
    out += [f"<th>{e(s)}</th>" for s in systems]
    out.append("</tr></thead><tbody>")
    shown = case_ids[:max_cases]
    wanted = [
        _resolve(_artifact(r, key), run_dir)
        for cid in shown
        for r in by_case[cid].values()
        for key in ("ref_image", "render")
    ]
    pics = embed_images([p for p in wanted if p is not None], size, full_size)
    for i, cid in enumerate(shown):
        per = by_case[cid]
        any_row = next(iter(per.values()))
        ref = next((_artifact(r, "ref_image") for r in per.values() if _artifact(r, "ref_image")), None)
        category = str(any_row.get("category") or "default")
        tags: list[str] = []
        cells: list[str] = []
        for j, s in enumerate(systems):
            row = per.get(s)
            if row is None:
                cells.append('<td data-v=""><span class="ph">no result</span></td>')
            elif not row.get("executable"):
                tags += ["fail", f"f{j}"]
                cls = row.get("error_class") or "unknown"
                cells.append(
                    f'<td data-v=""><span class="ph err" title="{e(row.get("error") or "")}">{e(cls)}</span></td>'
                )
            else:
                pic = _picture(_artifact(row, "render"), run_dir, f"{s} {cid}", pics)
                v = to_float(row.get(head)) if head else None
                if head and v is None and row.get(f"{head}_method") == "undefined":
                    tags.append("undef")
                cap = (
                    f'<div class="cap">{e(infos[head]["display"])} {_num(v, infos[head]["scale"])}</div>'
                    if head
                    else ""
                )
                cells.append(f'<td data-v="{"" if v is None else repr(v)}">{pic}{cap}</td>')
        out.append(
            f'<tr id="case-{i}" data-text="{e(cid + " " + category)}" data-tags="{" ".join(sorted(set(tags)))}">'
            f'<td class="l"><b>{e(cid)}</b></td><td class="l">{e(category)}</td>'
            f"<td>{_picture(ref, run_dir, f'reference {cid}', pics)}</td>{''.join(cells)}</tr>"
        )
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _artifact(row: Mapping[str, Any], key: str) -> str | None:
    arts = row.get("artifacts")
    if not isinstance(arts, Mapping):
        return None
    value = arts.get(key)
    return str(value) if value else None


def render_html(
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    meta: Mapping[str, Any],
    run_dir: Path,
    *,
    thumb_size: int = THUMB_SIZE,
    full_size: int = FULL_SIZE,
    max_failures: int = MAX_FAILURES,
    max_gallery_cases: int = MAX_GALLERY_CASES,
    all_rows: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The report page as a string. ``rows`` are the rows the summary was made from (one attempt each);
    ``all_rows`` every attempt (the revision section shows each attempt's render), default ``rows``."""
    from gen3deval.report import image_gallery as ig
    from gen3deval.report.compat import compat_html
    from gen3deval.report.remote_jobs import systems_html
    from gen3deval.report.revision import revision_html

    n_cases = len({str(r["case"]) for r in rows})
    title = f"gen3deval report: {suite_label(meta)}"
    # Cases without a reference mesh (image suites) get their own section: photo beside each turntable.
    image_ids = ig.image_case_ids(rows)
    scored = [r for r in rows if str(r["case"]) not in image_ids]
    extra = ig.reference_free_metrics(rows)  # plug point of reference-free metrics (CLIP image-to-render)
    # The gallery keeps the run's system order (the leaderboard's ranking means little without metrics).
    order = [str(s) for s in meta.get("systems") or []]
    order += [str(s["system"]) for s in summary["systems"] if str(s["system"]) not in order]
    body = "\n".join(
        [
            _header(summary, meta, n_cases),
            _leaderboard(summary),
            compat_html((summary.get("compat") or {}).get("mecagent")),
            systems_html(summary, ig.per_system(extra)),
            revision_html(summary, all_rows if all_rows is not None else rows, run_dir)
            if any(x.get("revision") or x.get("usage") for x in summary["systems"])
            else _attempts(summary),
            _per_category(summary),
            _errors(summary),
            _failures(summary, max_failures),
            _gallery(scored, summary, run_dir, thumb_size, max_gallery_cases, full_size)
            if scored or not image_ids
            else "",
            ig.image_gallery_html(
                [r for r in rows if str(r["case"]) in image_ids], order, run_dir, extra=extra
            ),
            f'<p class="note">Generated by gen3deval. {e(_INF)} = +infinity (an all-cases median where failures, '
            "scored +&infin;, are the majority); in summary.json every non-finite number is null.</p>",
        ]
    )
    script = SCRIPT.read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    page = Template(TEMPLATE.read_text(encoding="utf-8"))
    return page.substitute(title=e(title), body=body, script=script, script_hash=f"sha256-{digest}")


def write_html(
    run_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    meta: Mapping[str, Any],
    **options: Any,
) -> Path:
    """Write ``run_dir/report.html``; returns its path."""
    path = run_dir / "report.html"
    write_text_atomic(path, render_html(rows, summary, meta, run_dir, **options))
    return path


__all__ = ["render_html", "thumbnail_data_uri", "write_html"]
