"""The revision report (issue 11, item 5): a run folder with k = 3 attempts per case written straight into a
real store (no engine), reported by the engine's ``write_run_reports``; every number of ``summary.json``'s
``revision`` and ``usage`` blocks is recomputed here by hand (numpy) from the stored result rows."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gen3deval.config import get_protocol
from gen3deval.engine.results import write_run_reports
from gen3deval.engine.store import Store
from gen3deval.metrics.base import metric_info
from gen3deval.report import read_results
from remote_runs import png

PROTOCOL = get_protocol({"name": "code3d"})
K = 3
CASES = {f"c{i}": ("chairs" if i < 4 else "mugs") for i in range(8)}
SYSTEMS = ["vlm-a", "vlm-b"]
METRICS = ("chamfer_l2", "fscore@0.01", "fscore@0.02", "fscore@0.05", "normal_consistency")


def _outcome(rng: np.random.Generator, case: int, system: int, attempt: int) -> dict[str, Any] | str:
    """A deterministic plan: some cases fail first and recover on revision; a few never run; one answer
    has no code. Returns metric values, or the failing stage's error class."""
    if system == 0 and case in (1, 2) and attempt == 1:
        return "runtime_error"
    if system == 0 and case == 3 and attempt <= 2:
        return "no_code"
    if system == 1 and case == 5:
        return "runtime_error"  # never recovers
    if system == 1 and case in (0, 6) and attempt == 2:
        return "runtime_error"  # a revision can break a working program
    cd = float(rng.uniform(0.001, 0.05))
    f = sorted(rng.uniform(0.05, 0.95, size=3))
    return {
        "chamfer_l2": cd,
        "fscore@0.01": float(f[0]),
        "fscore@0.02": float(f[1]),
        "fscore@0.05": float(f[2]),
        "normal_consistency": float(rng.uniform(0.3, 0.95)),
    }


def _put(store: Store, case: str, system: str, attempt: int, stage: str, ok: bool = True, **kw: Any) -> None:
    now = time.time()
    store.put(
        case=case, system=system, attempt=attempt, stage=stage, status="done" if ok else "failed",
        input_hash=f"{case}{system}{attempt}{stage}", protocol_hash="p", started=now - 1.0, finished=now, **kw,
    )  # fmt: skip


def make_revision_run(run_dir: Path, k: int = K) -> None:
    """The store of a run: 8 cases in 2 categories, 2 vlm systems, k attempts each (reference, generate with
    a ``remote`` model-call record, execute, render, score)."""
    rng = np.random.default_rng(11)
    with Store(run_dir) as store:
        store.set_meta("run_id", "revision-test")
        store.set_meta("created", "2026-01-01T00:00:00+00:00")
        store.set_meta("protocol", {"name": PROTOCOL.name, "version": PROTOCOL.version, "hash": "fp"})
        store.set_meta("protocol_obj", PROTOCOL.params())
        store.set_meta("systems", SYSTEMS)
        store.set_meta("cases", {c: {"id": c, "category": cat, "suite": "s"} for c, cat in CASES.items()})
        store.set_meta("suites", [{"name": "s", "description": "objects"}])
        store.set_meta("spec", {"systems": [{"name": "vlm", "label": s} for s in SYSTEMS]})
        store.set_meta("attempts", {s: dict.fromkeys(CASES, k) for s in SYSTEMS})
        for ci, case in enumerate(CASES):
            ref = png(run_dir, f"ref/{case}.png", (20 * ci, 90, 200))
            _put(store, case, "", 1, "reference", artifacts={"image": ref, "mesh": f"ref/{case}.glb"})
            for si, system in enumerate(SYSTEMS):
                for a in range(1, k + 1):
                    plan = _outcome(rng, ci, si, a)
                    remote = {
                        "service": "vlm",
                        "prompt_tokens": 1000 + 10 * ci + a,
                        "completion_tokens": 200 + ci * a,
                        "cost": 0.001 * (si + 1) if ci % 2 == 0 else None,  # only some calls report a cost
                        "latency_s": 0.5 + 0.25 * ci + 0.1 * a,
                        "finish_reason": "stop",
                        "model": "m",
                    }
                    key = (case, system, a)
                    if plan == "no_code":
                        _put(store, *key, "generate", ok=False, value={"remote": remote},
                             error_class="no_code", error="no threejs program in the answer")  # fmt: skip
                        continue
                    prog = f"art/{case}/{system}/{a}/program.js"
                    _put(store, *key, "generate", artifacts={"program": prog}, value={"remote": remote})
                    if plan == "runtime_error":
                        _put(store, *key, "execute", ok=False, error_class="runtime_error",
                             error=f"TypeError at attempt {a}")  # fmt: skip
                        continue
                    _put(store, *key, "execute", artifacts={"mesh": f"art/{case}/{system}/{a}/m.glb"})
                    render = png(run_dir, f"art/{case}/{system}/{a}/ref.png", (200, 30 * a, 10 * ci))
                    _put(store, *key, "render", artifacts={"renders": [render]})
                    assert isinstance(plan, dict)
                    _put(store, *key, "score", value=plan)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    run_dir = tmp_path_factory.mktemp("revision")
    make_revision_run(run_dir)
    _, unfinished = write_run_reports(run_dir)
    assert unfinished == []
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return run_dir, summary, read_results(run_dir / "results.jsonl")


def _by_hand(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """(valid, all) of one metric: the registry's statistic; failures = its worst (or the worst valid value)."""
    spec = metric_info(key)
    fn = np.mean if spec.aggregate == "mean" else np.median
    valid = np.asarray([r[key] for r in rows if r["executable"] and r[key] is not None], dtype=np.float64)
    worst = min(spec.worst, valid.min()) if spec.higher_is_better else max(spec.worst, valid.max())
    every = np.asarray([r[key] if r["executable"] else worst for r in rows], dtype=np.float64)
    return float(fn(valid)), float(fn(every))


def _best(rows: list[dict[str, Any]], head: str) -> dict[str, dict[str, Any]]:
    """Per case, the best attempt by ``head`` (higher is better here): executable first, then the value,
    then the earliest attempt."""
    out: dict[str, dict[str, Any]] = {}
    for case in sorted({r["case"] for r in rows}):
        tries = sorted((r for r in rows if r["case"] == case), key=lambda r: r["attempt"])
        ok = [r for r in tries if r["executable"]]
        out[case] = max(ok, key=lambda r: (r[head], -r["attempt"])) if ok else tries[0]
    return out


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def test_revision_block_matches_numbers_by_hand(
    run: tuple[Path, dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, summary, rows = run
    head = summary["headline"]
    assert head == "fscore@0.02" and metric_info(head).higher_is_better
    assert len(rows) == len(CASES) * len(SYSTEMS) * K  # every attempt is a row
    for s in summary["systems"]:
        rev = s["revision"]
        srows = [r for r in rows if r["system"] == s["system"]]
        assert rev["k"] == K and rev["n_cases"] == len(CASES) and rev["ranking_metric"] == head
        assert "oracle" in rev["best_is"]
        picked = {
            "single": [r for r in srows if r["attempt"] == 1],
            "final": [r for r in srows if r["attempt"] == K],
            "best": list(_best(srows, head).values()),
        }
        for mode, prow in picked.items():
            block = rev[mode]
            assert block["n"] == len(CASES)
            assert block["n_executable"] == sum(r["executable"] for r in prow)
            assert block["vsr"]["value"] == pytest.approx(np.mean([r["executable"] for r in prow]))
            for key in METRICS:
                valid, every = _by_hand(prow, key)
                got = block["metrics"][key]
                assert got["valid"]["value"] == pytest.approx(valid), (s["system"], mode, key)
                assert got["all"]["value"] == pytest.approx(_json_num(every)), (s["system"], mode, key)
                assert got["valid"]["n"] == sum(r["executable"] for r in prow)
        # Recovery: share executable at some attempt <= i; executable_at: at attempt i itself.
        ok = np.asarray([[r["executable"] for r in sorted(srows, key=lambda r: (r["case"], r["attempt"]))]])
        ok = ok.reshape(len(CASES), K)
        assert rev["executable_at"] == pytest.approx(ok.mean(axis=0).tolist())
        assert rev["recovery"] == pytest.approx(np.maximum.accumulate(ok, axis=1).mean(axis=0).tolist())


def test_recovery_rises_and_best_is_an_upper_bound(
    run: tuple[Path, dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, summary, _ = run
    a = next(s for s in summary["systems"] if s["system"] == "vlm-a")["revision"]
    # vlm-a: 3 of 8 fail at attempt 1 (two runtime errors, one no_code), 1 still at attempt 2, none at 3.
    assert a["recovery"] == a["executable_at"] == pytest.approx([5 / 8, 7 / 8, 1.0])
    b = next(s for s in summary["systems"] if s["system"] == "vlm-b")["revision"]
    # vlm-b: a revision breaks two working programs at attempt 2; one case never runs.
    assert b["executable_at"] == pytest.approx([7 / 8, 5 / 8, 7 / 8])
    assert b["recovery"] == pytest.approx([7 / 8, 7 / 8, 7 / 8])
    for rev in (a, b):
        for mode in ("single", "final"):
            assert (
                rev["best"]["metrics"]["fscore@0.02"]["all"]["value"]
                >= rev[mode]["metrics"]["fscore@0.02"]["all"]["value"]
            )


def test_per_category_and_usage_by_hand(run: tuple[Path, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, summary, rows = run
    head = summary["headline"]
    for s in summary["systems"]:
        srows = [r for r in rows if r["system"] == s["system"]]
        cats = s["revision"]["per_category"]
        assert sorted(cats) == ["chairs", "mugs"]
        for cat, block in cats.items():
            crows = [r for r in srows if r["category"] == cat]
            assert block["k"] == K and block["n_cases"] == 4
            final = [r for r in crows if r["attempt"] == K]
            best = list(_best(crows, head).values())
            assert block["final"]["metrics"]["chamfer_l2"]["all"]["value"] == pytest.approx(
                _json_num(_by_hand(final, "chamfer_l2")[1])
            )
            assert block["best"]["metrics"]["fscore@0.05"]["all"]["value"] == pytest.approx(
                _by_hand(best, "fscore@0.05")[1]
            )
            ok = [np.mean([r["executable"] for r in crows if r["attempt"] == i]) for i in range(1, K + 1)]
            assert block["executable_at"] == pytest.approx(ok)
            assert block["recovery"] == pytest.approx(np.maximum.accumulate(ok).tolist())
        # Usage: every attempt is a model call, failed ones included.
        u = s["usage"]
        recs = [r["remote"] for r in srows]
        assert u["calls"] == len(CASES) * K
        assert u["prompt_tokens"] == sum(x["prompt_tokens"] for x in recs)
        assert u["completion_tokens"] == sum(x["completion_tokens"] for x in recs)
        assert u["cost"] == pytest.approx(sum(x["cost"] for x in recs if x["cost"] is not None))
        assert u["latency_s"]["median"] == pytest.approx(np.median([x["latency_s"] for x in recs]))
        assert u["finish_reasons"] == {"stop": len(CASES) * K}


def test_report_page_has_the_paper_table_curve_and_every_attempt(
    run: tuple[Path, dict[str, Any], list[dict[str, Any]]],
) -> None:
    run_dir, summary, rows = run
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    start = page.index("<h2>Attempts: single-shot vs final")
    section = page[start : page.index("<h2>", start + 4)]
    for text in ("Single", "Final@k", "Best@&lt;=k (oracle)", "oracle diagnostic", "CD x10", "F@5", "<svg"):
        assert text in section, text
    assert "The same per category" in section and "vlm-a / chairs" in section and "vlm-b / mugs" in section
    # Paper table: per system the all-cases median CD of final@k (x1000, as displayed).
    a = next(s for s in summary["systems"] if s["system"] == "vlm-a")["revision"]
    cd_final = a["final"]["metrics"]["chamfer_l2"]["all"]["value"]
    assert f"{cd_final * 1000:.3g}"[:3] in section
    # The curve: per system a recovery polyline and an attempt-alone one, k points each.
    lines = re.findall(r'<polyline (?:class="at" )?points="([^"]*)"', section)
    assert len(lines) == 2 * len(SYSTEMS) and all(len(p.split()) == K for p in lines)
    # Every attempt per case: one row per (case, system); an image per executable attempt (+ the reference),
    # the error class for the others.
    gallery = section[section.index("Every attempt per case") :]
    assert gallery.count("<tr>") - 1 == len(CASES) * len(SYSTEMS)
    n_ok = sum(r["executable"] for r in rows)
    assert gallery.count("<img ") == n_ok + len(CASES) * len(SYSTEMS)
    assert gallery.count("runtime_error") == sum(r["error_class"] == "runtime_error" for r in rows)
    assert "no_code" in gallery
    # Model-call totals.
    assert "prompt tokens" in section and f"{a and summary['systems'][0]['usage']['calls']}" in section


def test_single_attempt_run_has_no_revision_block(tmp_path: Path) -> None:
    make_revision_run(tmp_path, k=1)
    write_run_reports(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    for s in summary["systems"]:
        assert s["revision"] is None
        assert s["usage"]["calls"] == len(CASES)  # model calls are still totalled
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Every attempt per case" not in page and "prompt tokens" in page
