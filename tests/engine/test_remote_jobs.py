"""Remote jobs through the engine (in-process ``gen3deval run``) against the loopback CSM stand-in: the
stored-state table of :mod:`gen3deval.engine.remote_jobs` -- a job that timed out, a job complete on the
server whose download failed, and what a rerun (with and without ``--retry-failed``) does with each."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fakes.csm_server import FakeCsm, FakeCsmConfig, Fault
from gen3deval.cli import main

KEY = "csm-unit-key-77aa"


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (40 * i, 200, 30)).save(buf, format="PNG")
        (folder / f"img{i}.png").write_bytes(buf.getvalue())
    return folder


def _spec(tmp: Path, images: Path, settings: str) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(
        f"suite: images:{images}\nsystems: ['csm:{settings}']\n"
        "protocol: {name: photo3d, render_size: 32}\njobs: 1\n",
        encoding="utf-8",
    )
    return spec


def _rows(out: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    db = sqlite3.connect(out / "store.sqlite")
    db.row_factory = sqlite3.Row
    gen = {
        r["case"]: dict(r)
        for r in db.execute(
            "SELECT \"case\", status, error_class, error, value FROM stages WHERE stage='generate'"
        )
    }
    jobs = [dict(r) for r in db.execute('SELECT * FROM jobs ORDER BY "case", try')]
    db.close()
    return gen, jobs


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CSM_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GEN3DEVAL_SANDBOX", "basic")
    monkeypatch.chdir(tmp_path)
    return tmp_path


FAST = "poll_interval=0.05,poll_max=0.1,backoff=0.05,rps=100"


def test_timeout_is_final_until_retry_failed(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("gen3deval.engine.runner.HEARTBEAT_S", 0.2)
    images = _images(env / "images")
    slow = {"image_to_3d": 30.0, "image_to_kit": 30.0, "chat_to_3d": 30.0}
    with FakeCsm(FakeCsmConfig(api_key=KEY, durations=slow)) as server:
        monkeypatch.setenv("CSM_BASE_URL", server.base_url)
        out = env / "run"
        spec = _spec(env, images, FAST + ",timeout_min=0.01")
        assert main(["run", str(spec), "--out", str(out)]) == 0
        gen, jobs = _rows(out)
        assert {r["error_class"] for r in gen.values()} == {"timeout"}
        assert all("timeout_min=0.01" in r["error"] for r in gen.values())
        assert [j["state"] for j in jobs] == ["timeout", "timeout"]
        # While the jobs waited on the server, the run said so (a heartbeat line).
        captured = capsys.readouterr()
        assert "remote jobs: 2 running" in captured.out + captured.err
        n = len(server.requests)
        assert main(["run", str(spec), "--out", str(out)]) == 0
        assert len(server.requests) == n  # a finished job, timed out or not, is not submitted again
        server.config.durations = {k: 0.05 for k in slow}
        assert main(["run", str(spec), "--out", str(out), "--retry-failed"]) == 0
        gen, jobs = _rows(out)
        assert {r["status"] for r in gen.values()} == {"done"}
        assert sorted((j["case"], j["try"], j["state"]) for j in jobs) == [
            ("img0", 1, "timeout"),
            ("img0", 2, "complete"),
            ("img1", 1, "timeout"),
            ("img1", 2, "complete"),
        ]


def test_complete_job_whose_download_failed_is_fetched_again_not_resubmitted(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(env / "images")
    # Every download is refused (an expired link, also after re-polling): the jobs are complete on the server.
    faults = [Fault("expire", "download", count=1000)]
    with FakeCsm(FakeCsmConfig(api_key=KEY, faults=faults)) as server:
        monkeypatch.setenv("CSM_BASE_URL", server.base_url)
        out = env / "run"
        spec = _spec(env, images, FAST)
        assert main(["run", str(spec), "--out", str(out)]) == 0
        gen, jobs = _rows(out)
        assert {r["error_class"] for r in gen.values()} == {"remote_error"}
        assert all("complete on the server but its download failed" in r["error"] for r in gen.values())
        assert {j["state"] for j in jobs} == {"complete"}
        sessions = sorted(json.loads(j["handle"])["sessions"][0] for j in jobs)
        server.config.faults.clear()
        posts = server.count("submit")
        assert main(["run", str(spec), "--out", str(out), "--retry-failed"]) == 0
        gen, jobs = _rows(out)
        assert {r["status"] for r in gen.values()} == {"done"}
        assert server.count("submit") == posts  # fetched again from the stored sessions
        assert sorted(json.loads(j["handle"])["sessions"][0] for j in jobs) == sessions
        assert all(json.loads(r["value"])["remote"]["try"] == 1 for r in gen.values())


def test_a_changed_job_gets_a_new_try_beside_an_unconfirmed_one(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gen3deval.engine.jobs_table import JobRow, put_job
    from gen3deval.engine.store import Store

    images = _images(env / "images", n=1)
    with FakeCsm(FakeCsmConfig(api_key=KEY)) as server:
        monkeypatch.setenv("CSM_BASE_URL", server.base_url)
        out = env / "run"
        assert main(["run", str(_spec(env, images, FAST)), "--out", str(out)]) == 0
        # An older try of the same job, left unconfirmed (killed while submitting) under another key.
        with Store(out) as store:
            put_job(
                store, JobRow("img0", "csm", 1, 2, "an-older-key", "submitting", created=1.0, updated=1.0)
            )
        # The job's settings change: a new key, so a new try (3) -- the old rows are kept as they were.
        assert main(["run", str(_spec(env, images, FAST + ",texture_model=baked")), "--out", str(out)]) == 0
        _gen, jobs = _rows(out)
        assert [(j["try"], j["state"], j["input_hash"] == "an-older-key") for j in jobs] == [
            (1, "complete", False),
            (2, "submitting", True),
            (3, "complete", False),
        ]
