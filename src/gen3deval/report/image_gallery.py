"""The report section of image suites (cases with an input photo and no reference mesh).

For each such case: the input photo beside each system's turntable (``artifacts["renders"]``, the protocol's
material, usually textured, and ``artifacts["renders_grey"]``, the same rig in grey), every view clickable
to a larger one, with a caption per system: mesh statistics, the job's total time and any reference-free
metric. A failed case shows its error class and the server's (or loader's) message.

Reference-based metrics need a reference, so image cases have none. Reference-free metrics plug in here:
:data:`REFERENCE_FREE_METRICS` lists the result-row keys read by :func:`reference_free_metrics`, which
returns ``{(case, system): {key: value}}``; :func:`image_gallery_html` shows them in each caption and
:func:`per_system` turns them into per-system medians for the "Jobs and meshes" table. The keys are the
metric registry's reference-free ones (``clip_image_to_3d``: the photo vs each view, ``clip_score``).

Size: views are embedded as :mod:`gen3deval.report.images` pictures, ``VIEW_THUMB`` px thumbnails and
``VIEW_FULL`` px enlargements; ``MAX_IMAGE_CASES`` cases at most. Measured on lowpoly304 renders (512 px
PNG): ~0.7 kB a thumbnail and ~4 kB an enlargement, so 60 photos x 6 systems x 16 views add ~28 MB to the
page (~0.45 MB per photo with 6 systems).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gen3deval.metrics.base import REFERENCE_FREE_KEYS
from gen3deval.report.images import embed_images
from gen3deval.report.remote_jobs import human_duration

__all__ = [
    "REFERENCE_FREE_METRICS",
    "ExtraMetrics",
    "image_case_ids",
    "image_gallery_html",
    "per_system",
    "reference_free_metrics",
]

# Result-row keys of metrics computed without a reference (clip_image_to_3d, clip_score, ...): the registry's.
REFERENCE_FREE_METRICS: tuple[str, ...] = REFERENCE_FREE_KEYS
VIEW_THUMB = 72
VIEW_FULL = 384
PHOTO_THUMB = 160
MAX_IMAGE_CASES = 200

# {(case id, system label): {metric key: value or None}}
ExtraMetrics = Mapping[tuple[str, str], Mapping[str, float | None]]


def image_case_ids(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Cases without a reference mesh: ``has_reference`` is False, or unknown (a failed reference stage)
    in a run where no case has a reference. Rows without the key (older results) have a reference."""
    any_reference = any(r.get("has_reference") is True for r in rows)
    return {
        str(r["case"])
        for r in rows
        if r.get("has_reference") is False
        or ("has_reference" in r and r.get("has_reference") is None and not any_reference)
    }


def reference_free_metrics(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = REFERENCE_FREE_METRICS
) -> dict[tuple[str, str], dict[str, float | None]]:
    """The plug point: ``{(case, system): {key: value}}`` of the reference-free metric ``keys`` found in rows."""
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        vals = {k: r.get(k) for k in keys if k in r}
        if vals:
            out[(str(r["case"]), str(r["system"]))] = {
                k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
                for k, v in vals.items()
            }
    return out


def per_system(extra: ExtraMetrics | None) -> dict[str, dict[str, str]]:
    """``{system: {"KEY (median)": text}}``: the median of each extra metric over a system's cases."""
    vals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (_, system), metrics in (extra or {}).items():
        for k, v in metrics.items():
            if v is not None and np.isfinite(v):
                vals[system][k].append(float(v))
            else:
                vals[system].setdefault(k, [])
    return {
        s: {
            f"{_shown(k)[0]} (median)": (
                f"{float(np.median(v)) * _shown(k)[1]:.4g} (n={len(v)})" if v else "-"
            )
            for k, v in sorted(per.items())
        }
        for s, per in vals.items()
    }


def _shown(key: str) -> tuple[str, float]:
    """(display name, scale) of a metric key from the registry (cosines are shown x100); the key itself if unknown."""
    from gen3deval.metrics.base import metric_info

    try:
        info = metric_info(key)
    except Exception:
        return key, 1.0
    return info.display, float(info.scale)


def _caption(row: Mapping[str, Any], metrics: Mapping[str, float | None]) -> str:
    from gen3deval.report.html import e

    parts: list[str] = []
    st = row.get("mesh_stats")
    if isinstance(st, Mapping):
        parts.append(f"{st.get('faces', '?'):,} faces" if isinstance(st.get("faces"), int) else "? faces")
        comps = st.get("components")
        if isinstance(comps, int):
            parts.append(f"{comps} component{'s' if comps != 1 else ''}")
        parts.append("watertight" if st.get("watertight") else "open")
        parts.append("textured" if st.get("has_texture") else "untextured")
    remote = row.get("remote")
    if isinstance(remote, Mapping):
        if remote.get("parts"):
            parts.append(f"{remote['parts']} parts")
        total = remote.get("total_s")
        if isinstance(total, int | float):
            parts.append(f"total {human_duration(float(total))}")
    for k, v in metrics.items():
        name, scale = _shown(k)
        parts.append(f"{name} {'-' if v is None else f'{v * scale:.4g}'}")
    return f'<div class="cap">{e(" · ".join(parts))}</div>' if parts else ""


def _strip(
    label: str, paths: Sequence[str], run_dir: Path, alt: str, pics: Mapping[Path, tuple[str, str] | None]
) -> str:
    from gen3deval.report.html import _picture, e

    views = "".join(
        _picture(p, run_dir, f"{alt}, {label} view {i + 1}/{len(paths)}", pics) for i, p in enumerate(paths)
    )
    return f'<div class="strip"><span class="sl">{e(label)}</span>{views}</div>'


def _views(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    arts = row.get("artifacts")
    if not isinstance(arts, Mapping):
        return [], []
    asset = arts.get("renders") or ([arts["render"]] if arts.get("render") else [])
    grey = arts.get("renders_grey") or []
    return [str(p) for p in asset if p], [str(p) for p in grey if p]


def image_gallery_html(
    rows: Sequence[Mapping[str, Any]],
    systems: Sequence[str],
    run_dir: Path,
    *,
    extra: ExtraMetrics | None = None,
    max_cases: int = MAX_IMAGE_CASES,
) -> str:
    """The "Images" section: per image case, the photo beside each system's turntable (textured and grey)."""
    from gen3deval.report.html import _picture, _resolve, e

    by_case: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_case[str(r["case"])][str(r["system"])] = r
    if not by_case:
        return ""
    case_ids = sorted(by_case)
    shown = case_ids[:max_cases]
    out = [f"<h2>Images ({len(case_ids)})</h2>"]
    out.append(
        '<p class="note">Each input photo beside every system&#39;s turntable: the rendered asset (as '
        "delivered, textured when it has a texture) and the same views in grey (geometry only). Click any "
        "picture to enlarge. No reference mesh, so no reference-based metric.</p>"
    )
    if len(case_ids) > len(shown):
        out.append(f'<p class="note">First {len(shown)} of {len(case_ids)} images shown.</p>')
    photos: dict[str, str | None] = {}
    wanted: list[Path] = []
    for cid in shown:
        per = by_case[cid]
        photo = next(
            (
                str(r["artifacts"]["ref_image"])
                for r in per.values()
                if isinstance(r.get("artifacts"), Mapping) and r["artifacts"].get("ref_image")
            ),
            None,
        )
        photos[cid] = photo
        p = _resolve(photo, run_dir)
        if p is not None:
            wanted.append(p)
    pics_photo = embed_images(wanted, PHOTO_THUMB)
    view_paths = [
        p
        for cid in shown
        for r in by_case[cid].values()
        for v in _views(r)
        for p in (_resolve(x, run_dir) for x in v)
        if p is not None
    ]
    pics_views = embed_images(view_paths, VIEW_THUMB, VIEW_FULL)
    for i, cid in enumerate(shown):
        per = by_case[cid]
        names = [s for s in systems if s in per] + sorted(s for s in per if s not in systems)
        out.append(f'<h3 id="image-{i}">{e(cid)}</h3><div class="scroll"><table class="turntable"><tbody>')
        for j, s in enumerate(names):
            row = per[s]
            first = (
                f'<td rowspan="{len(names)}" class="photo">'
                f"{_picture(photos[cid], run_dir, f'input photo {cid}', pics_photo)}</td>"
                if j == 0
                else ""
            )
            if not row.get("executable"):
                cls = row.get("error_class") or "unknown"
                msg = row.get("error") or ""
                body = f'<span class="err">{e(cls)}</span><div class="msg">{e(msg)}</div>'
            else:
                asset, grey = _views(row)
                alt = f"{s} {cid}"
                body = _strip("asset", asset, run_dir, alt, pics_views) if asset else ""
                body += _strip("grey", grey, run_dir, alt, pics_views) if grey else ""
                if not body:
                    body = f'<span class="ph">{e(row.get("error") or "no renders")}</span>'
                body += _caption(row, (extra or {}).get((cid, s), {}))
            out.append(f'<tr>{first}<td class="l sys"><b>{e(s)}</b></td><td class="l">{body}</td></tr>')
        out.append("</tbody></table></div>")
    return "\n".join(out)
