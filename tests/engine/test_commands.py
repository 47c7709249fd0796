"""``progress``, ``report``, ``clean`` and ``list`` on run folders made with stand-in stages; progress output."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from engine_standins import run_two_systems

from gen3deval.cli import main
from gen3deval.config import get_protocol
from gen3deval.engine.progress import PlainProgress, RichProgress, make_progress
from gen3deval.engine.results import stage_progress
from gen3deval.engine.runner import RunLock
from gen3deval.engine.store import Store

PROTOCOL = get_protocol({"name": "default", "metrics": ["chamfer_l1"], "image_metrics": []})


def _run(run_dir: Path, n: int = 3) -> None:
    run_two_systems(run_dir, n, PROTOCOL)


def test_progress_counts_left_stages_of_an_unfinished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(tmp_path)
    with Store(tmp_path) as store:
        # As if the run had been killed: c2's program was never executed, c1's candidate never scored.
        assert (
            store.delete([("c2", "p", 1, "execute"), ("c2", "p", 1, "render"), ("c2", "p", 1, "score")]) == 3
        )
        assert store.delete([("c1", "m", 1, "score")]) == 1
        counts = stage_progress(store)
    assert counts[("reference", "")] == {"done": 3, "failed": 0, "left": 0}
    assert counts[("execute", "p")] == {"done": 2, "failed": 0, "left": 1}
    assert counts[("render", "p")] == {"done": 2, "failed": 0, "left": 1}
    assert counts[("score", "p")] == {"done": 2, "failed": 0, "left": 1}
    assert counts[("score", "m")] == {"done": 2, "failed": 0, "left": 1}
    assert main(["progress", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 stages left" in out and "execute" in out
    # `report` rebuilds from what is finished and says what is not.
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(tmp_path / "report.html")
    assert "2 pipelines are unfinished" in captured.err
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 4


def test_report_and_progress_refuse_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for cmd in ("report", "progress", "clean"):
        assert main([cmd, str(tmp_path)]) == 2
        assert "not a run folder" in capsys.readouterr().err


def test_clean_asks_and_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, n=1)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["clean", str(run_dir)]) == 1
    assert run_dir.is_dir() and "nothing deleted" in capsys.readouterr().err
    lock = RunLock(run_dir)
    lock.acquire()
    try:  # a run is using it
        assert main(["clean", str(run_dir), "--yes"]) == 2
        assert "another gen3deval run" in capsys.readouterr().err
    finally:
        lock.release()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["clean", str(run_dir)]) == 0
    assert not run_dir.exists()
    _run(run_dir, n=1)
    assert main(["clean", str(run_dir), "--yes"]) == 0 and not run_dir.exists()


def test_list_names_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in (
        "quickstart",
        "manifest:",
        "gencad:",
        "oracle",
        "boxes",
        "files",
        "code3d",
        "clip3d",
        "toys4k:",
    ):
        assert word in out, word
    for word in (
        "chamfer_l2",
        "fscore@0.01",
        "volume_iou",
        "silhouette_iou",
        "trellis8",
        "turntable:N",
        "clip_score",
        "lpips",
        "model clip",
    ):
        assert word in out, word
    assert main(["list", "rigs"]) == 0
    rigs = capsys.readouterr().out
    assert "trellis8     8 views" in rigs and "oracle" not in rigs


def test_progress_reporters() -> None:
    plain = io.StringIO()
    p = PlainProgress(plain)
    p.start({"reference": 2, "generate": 4})
    p.update("reference", "done", "c0")
    p.update("reference", "done", "c1", skipped=True)
    p.update("generate", "failed", "c0 sys")
    p.close()
    text = plain.getvalue()
    assert "planned: reference 2, generate 4" in text and "[generate 1/4] c0 sys failed" in text
    assert "reference: 1 done, 0 failed, 1 already finished" in text
    assert isinstance(make_progress(False, io.StringIO()), PlainProgress)  # not a terminal: plain lines
    rich_out = io.StringIO()
    r = RichProgress(rich_out)
    r.start({"reference": 2, "generate": 4, "score": 4})
    r.update("reference", "done")
    r.update("generate", "failed")
    r.add_total("score", -2)
    r.log("a message")
    r.close()
    assert r.progress.tasks[2].total == 2 and r.failed["generate"] == 1
    assert "reference" in rich_out.getvalue() and "a message" in rich_out.getvalue()
