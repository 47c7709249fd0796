"""The engine with stand-in stages: planning, skipping finished stages, failures, retries, staleness, locking."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from engine_standins import FUNCTIONS

from gen3deval.config import SystemSpec, get_protocol
from gen3deval.engine.results import build_rows, stage_progress
from gen3deval.engine.runner import CaseEntry, Engine, RunLock
from gen3deval.engine.store import REFERENCE_SYSTEM, Store
from gen3deval.errors import ConfigError, UserInputError
from gen3deval.suites.base import Case

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1", "volume_iou"], "image_metrics": []})


def make_engine(
    run_dir: Path,
    case_ids: list[str],
    systems: dict[str, dict[str, Any]],
    *,
    jobs: int = 0,
    protocol: Any = PROTOCOL,
) -> Engine:
    """jobs=0: stages in this process (fast); jobs >= 1: spawned worker processes."""
    entries = [
        CaseEntry(key=c, case=Case(id=c, category=f"cat{i % 2}"), suite="t") for i, c in enumerate(case_ids)
    ]
    specs = [
        SystemSpec(name="standin", label=label, settings=settings) for label, settings in systems.items()
    ]
    return Engine(
        run_dir,
        entries,
        specs,
        protocol,
        fingerprint={"name": protocol.name, "hash": "test"},
        jobs=jobs,
        functions=FUNCTIONS,
        needs_reference=dict.fromkeys(systems, True),
        inline=jobs == 0,
    )


SYSTEMS = {"meshsys": {}, "progsys": {"program": True}}
CASES = ["c0", "c1", "c2", "c3"]


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "timings"} for r in rows]


def test_full_run_then_rerun_skips_everything(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, CASES, SYSTEMS)
    res = eng.run()
    # 4 references, 8 generates, 4 executes (program system), 8 renders, 8 scores.
    assert res.ran == {"reference": 4, "generate": 8, "execute": 4, "render": 8, "score": 8}
    assert sum(res.failed.values()) == 0
    with Store(tmp_path, readonly=True) as store:
        before = store.all()
        rows, unfinished = build_rows(store)
    assert len(before) == 32 and not unfinished
    assert len(rows) == 8
    assert all(r["executable"] and r["error_class"] is None for r in rows)
    assert {r["system"] for r in rows} == {"meshsys", "progsys"}
    assert {r["category"] for r in rows} == {"cat0", "cat1"}
    # The stand-in score is a hash of the pipeline's files: different per (case, system).
    assert len({r["chamfer_l1"] for r in rows}) == 8
    prog = next(r for r in rows if r["system"] == "progsys")
    assert prog["artifacts"]["program"].startswith("artifacts/") and prog["artifacts"]["mesh"]
    assert (
        len(prog["artifacts"]["renders"]) == 2
        and prog["artifacts"]["render"] == prog["artifacts"]["renders"][0]
    )

    res2 = make_engine(tmp_path, CASES, SYSTEMS).run()
    assert sum(res2.ran.values()) == 0
    assert res2.skipped == res.ran
    with Store(tmp_path, readonly=True) as store:
        after = store.all()
        rows2, _ = build_rows(store)
        assert len(store.sessions()) == 2
    assert after == before  # same timestamps, same session, runs still 1
    assert all(r.runs == 1 and r.session == 1 for r in after.values())
    assert _strip(rows2) == _strip(rows)


def test_artifacts_are_content_addressed(tmp_path: Path) -> None:
    make_engine(tmp_path, ["c0"], {"meshsys": {}}).run()
    with Store(tmp_path, readonly=True) as store:
        gen = store.get("c0", "meshsys", 1, "generate")
        ref = store.get("c0", REFERENCE_SYSTEM, 1, "reference")
    assert gen is not None and ref is not None
    rel = gen.artifacts["mesh"]
    data = (tmp_path / rel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert rel == f"artifacts/{digest[:2]}/{digest}.txt"
    assert data.startswith(b"mesh:meshsys:c0:ref:c0")
    # The reference's mesh and image are the same bytes: stored once.
    assert ref.artifacts["mesh"] == ref.artifacts["image"]
    assert not (tmp_path / "tmp").exists()  # scratch is cleaned up


def test_worker_processes_give_the_same_rows_as_inline(tmp_path: Path) -> None:
    make_engine(tmp_path / "a", CASES, SYSTEMS, jobs=0).run()
    make_engine(tmp_path / "b", CASES, SYSTEMS, jobs=2).run()
    with Store(tmp_path / "a", readonly=True) as sa, Store(tmp_path / "b", readonly=True) as sb:
        ra, _ = build_rows(sa)
        rb, _ = build_rows(sb)
    assert _strip(ra) == _strip(rb)


def test_failures_are_stored_and_the_run_goes_on(tmp_path: Path) -> None:
    cases = ["ok1", "missing1", "crash1", "bad1", "badref1", "noref1"]
    systems = {"meshsys": {"fail": ["missing1"], "crash": ["crash1"]}, "progsys": {"program": True}}
    res = make_engine(tmp_path, cases, systems).run()
    assert res.failed["generate"] == 2 and res.failed["reference"] == 1
    with Store(tmp_path, readonly=True) as store:
        rows, unfinished = build_rows(store)
        progress = stage_progress(store)
    assert not unfinished
    by = {(r["case"], r["system"]): r for r in rows}
    assert len(by) == 12
    assert by[("ok1", "meshsys")]["executable"] and by[("ok1", "meshsys")]["chamfer_l1"] is not None
    miss = by[("missing1", "meshsys")]
    assert (miss["executable"], miss["error_class"]) == (False, "missing_output")
    assert "no output for missing1" in miss["error"] and miss["chamfer_l1"] is None
    crash = by[("crash1", "meshsys")]
    assert crash["error_class"] == "generation_error" and "RuntimeError: boom on crash1" in crash["error"]
    # The program text contains "bad": the stand-in executor fails it like a runtime error.
    bad = by[("bad1", "progsys")]
    assert (bad["executable"], bad["error_class"]) == (False, "runtime")
    assert bad["artifacts"]["program"] is not None
    for s in systems:
        assert by[("badref1", s)]["error_class"] == "reference_error"
        # No reference: the candidate exists and is rendered, but there is nothing to score against.
        noref = by[("noref1", s)]
        assert noref["executable"] and noref["error_class"] is None and noref["chamfer_l1"] is None
    assert progress[("reference", "")] == {"done": 5, "failed": 1, "left": 0}
    assert progress[("generate", "meshsys")] == {"done": 3, "failed": 2, "left": 0}
    assert progress[("execute", "progsys")] == {"done": 4, "failed": 1, "left": 0}
    assert all(c["left"] == 0 for c in progress.values())


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    res = make_engine(tmp_path / "run", ["c0", "c1"], {"remote": {"flaky": str(flaky)}}).run()
    assert res.failed["generate"] == 0
    assert (flaky / "c0.count").read_text() == "2"  # failed once, retried once


def test_changed_settings_rerun_only_what_depends_on_them(tmp_path: Path) -> None:
    make_engine(tmp_path, ["c0"], {"meshsys": {}}).run()
    # A new setting changes the generate stage's inputs; its output is byte-identical, so the stages after
    # it (keyed by the output's content hash) stay done.
    res = make_engine(tmp_path, ["c0"], {"meshsys": {"tag": 1}}).run()
    assert res.ran["generate"] == 1 and res.ran["render"] == 0 and res.ran["score"] == 0
    with Store(tmp_path, readonly=True) as store:
        gen = store.get("c0", "meshsys", 1, "generate")
        rnd = store.get("c0", "meshsys", 1, "render")
    assert gen is not None and rnd is not None
    assert (gen.runs, gen.session) == (2, 2)
    assert (rnd.runs, rnd.session) == (1, 1)


def test_other_protocol_parameters_are_refused(tmp_path: Path) -> None:
    make_engine(tmp_path, ["c0"], {"meshsys": {}}).run()
    other = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": [], "samples": 5000})
    with pytest.raises(ConfigError, match="protocol"):
        make_engine(tmp_path, ["c0"], {"meshsys": {}}, protocol=other).run()


def test_a_locked_run_folder_is_refused(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        with pytest.raises(UserInputError, match="another gen3deval run"):
            make_engine(tmp_path, ["c0"], {"meshsys": {}}).run()
    finally:
        lock.release()
    make_engine(tmp_path, ["c0"], {"meshsys": {}}).run()  # free again


def test_added_system_runs_only_its_stages(tmp_path: Path) -> None:
    make_engine(tmp_path, CASES, {"meshsys": {}}).run()
    res = make_engine(tmp_path, CASES, SYSTEMS).run()
    assert res.ran == {"reference": 0, "generate": 4, "execute": 4, "render": 4, "score": 4}
    with Store(tmp_path, readonly=True) as store:
        rows, _ = build_rows(store)
    assert len(rows) == 8


def test_a_stage_that_crashes_its_worker_fails_alone_and_the_run_goes_on(tmp_path: Path) -> None:
    # c1's generate kills its own process (SIGSEGV, as a native library crash would); the stages in flight
    # with it are collateral: they are rerun, alone, and succeed.
    res = make_engine(tmp_path, CASES, {"meshsys": {"segfault": ["c1"], "sleep": 0.05}}, jobs=2).run()
    assert res.failed == {"reference": 0, "generate": 1, "execute": 0, "render": 0, "score": 0}
    with Store(tmp_path, readonly=True) as store:
        rows, unfinished = build_rows(store)
        stage_rows = store.all()
    assert not unfinished and len(rows) == 4
    by = {r["case"]: r for r in rows}
    assert by["c1"]["error_class"] == "generation_error" and "worker process died" in by["c1"]["error"]
    assert all(by[c]["executable"] and by[c]["chamfer_l1"] is not None for c in ("c0", "c2", "c3"))
    assert all(r.runs == 1 for r in stage_rows.values())


@pytest.mark.parametrize("jobs", [0, 1])
def test_missing_runtime_mid_run_stops_the_run_and_keeps_committed_rows(tmp_path: Path, jobs: int) -> None:
    """A runtime that disappears mid-run is the environment's fault: the run stops with the error instead of
    recording the case as a program failure, and what was committed stays (a rerun resumes)."""
    from gen3deval.errors import DependencyError

    eng = make_engine(tmp_path, CASES, {"meshsys": {"no_runtime": ["c2"]}}, jobs=jobs)
    with pytest.raises(DependencyError, match="node not found"):
        eng.run()
    with Store(tmp_path, readonly=True) as store:
        rows = store.all()
    assert not any(r.error_class == "runtime" or "node not found" in (r.error or "") for r in rows.values())
    assert (CASES[0], REFERENCE_SYSTEM, 1, "reference") in rows
    ok = make_engine(tmp_path, CASES, {"meshsys": {}}, jobs=0).run()
    assert ok.skipped["reference"] >= 1
