"""Result rows and run metadata from a store (the engine/report contract), and the report hand-off.

One row per (case, system, attempt) whose pipeline has finished (every stage that applies has a row, as
:mod:`gen3deval.engine.pipeline` defines them); unfinished pipelines are listed separately so ``report``
can say a run is incomplete. The attempts of each (system, case) are the ones the engine recorded in the
store's ``attempts`` meta (1 when absent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gen3deval.config import Protocol, protocol_from_params
from gen3deval.engine import pipeline as pl
from gen3deval.engine.shards import pipeline_filter
from gen3deval.engine.store import REFERENCE_SYSTEM, StageRow, Store

# Values stored by the score stage beside the metrics that rows carry.
_EXTRA_KEYS = ("volume_iou_method",)


def metrics_meta(keys: list[str]) -> dict[str, dict[str, Any]]:
    """{key: {higher_is_better, unit, display, scale}} from the metric registry."""
    from gen3deval.metrics.base import metric_info

    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            info = metric_info(key)
        except Exception:  # a metric this version cannot describe: keep the key, no direction claimed
            out[key] = {"higher_is_better": True, "unit": "", "display": key}
            continue
        out[key] = {
            "higher_is_better": bool(info.higher_is_better),
            "unit": info.unit,
            "display": info.display,
            "scale": getattr(info, "scale", 1.0),
        }
    return out


def build_meta(store: Store, protocol: Protocol | None = None) -> dict[str, Any]:
    """The run metadata of the contract: run_id, created, suite, systems, protocol, n_cases, metrics, and
    ``remote_jobs`` ({system: job counts}, :func:`gen3deval.engine.jobs_table.jobs_overview`) when the run
    has remote jobs."""
    proto = protocol or protocol_from_params(store.get_meta("protocol_obj"))
    from gen3deval.engine.jobs_table import jobs_overview, load_jobs

    suites = store.get_meta("suites", []) or []
    cases = store.get_meta("cases", {}) or {}
    jobs = load_jobs(store)
    # Only runs with remote jobs get the key: the metadata of other runs stays as it was.
    extra = {"remote_jobs": jobs_overview(jobs)} if jobs else {}
    return {
        "run_id": store.get_meta("run_id"),
        "created": store.get_meta("created"),
        "suite": {
            "name": " + ".join(s["name"] for s in suites) or "?",
            "description": "; ".join(s.get("description", s["name"]) for s in suites),
            "suites": suites,
        },
        "systems": list(store.get_meta("systems", []) or []),
        "protocol": store.get_meta("protocol"),
        "n_cases": len(cases),
        "metrics": metrics_meta(proto.metric_keys()),
        # Learned metrics whose model was not available at the last run ({key: how to provide it}).
        "skipped_metrics": store.get_meta("skipped_metrics", {}) or {},
        **extra,
    }


def _pipeline_rows(
    rows: dict[tuple[str, str, int, str], StageRow], case: str, system: str, attempt: int
) -> dict[str, StageRow]:
    """{stage: row} of one pipeline, the case's reference (system "", attempt 1) included."""
    out = {}
    ref = rows.get((case, REFERENCE_SYSTEM, 1, pl.REFERENCE))
    if ref is not None:
        out[pl.REFERENCE] = ref
    for stage in pl.PIPELINE_STAGES:
        r = rows.get((case, system, attempt, stage))
        if r is not None:
            out[stage] = r
    return out


def _contexts(store: Store, protocol: Protocol) -> dict[str, pl.Context]:
    """{system label: pipeline context}: the expected output of each system (from the stored spec)."""
    from gen3deval.systems.base import SYSTEMS

    spec = store.get_meta("spec", {}) or {}
    out: dict[str, pl.Context] = {}
    for s in spec.get("systems", []):
        output = SYSTEMS.get(s["name"]).output if s.get("name") in SYSTEMS else "any"
        program = True if output == "program" else False if output == "mesh" else None
        out[s["label"]] = pl.Context.of(protocol, program=program)
    return out


def _attempts(store: Store) -> dict[str, dict[str, int]]:
    return store.get_meta("attempts", {}) or {}


def assemble_row(
    case: str,
    category: str,
    system: str,
    attempt: int,
    stages: dict[str, StageRow],
    protocol: Protocol,
    fingerprint: dict[str, Any],
) -> dict[str, Any] | None:
    """The result row of one pipeline ({stage: row}, the reference included), or None while it is
    unfinished (a stage that applies has no row yet)."""
    ctx = pl.Context.of(protocol)
    state = pl.states(stages, ctx)
    if not pl.finished(state):
        return None
    ref = stages[pl.REFERENCE]
    has_ref = pl.has_reference(ref)
    row: dict[str, Any] = {
        "case": case,
        "category": category,
        "system": system,
        "attempt": attempt,
        "executable": False,
        "error_class": None,
        "error": None,
        # False: an image-only case (nothing to score against); None: unknown (its reference stage failed).
        "has_reference": has_ref if ref.ok else None,
    }
    for key in protocol.metric_keys():
        row[key] = None
    row["volume_iou_method"] = None
    row["timings"] = {name: round(r.seconds, 4) for name, r in stages.items()}
    row["artifacts"] = {
        "ref_image": ref.artifacts.get("image"),
        "render": None,
        "renders": [],
        "mesh": None,
        "program": None,
    }
    row["protocol"] = fingerprint

    def fail(r: StageRow) -> dict[str, Any]:
        row["error_class"] = r.error_class
        row["error"] = r.error
        return row

    if not ref.ok:
        return fail(ref)
    gen = stages[pl.GENERATE]
    row["artifacts"]["program"] = gen.artifacts.get("program")
    if isinstance(gen.value.get("remote"), dict):
        row["remote"] = gen.value["remote"]  # a hosted API's job: times, retries, cost (failed jobs too)
    if not gen.ok:
        return fail(gen)
    mesh_row = stages[pl.mesh_stage(stages, ctx)]
    if not mesh_row.ok:
        return fail(mesh_row)
    row["artifacts"]["mesh"] = mesh_row.artifacts.get("mesh")
    if isinstance(mesh_row.value.get("mesh_stats"), dict):
        row["mesh_stats"] = mesh_row.value["mesh_stats"]
    row["executable"] = True
    if state[pl.RENDER] != pl.NA:
        rn = stages[pl.RENDER]
        if rn.ok:
            renders = list(rn.artifacts.get("renders", []))
            row["artifacts"]["renders"] = renders
            row["artifacts"]["render"] = renders[0] if renders else None
            if rn.artifacts.get("renders_grey"):  # image suites: the same rig in the grey material
                row["artifacts"]["renders_grey"] = list(rn.artifacts["renders_grey"])
        else:
            # Not fatal: geometry is still scored; the reason is kept, the error class stays empty.
            row["error"] = f"render failed: {rn.error}"
    if ref.value.get("render_error") and row["error"] is None:
        row["error"] = f"reference render failed (no image metrics): {ref.value['render_error']}"
    if state[pl.SCORE] == pl.NA:
        return row
    sc = stages[pl.SCORE]
    if not sc.ok:
        row["executable"] = False
        return fail(sc)
    for key in protocol.metric_keys():
        v = sc.value.get(key)
        row[key] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    for key in _EXTRA_KEYS:
        row[key] = sc.value.get(key)
    for key in protocol.metric_keys():
        # How a metric was computed, or why it is undefined (a None that is not a failure).
        for extra in (f"{key}_method", f"{key}_reason"):
            if extra in sc.value:
                row[extra] = sc.value[extra]
    return row


def build_rows(store: Store) -> tuple[list[dict[str, Any]], list[tuple[str, str, int]]]:
    """(result rows, unfinished (case, system, attempt) pipelines) of everything the run folder was asked
    for: one row per (case, system, attempt), in case, system, attempt order."""
    protocol = protocol_from_params(store.get_meta("protocol_obj"))
    fingerprint = store.get_meta("protocol")
    cases = store.get_meta("cases", {}) or {}
    systems = store.get_meta("systems", []) or []
    attempts = _attempts(store)
    rows = store.all()
    keep = pipeline_filter(store)  # a shard's folder: only its own pipelines
    out: list[dict[str, Any]] = []
    unfinished: list[tuple[str, str, int]] = []
    for case, info in cases.items():
        for system in systems:
            if not keep(case, system):
                continue
            for attempt in range(1, int(attempts.get(system, {}).get(case, 1)) + 1):
                stages = _pipeline_rows(rows, case, system, attempt)
                row = assemble_row(
                    case, info.get("category", "default"), system, attempt, stages, protocol, fingerprint
                )
                if row is None:
                    unfinished.append((case, system, attempt))
                else:
                    out.append(row)
    return out, unfinished


def write_run_reports(run_dir: str | Path) -> tuple[Path, list[tuple[str, str, int]]]:
    """Rebuild rows and meta from the store and write the reports; returns (report.html, unfinished)."""
    from gen3deval.report import write_reports

    with Store(run_dir, readonly=True) as store:
        rows, unfinished = build_rows(store)
        meta = build_meta(store)
    meta["unfinished"] = len(unfinished)
    return write_reports(Path(run_dir), rows, meta), unfinished


def stage_progress(store: Store) -> dict[tuple[str, str], dict[str, int]]:
    """{(stage, system): {"done", "failed", "left"}} of the work the run folder was asked for.

    ``left`` counts stages still to run, including those whose upstream stage has not run yet when they
    will apply (as far as known: ``execute`` for systems expected to write programs, ``score`` unless the
    case turned out to have no reference). ``reference`` rows have the system ``""``; attempts add up.
    """
    protocol = protocol_from_params(store.get_meta("protocol_obj"))
    cases = store.get_meta("cases", {}) or {}
    systems = store.get_meta("systems", []) or []
    attempts = _attempts(store)
    contexts = _contexts(store, protocol)
    rows = store.all()
    out: dict[tuple[str, str], dict[str, int]] = {}

    def count(stage: str, system: str, state: str) -> None:
        c = out.setdefault((stage, system), {"done": 0, "failed": 0, "left": 0})
        c["left" if state in pl.LEFT else state] += 1

    keep = pipeline_filter(store)  # a shard's folder: only its own pipelines and their references
    for case in cases:
        mine = [system for system in systems if keep(case, system)]
        if systems and not mine:
            continue
        ref = rows.get((case, REFERENCE_SYSTEM, 1, pl.REFERENCE))
        count(pl.REFERENCE, REFERENCE_SYSTEM, pl.READY if ref is None else (pl.DONE if ref.ok else pl.FAILED))
        for system in mine:
            ctx = contexts.get(system, pl.Context.of(protocol))
            for attempt in range(1, int(attempts.get(system, {}).get(case, 1)) + 1):
                state = pl.states(_pipeline_rows(rows, case, system, attempt), ctx)
                for stage in pl.PIPELINE_STAGES:
                    if state[stage] in pl.COUNTED:
                        count(stage, system, state[stage])
    return out


def renderers_used(store: Store) -> list[dict[str, Any]]:
    """The distinct renderer descriptions recorded by the reference and render stages of a run (one
    entry when every image of the run came from the same renderer, as it should)."""
    seen: dict[str, dict[str, Any]] = {}
    for stage in ("reference", "render"):
        for row in store.rows(stage):
            info = row.value.get("renderer")
            if info:
                seen.setdefault(json.dumps(info, sort_keys=True), info)
    return list(seen.values())
