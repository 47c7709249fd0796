"""``gen3deval run`` end to end on real lowpoly304 objects with every offline system, real stages:
Three.js executor, GL renderer, geometry and image metrics, SQLite store, report. Then kill -9 and resume,
bad inputs, and a wrong spec."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gen3deval.cli import main
from gen3deval.engine.results import renderers_used
from gen3deval.engine.store import Store
from gen3deval.report import read_results
from testdata import LOWPOLY, lowpoly_manifest

IDS = ("kaykit_furniture_armchair", "kaykit_adventurers_axe_1handed", "kenney_sk_platformer_character")
SYSTEMS = ("oracle", "bbox", "boxes", "sphere", "files")
# Small but real: fewer samples, a coarse IoU grid and small renders keep the run in seconds.
PROTOCOL = "{name: default, samples: 4000, iou_resolution: 48, render_size: 128}"


def _write_suite(folder: Path, extra: list[dict[str, Any]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = {r["id"]: r for r in lowpoly_manifest()}
    lines = [
        json.dumps({"id": i, "category": rows[i]["category"], "path": str(LOWPOLY / rows[i]["path"])})
        for i in IDS
    ]
    lines += [json.dumps(e) for e in extra or []]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def _spec(folder: Path, systems: str, out: str = "run") -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(
        f"suite: manifest:manifest.jsonl\nsystems: {systems}\nprotocol: {PROTOCOL}\nout: {out}\njobs: 2\n"
    )
    return spec


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *argv, "--quiet"])
    return code, out.getvalue(), err.getvalue()


def _results(run_dir: Path) -> list[dict[str, Any]]:
    rows = read_results(run_dir / "results.jsonl")
    return sorted(
        ({k: v for k, v in r.items() if k != "timings"} for r in rows), key=lambda r: (r["case"], r["system"])
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One uninterrupted run of the tiny suite with all offline systems; (folder, run dir, stdout)."""
    folder = tmp_path_factory.mktemp("e2e")
    _write_suite(folder)
    # `files`: outputs made elsewhere -- here byte copies of the references, so they must score like the oracle.
    outputs = folder / "outputs"
    outputs.mkdir()
    rows = {r["id"]: r for r in lowpoly_manifest()}
    for i in IDS:
        shutil.copy(LOWPOLY / rows[i]["path"], outputs / f"{i}.glb")
    spec = _spec(folder, "[oracle, bbox, boxes, sphere, {name: files, settings: {dir: outputs}}]")
    code, out, err = _run_cli(str(spec))
    assert code == 0, err
    return folder, folder / "run", out


def test_run_rows_complete_and_baselines_ordered(full_run: tuple[Path, Path, str]) -> None:
    _folder, run_dir, out = full_run
    report = Path(out.strip().splitlines()[-1])  # the last line is the report path
    assert report == run_dir / "report.html" and report.is_file()
    rows = _results(run_dir)
    assert len(rows) == len(IDS) * len(SYSTEMS)
    by = {(r["case"], r["system"]): r for r in rows}
    metric_keys = [
        "chamfer_l1", "chamfer_l2", "chamfer_l2_sum", "hausdorff", "fscore@0.01", "fscore@0.02", "fscore@0.05",
        "normal_consistency", "volume_iou", "mse", "psnr", "ssim", "silhouette_iou",
    ]  # fmt: skip
    fingerprints = {json.dumps(r["protocol"], sort_keys=True) for r in rows}
    assert len(fingerprints) == 1
    fp = rows[0]["protocol"]
    assert fp["name"] == "default" and fp["params"]["samples"] == 4000 and fp["hash"]
    with Store(run_dir, readonly=True) as store:
        used = renderers_used(store)
    # Every image came from the renderer the fingerprint names (workers are pinned to it).
    assert len(used) == 1 and used[0]["renderer"] == fp["renderer"]["renderer"]
    for r in rows:
        assert r["executable"] and r["error_class"] is None and r["attempt"] == 1
        for key in metric_keys:
            assert isinstance(r[key], float), (r["case"], r["system"], key)
        assert r["volume_iou_method"] in ("exact", "grid")
        assert (run_dir / r["artifacts"]["ref_image"]).is_file()
        assert (run_dir / r["artifacts"]["mesh"]).is_file()
        assert (run_dir / r["artifacts"]["render"]).is_file() and len(r["artifacts"]["renders"]) == 1
        assert (r["artifacts"]["program"] is not None) == (r["system"] in ("bbox", "boxes", "sphere"))
    from gen3deval.compare import compare
    from gen3deval.metrics.image import PSNR_CAP_DB

    lowpoly = {r["id"]: LOWPOLY / r["path"] for r in lowpoly_manifest()}
    for case in IDS:
        # The candidate IS the reference: the numbers of `compare` of the file with itself (independent
        # samples of the same surface: small distances, not zero), perfect volume and images.
        direct = compare(lowpoly[case], lowpoly[case], samples=4000, iou_resolution=48)
        for perfect in ("oracle", "files"):
            o = by[(case, perfect)]
            for key in ("chamfer_l1", "chamfer_l2", "hausdorff", "fscore@0.01", "fscore@0.05"):
                assert o[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-15), (case, perfect, key)
            assert 0.0 < o["chamfer_l1"] < 0.03 and o["fscore@0.05"] > 0.99
            assert o["volume_iou"] == pytest.approx(1.0, abs=1e-9)
            assert o["mse"] == 0.0 and o["psnr"] == PSNR_CAP_DB and o["silhouette_iou"] == 1.0
        b, x, s = by[(case, "bbox")], by[(case, "boxes")], by[(case, "sphere")]
        assert all(by[(case, "oracle")]["chamfer_l1"] < r["chamfer_l1"] for r in (b, x, s)), case
        # Checked on these objects: 64 voxel boxes beat the single bounding box on IoU AND on F@5.
        assert x["volume_iou"] > b["volume_iou"], case
        assert x["fscore@0.05"] > b["fscore@0.05"], case
        assert x["chamfer_l1"] < b["chamfer_l1"], case
        assert 0.0 < s["volume_iou"] < 1.0 and s["chamfer_l1"] > 0.0


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_is_html_and_names_every_system(full_run: tuple[Path, Path, str]) -> None:
    _folder, run_dir, _out = full_run
    parser = _Collect()
    parser.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    parser.close()
    assert "html" in parser.tags and "table" in parser.tags
    text = " ".join(parser.text)
    for system in SYSTEMS:
        assert system in text, system


def test_report_and_progress_commands(
    full_run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _folder, run_dir, _out = full_run
    before = _results(run_dir)
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir / "report.html")
    assert _results(run_dir) == before  # rebuilt from the store, identical
    assert main(["progress", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "0 stages left" in text and "score" in text and "boxes" in text
    # `run --out RUN_DIR` alone resumes with the stored spec: everything is done, nothing runs.
    code, out, err = _run_cli("--out", str(run_dir))
    assert code == 0 and out.strip().splitlines()[-1] == str(run_dir / "report.html")
    assert "0 ran (0 failed), 57 already finished" in err
    assert _results(run_dir) == before


def _store_rows(run_dir: Path) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    db = sqlite3.connect(run_dir / "store.sqlite")
    try:
        cur = db.execute('SELECT "case", system, stage, status, started, finished, session, runs FROM stages')
        return {(r[0], r[1], r[2]): r[3:] for r in cur}
    finally:
        db.close()


def test_kill9_mid_run_then_resume_matches_uninterrupted(
    full_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    src_folder, ref_run, _out = full_run
    folder = tmp_path / "killed"
    folder.mkdir()
    shutil.copy(src_folder / "manifest.jsonl", folder / "manifest.jsonl")
    shutil.copytree(src_folder / "outputs", folder / "outputs")
    spec = _spec(folder, "[oracle, bbox, boxes, sphere, {name: files, settings: {dir: outputs}}]")
    run_dir = folder / "run"
    cmd = [sys.executable, "-m", "gen3deval", "run", str(spec), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    rows_at_kill: dict[Any, Any] = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "store.sqlite").exists():
                with contextlib.suppress(sqlite3.Error):
                    rows_at_kill = _store_rows(run_dir)
                    if len(rows_at_kill) >= 12:  # references and some later stages are in
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    rows_at_kill = _store_rows(run_dir)  # what was committed when it died
    total = len(_store_rows(ref_run))
    assert 12 <= len(rows_at_kill) < total

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(run_dir / "report.html")
    final = _store_rows(run_dir)
    assert len(final) == total  # nothing missing, nothing duplicated
    for key, value in rows_at_kill.items():
        assert final[key] == value, key  # finished stages were not repeated: same timestamps, session, runs
    assert all(v[-1] == 1 for v in final.values())  # every stage ran exactly once
    assert {v[-2] for v in final.values()} == {1, 2}  # session 1 (killed) and 2 (resumed)
    assert _results(run_dir) == _results(ref_run)  # identical metric values to the uninterrupted run


def test_bad_inputs_fail_their_case_and_the_run_goes_on(tmp_path: Path) -> None:
    corrupt_ref = tmp_path / "broken_reference.glb"
    corrupt_ref.write_bytes(b"glTF this is not a real binary glTF file")
    _write_suite(tmp_path, [{"id": "brokenref", "category": "prop", "path": str(corrupt_ref)}])
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / f"{IDS[0]}.glb").write_bytes(b"\x00garbage, not a mesh")  # corrupt candidate
    # IDS[1]: no file at all -> missing_output
    (outputs / f"{IDS[2]}.js").write_text("function createObject(THREE) { throw new Error('kaput'); }\n")
    shutil.copy(LOWPOLY / "objects" / "prop" / "kaykit_dungeon_candle_triple.glb", outputs / "brokenref.glb")
    spec = _spec(tmp_path, "[oracle, {name: files, label: mine, settings: {dir: outputs}}]")
    code, _out, err = _run_cli(str(spec))
    assert code == 0, err
    rows = {(r["case"], r["system"]): r for r in _results(tmp_path / "run")}
    assert len(rows) == 8
    assert rows[(IDS[0], "mine")]["error_class"] == "load_error"
    assert f"{IDS[0]}.glb" in rows[(IDS[0], "mine")]["error"]
    assert rows[(IDS[1], "mine")]["error_class"] == "missing_output"
    crash = rows[(IDS[2], "mine")]
    assert crash["error_class"] == "runtime" and "kaput" in crash["error"]
    assert crash["artifacts"]["program"] is not None
    for system in ("oracle", "mine"):
        broken = rows[("brokenref", system)]
        assert broken["error_class"] == "reference_error" and "broken_reference.glb" in broken["error"]
    for r in [rows[(i, "mine")] for i in IDS] + [rows[("brokenref", s)] for s in ("oracle", "mine")]:
        assert not r["executable"] and r["chamfer_l1"] is None and r["volume_iou"] is None
    for i in IDS:  # the run went on: the good pipelines are scored
        assert rows[(i, "oracle")]["executable"] and rows[(i, "oracle")]["volume_iou"] == pytest.approx(1.0)
    assert "failed: generate" in err and "load_error" in err


def _ran(err: str) -> tuple[int, int, int]:
    """(ran, failed, already finished) from the run's summary line on stderr."""
    import re

    m = re.search(r"stages: (\d+) ran \((\d+) failed\), (\d+) already finished", err)
    assert m, err
    return int(m[1]), int(m[2]), int(m[3])


def test_fixed_added_and_replaced_outputs_are_rescored_on_rerun(tmp_path: Path) -> None:
    """Bring your own outputs, fix them, rerun: exactly the changed cases are scored again, and their
    numbers are those of `compare` on the same files (issue 8, item 2)."""
    from gen3deval.compare import compare

    rows = {r["id"]: r for r in lowpoly_manifest()}
    other = "kaykit_dungeon_candle_triple"
    _write_suite(tmp_path, [{"id": other, "category": "prop", "path": str(LOWPOLY / rows[other]["path"])}])
    ref = {i: LOWPOLY / rows[i]["path"] for i in (*IDS, other)}
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / f"{IDS[0]}.glb").write_bytes(b"\x00garbage, not a mesh")  # corrupt
    # IDS[1]: missing
    shutil.copy(ref[IDS[2]], outputs / f"{IDS[2]}.glb")  # good
    shutil.copy(ref[IDS[0]], outputs / f"{other}.glb")  # untouched (a wrong object, scored as such)
    spec = _spec(tmp_path, "[{name: files, label: mine, settings: {dir: outputs}}]")
    code, _out, err = _run_cli(str(spec))
    assert code == 0, err
    before = {r["case"]: r for r in _results(tmp_path / "run")}
    assert before[IDS[0]]["error_class"] == "load_error" and before[IDS[1]]["error_class"] == "missing_output"
    assert before[IDS[2]]["volume_iou"] == pytest.approx(1.0, abs=1e-9)

    shutil.copy(ref[IDS[0]], outputs / f"{IDS[0]}.glb")  # fixed
    shutil.copy(ref[IDS[1]], outputs / f"{IDS[1]}.glb")  # added
    shutil.copy(ref[other], outputs / f"{IDS[2]}.glb")  # replaced by another object
    code, _out, err = _run_cli(str(spec))
    assert code == 0, err
    # generate + render + score of the 3 changed cases; the references and the untouched case are kept.
    assert _ran(err) == (9, 0, 7)
    after = {r["case"]: r for r in _results(tmp_path / "run")}
    assert after[other] == before[other]
    for case in (IDS[0], IDS[1]):
        assert after[case]["executable"] and after[case]["volume_iou"] == pytest.approx(1.0, abs=1e-9)
    assert after[IDS[2]]["volume_iou"] < 0.9
    for case, cand in ((IDS[2], ref[other]), (other, ref[IDS[0]])):
        direct = compare(cand, ref[case], samples=4000, iou_resolution=48)
        for key in ("chamfer_l1", "fscore@0.01", "volume_iou"):
            assert after[case][key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), (case, key)

    # Nothing changed: nothing runs. A failed stage with unchanged inputs is kept unless --retry-failed.
    (outputs / f"{other}.glb").unlink()
    (outputs / f"{other}.js").write_text("function createObject(THREE) { throw new Error('kaput'); }\n")
    code, _out, err = _run_cli(str(spec))
    assert code == 0 and _ran(err) == (2, 1, 13), err  # generate, execute (fails)
    code, _out, err = _run_cli(str(spec))
    assert code == 0 and _ran(err) == (0, 0, 15), err
    code, _out, err = _run_cli(str(spec), "--retry-failed")
    assert code == 0 and _ran(err) == (1, 1, 14), err


def test_systems_needing_references_are_refused_on_a_photo_suite(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (16, 16), (i * 100, 50, 50)).save(photos / f"p{i}.png")
    code, _out, err = _run_cli("--suite", f"images:{photos}", "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert "system 'oracle' needs a reference mesh" in err and "photos" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("systems: [{name: files, settings: {dir: nowhere}}]", "systems[0].settings.dir"),
        ("systems: [oracle, nosuchsystem]", "systems[1].name"),
        ("protocol: {name: default, samples: many}", "protocol.samples"),
        ("protocol: {name: clip3d, metrics: [clip_scor]}", "protocol.metrics: unknown metric 'clip_scor'"),
        ("jobs: 0", "jobs"),
        ("suite: manifest:missing.jsonl", "missing.jsonl"),
        ("sytems: [oracle]", "sytems: unknown field"),
    ],
)
def test_wrong_spec_fails_before_any_work(tmp_path: Path, spec: str, field: str) -> None:
    (tmp_path / "spec.yaml").write_text(spec + "\nout: run\n")
    code, _out, err = _run_cli(str(tmp_path / "spec.yaml"))
    assert code == 2
    assert field in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "run").exists()  # no work was done


def test_out_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    (tmp_path / "spec.yaml").write_text("out: run\n")
    code, _out, err = _run_cli(str(tmp_path / "spec.yaml"))
    assert code == 2 and "out:" in err and "not a gen3deval run folder" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["thesis.tex"]


@pytest.mark.slow
def test_gencad_protocol_runs_cadquery_references(tmp_path: Path) -> None:
    """GenCAD: references are CadQuery programs executed in the sandbox; inertia normalisation, best_iou."""
    from testdata import GENCAD

    if not GENCAD.exists():
        pytest.skip(f"shared data not found at {GENCAD}")
    code, _out, err = _run_cli(
        "--suite", f"gencad:{GENCAD}", "--system", "oracle", "bbox", "--protocol", "gencad",
        "--limit", "3", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    rows = {(r["case"], r["system"]): r for r in _results(tmp_path / "run")}
    assert len(rows) == 6
    for (_case, system), r in rows.items():
        assert r["executable"] and 0.0 < r["best_iou"] <= 1.0 + 1e-9
        assert set(r) >= {"chamfer_l2", "chamfer_l2_sum", "best_iou"} and "volume_iou" not in r
        if system == "oracle":
            # Independent samples of the same surface (PROTOCOLS.md): near zero, never exactly zero.
            assert r["best_iou"] == pytest.approx(1.0, abs=1e-9) and 0.0 < r["chamfer_l2"] < 1e-3
        assert r["protocol"]["name"] == "gencad" and r["protocol"]["params"]["normalize"] == "inertia"
        assert r["artifacts"]["ref_image"] is not None  # rendered from the ground-truth program
        if system == "oracle":
            assert r["mecagent_iou"] == pytest.approx(1.0)  # the compat IoU of an identical solid
        assert 0.0 <= r["mecagent_iou"] <= 1.0
    # The numbers as mecagent reports them, labelled, beside the honest ones (summary.json and the page).
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    block = summary["compat"]["mecagent"]
    assert block["name"] == "compat:mecagent"
    by = {s["system"]: s for s in block["systems"]}
    bbox = by["bbox"]
    assert bbox["compat"]["mean_iou"]["value"] == pytest.approx(
        np.mean([r["mecagent_iou"] for (_, s), r in rows.items() if s == "bbox"])
    )
    assert bbox["honest"]["best_iou_all"]["value"] == pytest.approx(
        np.mean([r["best_iou"] for (_, s), r in rows.items() if s == "bbox"])
    )
    assert "compat:mecagent" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.slow
def test_quickstart_with_no_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`gen3deval run` with no arguments: built-in suite, the four baselines, protocol default."""
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli()
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(Path("runs/quickstart/report.html"))
    rows = _results(tmp_path / "runs" / "quickstart")
    assert len(rows) == 16 * 4 and all(r["executable"] for r in rows)
    oracle = [r for r in rows if r["system"] == "oracle"]
    assert all(0.0 < r["chamfer_l1"] < 0.01 and r["fscore@0.05"] > 0.99 for r in oracle)
