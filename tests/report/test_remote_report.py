"""The report of an image suite with remote systems (issue 10, section 3): jobs / times / cost / mesh statistics
per system (HTML and summary.json), the photo beside every system's turntable, mixed and non-remote runs,
and the plug point of reference-free metrics. Stores are written directly (real SQLite, real PNGs)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gen3deval.cli import main
from gen3deval.engine.results import build_meta, build_rows, write_run_reports
from gen3deval.engine.store import Store
from gen3deval.report import write_reports
from gen3deval.report.image_gallery import image_gallery_html, per_system, reference_free_metrics
from gen3deval.report.remote_jobs import distribution, human_duration, systems_html
from gen3deval.report.summary import summarize
from remote_runs import VIEWS, Job, make_run

CASES = ["cat", "dog", "mug", "shoe"]
SYSTEMS = ["csm-base", "csm-kit", "local"]
T0 = 1_700_000_000.0


def _remote(**kw: Any) -> dict[str, Any]:
    base = {"service": "csm", "job_type": "image_to_3d", "sessions": ["SESSION_1"], "try": 1, "retries": 0}
    base.update(resubmitted=0, polls=10, parts=0, cost=None, wait_s=None, server_s=None, total_s=None)
    return {**base, **kw}


def _stats(faces: int, watertight: bool, textured: bool, size: int, components: int = 1) -> dict[str, Any]:
    return {
        "faces": faces,
        "vertices": faces // 2,
        "components": components,
        "watertight": watertight,
        "has_texture": textured,
        "file_bytes": size,
    }


def _try(state: str, **kw: Any) -> dict[str, Any]:
    return {"state": state, "created": T0, "submitted": T0 + 1, "finished": T0 + 100, **kw}


def _jobs() -> list[Job]:
    fail_msg = "session failed: <b>image too small</b>"
    return [
        # csm-base: 3 complete (one with 2 retried requests, one resubmitted), 1 failed twice (--retry-failed).
        Job("cat", "csm-base", remote=_remote(wait_s=2.0, server_s=1800.0, total_s=1850.0, cost=10.0),
            mesh_stats=_stats(200_000, True, True, 5_000_000), tries=[_try("complete", cost=10.0)]),
        Job("dog", "csm-base", remote=_remote(wait_s=5.0, server_s=2400.0, total_s=2500.0, cost=10.0, retries=2),
            mesh_stats=_stats(150_000, False, True, 4_000_000, 3),
            tries=[_try("complete", cost=10.0, retries=2)]),
        Job("mug", "csm-base", remote=_remote(wait_s=1.0, server_s=1200.0, total_s=1300.0, resubmitted=1),
            mesh_stats=_stats(90_000, True, False, 1_000_000), tries=[_try("complete", resubmitted=1)]),
        Job("shoe", "csm-base", ok=False, remote=_remote(wait_s=3.0, server_s=600.0, **{"try": 2}),
            error_class="generation_error", error=fail_msg,
            tries=[_try("failed", message=fail_msg), _try("failed", message=fail_msg)]),
        # csm-kit: parts 5, 7, 3; one job timed out.
        Job("cat", "csm-kit", remote=_remote(job_type="image_to_kit", parts=5, total_s=100.0),
            mesh_stats=_stats(1000, False, True, 10_000, 5), tries=[_try("complete")]),
        Job("dog", "csm-kit", remote=_remote(job_type="image_to_kit", parts=7, total_s=200.0),
            mesh_stats=_stats(2000, False, True, 20_000, 7), tries=[_try("complete")]),
        Job("mug", "csm-kit", ok=False, remote=_remote(job_type="image_to_kit"), error_class="timeout",
            error="the job exceeded timeout_min = 90", tries=[_try("timeout")]),
        Job("shoe", "csm-kit", remote=_remote(job_type="image_to_kit", parts=3, total_s=300.0),
            mesh_stats=_stats(3000, True, True, 30_000, 3), tries=[_try("complete")]),
        # local: a system on this machine, no remote job.
        *[Job(c, "local", mesh_stats=_stats(100 * (i + 1), True, False, 1000 * (i + 1))) for i, c in enumerate(CASES)],
    ]  # fmt: skip


def _system(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in summary["systems"] if s["system"] == name)


def _section(html: str, title: str) -> str:
    """The HTML from the ``<h2>`` starting with ``title`` to the next ``<h2>`` (or the end)."""
    start = html.index(f"<h2>{title}")
    end = html.find("<h2>", start + 4)
    return html[start : end if end > 0 else len(html)]


@pytest.fixture
def image_run(tmp_path: Path) -> Path:
    make_run(tmp_path, CASES, SYSTEMS, _jobs())
    return tmp_path


def test_summary_counts_times_cost_and_mesh_stats(image_run: Path) -> None:
    _, unfinished = write_run_reports(image_run)
    assert unfinished == []
    summary = json.loads((image_run / "summary.json").read_text())
    base = _system(summary, "csm-base")["remote"]
    assert base["source"] == "jobs table"
    assert {k: base[k] for k in ("jobs", "tries", "complete", "failed", "timed_out", "running")} == {
        "jobs": 4,
        "tries": 5,
        "complete": 3,
        "failed": 2,
        "timed_out": 0,
        "running": 0,
    }
    assert (base["retried"], base["retries"], base["resubmitted"], base["retried_failed"]) == (2, 2, 1, 1)
    assert base["cost"] == 20.0
    waits, totals = [2.0, 5.0, 1.0, 3.0], [1850.0, 2500.0, 1300.0]
    assert base["wait_s"] == {
        "n": 4,
        "median": np.median(waits),
        "p90": pytest.approx(np.percentile(waits, 90)),
    }
    assert base["total_s"]["n"] == 3 and base["total_s"]["median"] == np.median(totals) == 1850.0
    assert base["total_s"]["p90"] == pytest.approx(2370.0)  # 1850 + 0.8 * (2500 - 1850)
    assert base["server_s"]["median"] == pytest.approx(np.median([1800, 2400, 1200, 600]))
    assert base["parts"] is None
    mesh = _system(summary, "csm-base")["mesh_stats"]
    assert mesh["n"] == 3 and mesh["faces"] == 150_000 and mesh["vertices"] == 75_000
    assert mesh["components"] == 1 and mesh["file_bytes"] == 4_000_000
    assert mesh["watertight"] == pytest.approx(2 / 3) and mesh["textured"] == pytest.approx(2 / 3)

    kit = _system(summary, "csm-kit")
    assert (kit["remote"]["complete"], kit["remote"]["timed_out"], kit["remote"]["failed"]) == (3, 1, 0)
    assert kit["remote"]["parts"] == {
        "n": 3,
        "median": 5.0,
        "p90": pytest.approx(np.percentile([5, 7, 3], 90)),
    }
    assert kit["remote"]["cost"] is None
    local = _system(summary, "local")
    assert local["remote"] is None
    assert local["mesh_stats"]["faces"] == np.median([100, 200, 300, 400])
    assert local["mesh_stats"]["watertight"] == 1.0
    # No reference: no reference-based metric anywhere, VSR only.
    assert summary["metrics"] == {} and summary["headline"] is None
    assert _system(summary, "csm-base")["n_executable"] == 3

    rows = [json.loads(line) for line in (image_run / "results.jsonl").read_text().splitlines()]
    cat = next(r for r in rows if r["case"] == "cat" and r["system"] == "csm-base")
    assert cat["has_reference"] is False and cat["mesh_stats"]["faces"] == 200_000
    assert len(cat["artifacts"]["renders"]) == len(cat["artifacts"]["renders_grey"]) == VIEWS
    shoe = next(r for r in rows if r["case"] == "shoe" and r["system"] == "csm-base")
    assert shoe["remote"]["server_s"] == 600.0 and shoe["error_class"] == "generation_error"


def test_html_jobs_table_and_image_gallery(image_run: Path) -> None:
    report, _ = write_run_reports(image_run)
    html = report.read_text()
    jobs = _section(html, "Jobs and meshes per system")
    # system, jobs, tries, complete, failed, timed out, running, unconfirmed
    assert (
        '<tr><td class="l">csm-base</td><td>4</td><td>5</td><td>3</td><td>2</td><td>0</td><td>0</td><td>0</td>'
        in jobs
    )
    assert '<tr><td class="l">csm-kit</td><td>4</td><td>4</td><td>3</td><td>0</td><td>1</td>' in jobs
    base_row = jobs[jobs.index('<td class="l">csm-base</td>') :].split("</tr>")[0]
    assert ">31 min<" in base_row and "p90 40 min" in base_row  # total: median 1850 s, p90 2370 s
    assert "2 retried requests; 1 resubmitted; 1 by --retry-failed" in base_row
    assert "<td>20</td>" in base_row  # cost
    kit_row = jobs[jobs.index('<td class="l">csm-kit</td>') :].split("</tr>")[0]
    assert 'title="median over 3 kits">5</td>' in kit_row
    mesh_rows = jobs[jobs.index("<th>meshes</th>") :]
    assert '<td class="l">local</td><td>4</td><td>250</td>' in mesh_rows  # median of 100..400 faces
    assert "<td>67%</td><td>67%</td><td>4.0 MB</td>" in mesh_rows  # csm-base watertight, textured, size

    gallery = _section(html, "Images (4)")
    assert "<h2>Cases" not in html  # no per-case metric table without references
    for c in CASES:
        assert f">{c}</h3>" in gallery
    cat = gallery[gallery.index(">cat</h3>") : gallery.index(">dog</h3>")]
    # The run's system order, not the VSR ranking (local ranks first).
    assert cat.index("<b>csm-base</b>") < cat.index("<b>csm-kit</b>") < cat.index("<b>local</b>")
    zooms = re.findall(r'<a class="zoom" href="([^"]*)" data-full="([^"]*)"', gallery)
    ok_pipelines = 3 + 3 + 4
    assert len(zooms) == len(CASES) + ok_pipelines * 2 * VIEWS  # photos + asset and grey turntables
    assert all(full.startswith("data:image/") for _, full in zooms)
    assert sum(1 for href, _ in zooms if href.startswith("in/")) == len(CASES)
    assert sum(1 for href, _ in zooms if re.search(r"/g\d\.png$", href)) == ok_pipelines * VIEWS
    # Failures show their class and the server's message, escaped.
    assert "generation_error" in gallery and "&lt;b&gt;image too small&lt;/b&gt;" in gallery
    assert "<b>image too small" not in html
    assert "timeout" in gallery and "timeout_min = 90" in gallery
    assert "200,000 faces · 1 component · watertight · textured · total 31 min" in gallery
    assert "5 parts" in gallery


def test_report_out_elsewhere_keeps_turntables(
    image_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("out")
    assert main(["report", str(image_run), "--out", str(out)]) == 0
    gallery = _section((out / "report.html").read_text(), "Images (4)")
    zooms = re.findall(r'<a class="zoom" href="([^"]*)" data-full="data:image/', gallery)
    assert len(zooms) == len(CASES) + 10 * 2 * VIEWS


def test_counts_from_rows_without_a_jobs_table(image_run: Path) -> None:
    """Rows alone (e.g. results.jsonl from elsewhere): counts come from the rows' error classes."""
    with Store(image_run, readonly=True) as store:
        rows, _ = build_rows(store)
        meta = build_meta(store)
    assert set(meta["remote_jobs"]) == {"csm-base", "csm-kit"}
    del meta["remote_jobs"]
    s = summarize(rows, meta, n_resamples=100)
    base = _system(s, "csm-base")["remote"]
    assert base["source"] == "result rows"
    assert (base["jobs"], base["complete"], base["failed"], base["timed_out"]) == (4, 3, 1, 0)
    assert (base["retried"], base["retries"], base["retried_failed"], base["cost"]) == (2, 2, 1, 20.0)
    kit = _system(s, "csm-kit")["remote"]
    assert (kit["complete"], kit["timed_out"]) == (3, 1)


def test_mixed_run_has_both_galleries(tmp_path: Path) -> None:
    jobs = [j for j in _jobs() if j.system != "csm-kit"]
    make_run(tmp_path, CASES, ["csm-base", "local"], jobs, reference_cases=("cat",))
    html = write_run_reports(tmp_path)[0].read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "chamfer_l1" in summary["metrics"]
    cases = _section(html, "Cases (1)")
    assert "cat" in cases and "dog" not in cases
    images = _section(html, "Images (3)")
    assert ">cat</h3>" not in images and ">dog</h3>" in images
    assert "Jobs and meshes per system" in html


def test_runs_without_remote_jobs_or_images_are_unchanged(tmp_path: Path) -> None:
    rows = [
        {"case": f"c{i}", "system": s, "executable": True, "chamfer_l1": 0.01 * (i + 1), "artifacts": {}}
        for i in range(3)
        for s in ("a", "b")
    ]
    html = write_reports(tmp_path, rows, {"systems": ["a", "b"]}, n_resamples=100).read_text()
    assert "Jobs and meshes" not in html and "<h2>Images" not in html and "<h2>Cases (3)</h2>" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(s["remote"] is None and s["mesh_stats"] is None for s in summary["systems"])


def test_reference_free_metric_plug_point(image_run: Path) -> None:
    """Where CLIP image-to-render similarity goes: per (case, system) values -> captions and system medians."""
    with Store(image_run, readonly=True) as store:
        rows, _ = build_rows(store)
    values = {
        ("cat", "csm-base"): 0.81,
        ("dog", "csm-base"): 0.6,
        ("mug", "csm-base"): None,
        ("cat", "local"): 0.3,
    }
    for r in rows:
        if (r["case"], r["system"]) in values:
            r["clip_sim"] = values[(r["case"], r["system"])]
    extra = reference_free_metrics(rows, keys=("clip_sim",))
    assert extra[("cat", "csm-base")] == {"clip_sim": 0.81} and extra[("mug", "csm-base")] == {
        "clip_sim": None
    }
    assert ("dog", "local") not in extra
    med = per_system(extra)
    assert med["csm-base"] == {"clip_sim (median)": f"{np.median([0.81, 0.6]):.4g} (n=2)"}
    gallery = image_gallery_html(rows, SYSTEMS, image_run, extra=extra)
    assert "clip_sim 0.81" in gallery and "clip_sim -" in gallery
    s = summarize(rows, {"systems": SYSTEMS}, n_resamples=100)
    table = systems_html(s, med)
    assert "<th>clip_sim (median)</th>" in table and "0.705 (n=2)" in table


def test_helpers() -> None:
    assert [human_duration(x) for x in (None, 5, 89, 725, 5400, 3 * 86400)] == [
        "-",
        "5 s",
        "89 s",
        "12 min",
        "1.5 h",
        "3.0 d",
    ]
    assert distribution([None, float("nan"), 1, 2, 3, 4]) == {
        "n": 4,
        "median": 2.5,
        "p90": pytest.approx(3.7),
    }
    assert distribution([]) == {"n": 0, "median": None, "p90": None}
