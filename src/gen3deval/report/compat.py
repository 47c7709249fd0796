"""The ``compat:mecagent`` report block: VSR and mean IoU as the mecagent CadQuery benchmark reports them,
beside gen3deval's honest numbers for the same cases (PROTOCOLS.md section 5).

mecagent (``metrics/best_iou.py: evaluate_codes``, see :mod:`gen3deval.metrics.compat_mecagent`) reports

- VSR = programs that ran and left a solid / all cases (a missing answer counts as a failure), and
- mean IoU = the mean of its surface-voxel IoU (``mecagent_iou``: reflections allowed, no interior) over the
  valid cases only: failed programs are dropped from the mean, not scored 0.

The honest numbers are the leaderboard's: VSR with every failure counted, and ``best_iou`` (solid IoU, proper
rotations only) over all cases with failures scored 0 (and over the valid cases, for comparison).

``compat_block(rows, summary)`` builds the block for ``summary.json`` (None when no row has ``mecagent_iou``);
``compat_html(block)`` renders it. The rows are the run's rows (every attempt): the block picks the attempts
the leaderboard used (``summary["attempts"]``), so both describe the same cases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from gen3deval.report.aggregate import select_attempts, to_float, vsr
from gen3deval.report.bootstrap import Estimate, estimate

__all__ = ["COMPAT_KEY", "NAME", "compat_block", "compat_html"]

NAME = "compat:mecagent"
COMPAT_KEY = "mecagent_iou"
HONEST_KEY = "best_iou"
SOURCE = (
    "mecagent technical test, metrics/best_iou.py (iou_best, evaluate_codes) and metrics/valid_syntax_rate.py "
    "(github.com/yvss2359/mecagent-technical-test @8ccfb80; trimesh 4.6.11 voxelized)"
)
DEFINITION = {
    "vsr": "programs that ran and produced a solid / all cases (missing answers count as failures)",
    "mean_iou": (
        "mean of mecagent_iou over valid cases only (failures dropped): surface voxels at pitch 0.05 r_g after "
        "inertia normalisation, best of 4 principal-axis sign patterns of which 1 or 3 are reflections"
    ),
    "honest_vsr": "executable cases / all cases (sandbox limits, positive-volume solid)",
    "honest_iou": "best_iou (solid volume IoU, 4 proper PCA rotations) over all cases, failures scored 0",
}


def _has_compat(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(COMPAT_KEY in r for r in rows)


def _empty_estimate() -> Estimate:
    return Estimate(None, None, None, 0, "mean")


def compat_block(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``compat:mecagent`` block (plain data with :class:`Estimate` records, like the summary), or None
    when no row carries ``mecagent_iou`` (not a CAD run that computed it).

    Per system, in the leaderboard's order: ``n``, ``compat`` {``vsr``, ``mean_iou`` (valid-only mean of
    mecagent_iou), ``n_valid``, ``undefined``} and ``honest`` {``vsr``, ``best_iou_all`` (failures = 0),
    ``best_iou_valid``} (the summary's own estimates, None when the run has no best_iou).
    """
    if not _has_compat(rows):
        return None
    boot = summary.get("bootstrap") or {}
    kw = {k: boot[k] for k in ("n_resamples", "seed", "level") if k in boot}
    head = summary.get("headline")
    infos = summary.get("metrics") or {}
    hib = bool(infos[head]["higher_is_better"]) if head in infos else True
    picked = select_attempts(
        list(rows), str(summary.get("attempts") or "single"), key=head, higher_is_better=hib
    )
    by_system: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in picked:
        by_system[str(r["system"])].append(r)
    ranked = {str(s["system"]): s for s in summary.get("systems") or []}
    order = [name for name in ranked if name in by_system] + sorted(s for s in by_system if s not in ranked)

    systems: list[dict[str, Any]] = []
    for name in order:
        srows = by_system[name]
        values, undefined = [], 0
        for r in srows:
            if not r.get("executable"):
                continue  # mecagent drops failures from the mean
            v = to_float(r.get(COMPAT_KEY))
            if v is None:
                undefined += 1
            else:
                values.append(v)
        honest = ranked.get(name) or {}
        best = (honest.get("metrics") or {}).get(HONEST_KEY) or {}
        systems.append(
            {
                "system": name,
                "n": len(srows),
                "compat": {
                    "vsr": vsr(srows, **kw),
                    "mean_iou": estimate(np.asarray(values, dtype=np.float64), statistic="mean", **kw),
                    "n_valid": sum(1 for r in srows if r.get("executable")),
                    "undefined": undefined,
                },
                "honest": {
                    "vsr": honest.get("vsr") or vsr(srows, **kw),
                    "best_iou_all": best.get("all") or _empty_estimate(),
                    "best_iou_valid": best.get("valid") or _empty_estimate(),
                },
            }
        )
    return {"name": NAME, "source": SOURCE, "definition": dict(DEFINITION), "systems": systems}


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _pct(est: Any) -> str:
    """``value`` x100 with its interval, or '-'; accepts an Estimate or its dict (summary.json read back)."""
    d = est.to_dict() if isinstance(est, Estimate) else dict(est or {})
    if d.get("value") is None:
        return "-"
    ci = ""
    if d.get("lo") is not None and d.get("hi") is not None:
        ci = f' <span class="ci">[{100 * d["lo"]:.1f}, {100 * d["hi"]:.1f}]</span>'
    return f"{100 * d['value']:.1f}{ci}"


def compat_html(block: Mapping[str, Any] | None) -> str:
    """The block as an HTML section (escaped), or "" for None. Values x100, 95% intervals in brackets."""
    if not block:
        return ""
    head = (
        "<tr><th rowspan=2>System</th><th rowspan=2>n</th>"
        f'<th colspan=2 class="compat">{_e(block.get("name", NAME))} (as that project reports)</th>'
        "<th colspan=3>gen3deval (honest)</th></tr><tr><th>VSR</th><th>mean IoU (valid only)</th>"
        "<th>VSR</th><th>Best IoU (all, failures = 0)</th><th>Best IoU (valid)</th></tr>"
    )
    body = []
    for s in block.get("systems") or []:
        c, h = s.get("compat") or {}, s.get("honest") or {}
        undefined = f' <span class="n">{int(c["undefined"])} undefined</span>' if c.get("undefined") else ""
        body.append(
            f"<tr><td>{_e(s.get('system'))}</td><td>{_e(s.get('n'))}</td>"
            f"<td>{_pct(c.get('vsr'))}</td><td>{_pct(c.get('mean_iou'))} "
            f'<span class="n">n={_e(c.get("n_valid"))}</span>{undefined}</td>'
            f"<td>{_pct(h.get('vsr'))}</td><td>{_pct(h.get('best_iou_all'))}</td>"
            f"<td>{_pct(h.get('best_iou_valid'))}</td></tr>"
        )
    d = block.get("definition") or DEFINITION
    notes = "".join(
        f"<li><b>{_e(label)}</b>: {_e(d.get(key, ''))}</li>"
        for key, label in (
            ("vsr", "compat VSR"),
            ("mean_iou", "compat mean IoU"),
            ("honest_vsr", "VSR"),
            ("honest_iou", "Best IoU"),
        )
    )
    return (
        f'<h2 id="compat-mecagent">{_e(block.get("name", NAME))}: numbers as published vs honest</h2>'
        '<p class="note">The compat columns reproduce a published evaluation to compare with its numbers; they '
        "drop failed programs from the IoU mean, count only surface voxels and accept mirror images. Rank "
        "systems by the honest columns.</p>"
        f'<div class="scroll"><table class="compat"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        f'</table></div><ul class="note">{notes}<li>source: {_e(block.get("source", SOURCE))}</li></ul>'
    )
