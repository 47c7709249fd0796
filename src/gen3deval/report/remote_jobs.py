"""Per-system statistics of remote jobs (hosted APIs) and of the meshes a system delivered.

Two sources, both read-only:

- the store's ``jobs`` table (:mod:`gen3deval.engine.jobs_table`), one row per *try* of a job, summarised by
  :func:`~gen3deval.engine.jobs_table.jobs_overview` into ``meta["remote_jobs"]`` (``{system: counts}``) when the report is built from a
  run folder: tries submitted / complete / failed / timed out / running, submissions whose answer was lost
  (``unconfirmed``, ``resubmitted``), tries that needed retried requests, and the cost the server reported;
- the result rows: ``row["remote"]`` (the generate stage's job record: ``wait_s`` = ready in the engine ->
  handle stored, ``server_s`` = handle stored -> the server's final answer, ``total_s`` = handle stored ->
  downloaded and verified, ``retries``, ``resubmitted``, ``cost``, ``parts``) and ``row["mesh_stats"]``
  (:func:`gen3deval.mesh.stats.mesh_stats` of the candidate).

:func:`attach_system_stats` adds ``remote`` and ``mesh_stats`` to every system of a summary (None when the
system has no such data); :func:`systems_html` renders them. Times: median and p90 (numpy's linear
percentile) over the jobs that have the value. Every attempt counts (each is a job that ran), not only the
attempt the leaderboard uses.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass

__all__ = [
    "attach_system_stats",
    "distribution",
    "human_duration",
    "mesh_summary",
    "remote_summary",
    "systems_html",
]

# Error classes of a remote generate row (the engine's contract) -> the count they go to without a jobs table.
_FAILED_CLASSES = ("generation_error", "remote_error")
_TIMEOUT_CLASS = "timeout"


def human_duration(seconds: float | None) -> str:
    """``"-"``, ``"45 s"``, ``"12 min"``, ``"3.5 h"`` or ``"2.1 d"``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def distribution(values: Iterable[Any]) -> dict[str, Any]:
    """``{"n", "median", "p90"}`` of the finite numbers in ``values`` (None statistics when there are none)."""
    x = np.asarray([v for v in (_num(v) for v in values) if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "median": None, "p90": None}
    return {"n": int(x.size), "median": float(np.median(x)), "p90": float(np.percentile(x, 90))}


def remote_summary(
    rows: Sequence[Mapping[str, Any]], jobs: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The ``remote`` entry of one system: job counts (from the jobs table when given, else from the rows'
    error classes), times per job (``wait``, ``server``, ``total``: {n, median, p90} in seconds), retries,
    cost and kit part counts. None when the system ran no remote job."""
    recs = [r["remote"] for r in rows if isinstance(r.get("remote"), Mapping)]
    if not recs and not jobs:
        return None
    out: dict[str, Any] = {"service": next((str(x["service"]) for x in recs if x.get("service")), None)}
    if jobs:
        out["source"] = "jobs table"
        for key in (
            "jobs",
            "tries",
            "submitted",
            "complete",
            "failed",
            "timed_out",
            "running",
            "unconfirmed",
            "resubmitted",
            "retried",
            "retried_failed",
            "retries",
        ):
            out[key] = int(jobs.get(key) or 0)
        out["cost"] = _num(jobs.get("cost"))
    else:
        remote_rows = [r for r in rows if isinstance(r.get("remote"), Mapping)]
        failed = sum(1 for r in remote_rows if r.get("error_class") in _FAILED_CLASSES)
        timed_out = sum(1 for r in remote_rows if r.get("error_class") == _TIMEOUT_CLASS)
        out.update(
            source="result rows",
            jobs=len(remote_rows),
            tries=len(remote_rows),
            submitted=sum(1 for x in recs if x.get("sessions")),
            complete=len(remote_rows) - failed - timed_out,
            failed=failed,
            timed_out=timed_out,
            running=0,
            unconfirmed=0,
            resubmitted=sum(int(_num(x.get("resubmitted")) or 0) for x in recs),
            retried=sum(
                1 for x in recs if (_num(x.get("retries")) or 0) > 0 or (_num(x.get("resubmitted")) or 0) > 0
            ),
            retried_failed=sum(1 for x in recs if (_num(x.get("try")) or 1) > 1),
            retries=sum(int(_num(x.get("retries")) or 0) for x in recs),
        )
        costs = [c for c in (_num(x.get("cost")) for x in recs) if c is not None]
        out["cost"] = float(sum(costs)) if costs else None
    for key in ("wait", "server", "total"):
        out[f"{key}_s"] = distribution(x.get(f"{key}_s") for x in recs)
    parts = [p for p in (_num(x.get("parts")) for x in recs) if p]
    out["parts"] = distribution(parts) if parts else None
    return out


def mesh_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ``mesh_stats`` entry of one system over its meshes (rows with ``mesh_stats``): ``n``, median
    ``faces``, ``vertices``, ``components`` and ``file_bytes``, and the share ``watertight`` and ``textured``
    (0..1). None when no row has mesh statistics."""
    stats = [r["mesh_stats"] for r in rows if isinstance(r.get("mesh_stats"), Mapping)]
    if not stats:
        return None

    def median(key: str) -> float | None:
        return distribution(s.get(key) for s in stats)["median"]

    return {
        "n": len(stats),
        "faces": median("faces"),
        "vertices": median("vertices"),
        "components": median("components"),
        "file_bytes": median("file_bytes"),
        "watertight": sum(1 for s in stats if s.get("watertight") is True) / len(stats),
        "textured": sum(1 for s in stats if s.get("has_texture") is True) / len(stats),
    }


def attach_system_stats(
    systems: Sequence[dict[str, Any]], rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> None:
    """Set ``remote`` and ``mesh_stats`` of every summary system from all its rows (every attempt) and
    ``meta["remote_jobs"]``."""
    by_system: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_system[str(r["system"])].append(r)
    table = meta.get("remote_jobs")
    jobs: Mapping[str, Any] = table if isinstance(table, Mapping) else {}
    for s in systems:
        srows = by_system.get(s["system"], [])
        j = jobs.get(s["system"])
        s["remote"] = remote_summary(srows, j if isinstance(j, Mapping) else None)
        s["mesh_stats"] = mesh_summary(srows)


# --- HTML -----------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _int(value: Any) -> str:
    v = _num(value)
    return "-" if v is None else f"{v:,.0f}"


def _pct(value: Any) -> str:
    v = _num(value)
    return "-" if v is None else f"{100 * v:.0f}%"


def _bytes(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def _times(d: Mapping[str, Any] | None) -> str:
    if not d or not d.get("n"):
        return "<td>-</td>"
    return (
        f'<td title="n={d["n"]} jobs">{_e(human_duration(d["median"]))}'
        f'<div class="ci">p90 {_e(human_duration(d["p90"]))}</div></td>'
    )


def systems_html(summary: Mapping[str, Any], extra: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The "Jobs and meshes per system" section: remote job counts, times and cost, then mesh statistics;
    ``""`` when no system has either. ``extra`` ({system: {column title: value}}) adds columns (reference-free
    metrics such as the CLIP image-to-render similarity, see :mod:`gen3deval.report.image_gallery`)."""
    systems = [s for s in summary["systems"] if s.get("remote") or s.get("mesh_stats")]
    if not systems:
        return ""
    out = ["<h2>Jobs and meshes per system</h2>"]
    remote = [s for s in systems if s.get("remote")]
    if remote:
        out.append(
            '<p class="note">Remote jobs (hosted APIs), every attempt. <b>tries</b>: submissions with a stored '
            "answer (a <code>--retry-failed</code> adds a try beside the failed one); <b>retried</b>: tries whose "
            "requests were retried (rate limits, server errors, dropped connections) or resent after an answer "
            "was lost, with the number of retried requests; <b>unconfirmed</b>: submissions sent but whose "
            "answer was never stored (a kill), resubmitted once by the next run. <b>wait</b>: ready in the "
            "engine until the server took the job (local queue, rate limits); <b>server</b>: until the server "
            "finished; <b>total</b>: until the mesh was downloaded and verified; median and p90.</p>"
        )
        out.append(
            '<div class="scroll"><table class="leaderboard"><thead><tr><th class="l">system</th>'
            "<th>jobs</th><th>tries</th><th>complete</th><th>failed</th><th>timed out</th><th>running</th>"
            "<th>unconfirmed</th><th>retried</th><th>wait</th><th>server</th><th>total</th><th>cost</th>"
            "<th>parts</th></tr></thead><tbody>"
        )
        for s in remote:
            r = s["remote"]
            parts = r.get("parts")
            part_cell = (
                f'<td title="median over {parts["n"]} kits">{_int(parts["median"])}</td>'
                if parts
                else "<td>-</td>"
            )
            cost = "-" if r["cost"] is None else _e(f"{r['cost']:g}")
            out.append(
                f'<tr><td class="l">{_e(s["system"])}</td><td>{r["jobs"]}</td><td>{r["tries"]}</td>'
                f"<td>{r['complete']}</td><td>{r['failed']}</td><td>{r['timed_out']}</td><td>{r['running']}</td>"
                f"<td>{r['unconfirmed']}</td>"
                f'<td>{r["retried"]}<div class="n">{r["retries"]} retried requests; '
                f"{r['resubmitted']} resubmitted; {r['retried_failed']} by --retry-failed</div></td>"
                f"{_times(r['wait_s'])}{_times(r['server_s'])}{_times(r['total_s'])}"
                f"<td>{cost}</td>{part_cell}</tr>"
            )
        out.append("</tbody></table></div>")
    meshes = [s for s in systems if s.get("mesh_stats")]
    extra_cols = sorted({k for v in (extra or {}).values() for k in v})
    if meshes:
        out.append(
            '<p class="note">Meshes delivered (every attempt): medians of faces, vertices, connected components '
            "(after welding coincident vertices) and file size as delivered; the share of watertight meshes "
            "(every edge in exactly two faces) and of textured ones (a texture or vertex colours).</p>"
        )
        out.append(
            '<div class="scroll"><table class="leaderboard"><thead><tr><th class="l">system</th><th>meshes</th>'
            "<th>faces</th><th>vertices</th><th>components</th><th>watertight</th><th>textured</th>"
            "<th>file size</th>" + "".join(f"<th>{_e(c)}</th>" for c in extra_cols) + "</tr></thead><tbody>"
        )
        for s in meshes:
            m = s["mesh_stats"]
            cols = (extra or {}).get(s["system"], {})
            out.append(
                f'<tr><td class="l">{_e(s["system"])}</td><td>{m["n"]}</td><td>{_int(m["faces"])}</td>'
                f"<td>{_int(m['vertices'])}</td><td>{_int(m['components'])}</td><td>{_pct(m['watertight'])}</td>"
                f"<td>{_pct(m['textured'])}</td><td>{_e(_bytes(m['file_bytes']))}</td>"
                + "".join(f"<td>{_e(cols.get(c, '-'))}</td>" for c in extra_cols)
                + "</tr>"
            )
        out.append("</tbody></table></div>")
    return "\n".join(out)
