"""``gen3deval run --system csm-all`` end to end against the loopback CSM stand-in (issue 10).

The real client and engine run as a user runs them (a ``gen3deval`` subprocess, key and URL from the
environment) on every photo of ``../shared/data/byo_images``; the stand-in injects the faults real services
have. Checked: every job completes or fails with the server's reason, no session is created twice, each
image is uploaded once (asset ids reused), retries honour ``Retry-After``, a ``kill -9`` mid-run then a rerun
completes with the same results without submitting a stored job again, a kill inside the submit window is
resubmitted once and counted, and the key is in no byte of the run folder or the output.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fakes.csm_server import FakeCsm, FakeCsmConfig, Fault

KEY = "csm-e2e-key-5b9f0c1d2e3a4b5c"
PROTOCOL = "{name: photo3d, render_size: 48}"
FAST = "poll_interval=0.1,poll_max=0.3,backoff=0.05,rps=200,concurrency=16"
CONFIGS = ("csm-base", "csm-turbo", "csm-turbo-baked", "csm-turbo-pbr", "csm-kit", "csm-chat")


def _cmd() -> list[str]:
    exe = Path(sys.executable).with_name("gen3deval")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval.cli"]


def _env(server: FakeCsm, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CSM_API_KEY=KEY, CSM_BASE_URL=server.base_url, HOME=str(home), GEN3DEVAL_SANDBOX="basic")
    return env


def _run_args(images: Path, out: Path, extra: str = FAST) -> list[str]:
    spec = out.parent / f"{out.name}.yaml"
    spec.write_text(
        f"suite: images:{images}\nsystems: ['csm-all:{extra}']\nprotocol: {PROTOCOL}\njobs: 2\n",
        encoding="utf-8",
    )
    return [*_cmd(), "run", str(spec), "--out", str(out)]


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _jobs(out: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(out / "store.sqlite")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute('SELECT * FROM jobs ORDER BY "case", system, try')]
    db.close()
    return rows


def _generate_rows(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    db = sqlite3.connect(out / "store.sqlite")
    rows = db.execute(
        "SELECT \"case\", system, status, error_class, error, value FROM stages WHERE stage='generate'"
    )
    out_rows = {
        (c, s): {"status": st, "error_class": ec, "error": e, "value": json.loads(v)}
        for c, s, st, ec, e, v in rows
    }
    db.close()
    return out_rows


def _stored_sessions(out: Path) -> list[str]:
    return [sid for j in _jobs(out) if j["handle"] for sid in json.loads(j["handle"])["sessions"]]


def _assert_no_key(out: Path, *texts: str) -> None:
    needle = KEY.encode()
    for p in out.rglob("*"):
        if p.is_file():
            assert needle not in p.read_bytes(), f"the API key is in {p}"
    for t in texts:
        assert KEY not in t


@pytest.fixture
def images(shared_data: Path) -> Path:
    folder = shared_data / "byo_images"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.mark.slow
def test_csm_all_with_faults_end_to_end(images: Path, tmp_path: Path) -> None:
    n_images = len([p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")])
    faults = [
        Fault("429", "submit", count=3, retry_after=0.3),
        Fault("503", "submit", count=1),
        Fault("500", "poll", probability=0.05),
        Fault("drop", "poll", count=2),
        Fault("slow", "poll", count=1, delay_s=0.5),
        Fault("malformed", "poll", count=1),
        Fault("truncate", "download", count=2),
        Fault("expire", "download", count=1),
        Fault("fail", "submit", count=2, job_type="image_to_3d", message="no object found in the photo"),
    ]
    with FakeCsm(FakeCsmConfig(api_key=KEY, faults=faults, latency_s=(0.0, 0.02), seed=3)) as server:
        out = tmp_path / "run"
        proc = _run(_run_args(images, out), tmp_path, _env(server, tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1].endswith("report.html")
        rows = _generate_rows(out)
        assert len(rows) == n_images * len(CONFIGS)
        failed = {k: r for k, r in rows.items() if r["status"] != "done"}
        # The two sessions the server failed end failed with its reason; every other job completed.
        assert len(failed) == 2, failed
        for r in failed.values():
            assert r["error_class"] == "generation_error"
            assert "no object found in the photo" in r["error"]
        # No session created twice: the server made exactly the sessions the store knows.
        assert sorted(_stored_sessions(out)) == sorted(server.sessions)
        assert len(server.sessions) == n_images * len(CONFIGS) + n_images  # chat_to_3d has two steps
        # Each photo is uploaded once; every later job of it sends the asset id.
        assert server.data_uploads == n_images
        # Retry-After honoured: the retry of a 429 submit came no sooner than the server asked.
        reqs = sorted(server.requests, key=lambda r: r.time)
        for i, r in enumerate(reqs):
            if r.kind == "submit" and r.fault == "429":
                later = [q for q in reqs[i + 1 :] if q.kind == "submit" and q.body_size == r.body_size]
                assert later and later[0].time - r.time >= 0.3 * 0.95
        assert server.faults_applied("truncate") == 2 and server.faults_applied("expire") == 1
        jobs = _jobs(out)
        assert sum(j["retries"] for j in jobs) >= 5
        assert all(j["state"] in ("complete", "failed") for j in jobs)
        # Kit parts are kept and the assembly scored; the job facts are in the rows.
        kit = next(r for (c, s), r in rows.items() if s == "csm-kit" and r["status"] == "done")
        assert kit["value"]["remote"]["parts"] == 3 and kit["value"]["mesh_stats"]["components"] == 3
        # A rerun submits nothing and downloads nothing: everything is stored. Limits are not part of a job's
        # key, so changing them does not pay for the jobs again.
        before = len(server.requests)
        slower = FAST.replace("concurrency=16", "concurrency=3").replace("rps=200", "rps=50")
        again = _run(_run_args(images, out, slower), tmp_path, _env(server, tmp_path))
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.requests) == before
        progress = _run([*_cmd(), "progress", str(out)], tmp_path, _env(server, tmp_path))
        assert progress.returncode == 0, progress.stderr
        _assert_no_key(out, proc.stdout, proc.stderr, again.stdout, again.stderr, progress.stdout)


def _wait_for(pred: Any, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _count_state(out: Path, state: str) -> int:
    try:
        db = sqlite3.connect(f"file:{out / 'store.sqlite'}?mode=ro", uri=True, timeout=5)
        n = db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]
        db.close()
        return int(n)
    except sqlite3.Error:
        return 0


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The run in its own process group (killed or interrupted as a whole, like a terminal does)."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_stop_mid_run_then_rerun_submits_nothing_twice(images: Path, tmp_path: Path, how: str) -> None:
    durations = {"image_to_3d": 2.5, "image_to_kit": 2.5, "chat_to_3d": 1.0}
    with FakeCsm(FakeCsmConfig(api_key=KEY, durations=durations, seed=5)) as server:
        env = _env(server, tmp_path)
        out = tmp_path / "run"
        proc = _start(_run_args(images, out), tmp_path, env)
        _wait_for(lambda: _count_state(out, "running") >= 30, 60)
        if how == "kill -9":
            _kill_group(proc)
        else:
            t0 = time.time()
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert time.time() - t0 < 10 and proc.returncode != 0
            assert "gen3deval run" in err and "Traceback" not in err and "destroyed" not in err
        handles = {
            (j["case"], j["system"]): json.loads(j["handle"])["sessions"][0]
            for j in _jobs(out)
            if j["handle"]
        }
        assert len(handles) >= 30 and set(handles.values()) <= set(server.sessions)
        time.sleep(0.5)  # POSTs the kill cut short may still be finishing on the server
        sessions_at_kill = set(server.sessions)
        in_window = {(j["case"], j["system"]) for j in _jobs(out) if j["state"] == "submitting"}
        submitting = len(in_window)
        again = _run(_run_args(images, out), tmp_path, env)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        jobs = _jobs(out)
        assert all(j["state"] == "complete" for j in jobs), [j for j in jobs if j["state"] != "complete"]
        # Every job stored with a handle kept its session: polled, never submitted again.
        after = {(j["case"], j["system"]): json.loads(j["handle"])["sessions"][0] for j in jobs}
        assert {k: after[k] for k in handles} == handles
        # Whatever the rerun made on the server, the store knows: it left no orphan session behind.
        made_by_rerun = set(server.sessions) - sessions_at_kill
        assert made_by_rerun <= set(_stored_sessions(out))
        assert len(made_by_rerun) >= len(jobs) - len(handles)
        # The jobs killed inside the submit window were submitted again once, and counted. (A POST whose
        # answer is lost on the way is also sent again once and counted: hence >= and <= 2.)
        assert all(j["resubmitted"] >= 1 for j in jobs if (j["case"], j["system"]) in in_window)
        assert sum(j["resubmitted"] for j in jobs) >= submitting
        assert all(j["resubmitted"] <= 2 for j in jobs)
        rows = _generate_rows(out)
        assert all(r["status"] == "done" for r in rows.values())

        # The same run without a kill gives the same results.
        ref_out = tmp_path / "ref"
        ref = _run(_run_args(images, ref_out), tmp_path, env)
        assert ref.returncode == 0
        ref_rows = _generate_rows(ref_out)
        assert {k: (r["status"], r["value"]["n_faces"]) for k, r in rows.items()} == {
            k: (r["status"], r["value"]["n_faces"]) for k, r in ref_rows.items()
        }
        _assert_no_key(out, again.stdout, again.stderr)


@pytest.mark.slow
def test_kill_inside_submit_window_is_resubmitted_once_and_counted(images: Path, tmp_path: Path) -> None:
    # Every submission is answered late: a kill then finds rows written before the POST without a handle.
    faults = [Fault("slow", "submit", count=1000, delay_s=3.0)]
    with FakeCsm(FakeCsmConfig(api_key=KEY, faults=faults, seed=7)) as server:
        env = _env(server, tmp_path)
        out = tmp_path / "run"
        proc = _start(_run_args(images, out, FAST.replace("concurrency=16", "concurrency=4")), tmp_path, env)
        _wait_for(lambda: _count_state(out, "submitting") >= 2, 60)
        _kill_group(proc)
        unconfirmed = _count_state(out, "submitting")
        assert unconfirmed >= 2
        progress = _run([*_cmd(), "progress", str(out)], tmp_path, env)
        assert progress.returncode == 0 and "unconfirmed" in progress.stdout
        server.config.faults.clear()
        again = _run(_run_args(images, out), tmp_path, env)
        assert again.returncode == 0, again.stderr[-2000:]
        jobs = _jobs(out)
        assert sum(j["resubmitted"] for j in jobs) == unconfirmed
        assert all(j["state"] == "complete" for j in jobs)
        assert all(j["resubmitted"] <= 1 for j in jobs)


ENV_THIEF = """
import os, sys
print("SEARCHED env:", os.environ.get("CSM_API_KEY") or "-", flush=True)
for p in ["/proc/self/environ", "/proc/1/environ", "/proc/%d/environ" % os.getppid()]:
    try:
        print(p, open(p, "rb").read().decode("latin-1"), flush=True)
    except BaseException as exc:
        print(p, type(exc).__name__, flush=True)
import cadquery as cq
solid = cq.Workplane("XY").box(1, 1, 1)
"""


@pytest.mark.slow
def test_key_never_reaches_workers_or_sandboxed_programs(images: Path, tmp_path: Path) -> None:
    pytest.importorskip("cadquery")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    first = sorted(p.stem for p in images.iterdir())[0]
    (outputs / f"{first}.py").write_text(ENV_THIEF, encoding="utf-8")
    with FakeCsm(FakeCsmConfig(api_key=KEY)) as server:
        env = _env(server, tmp_path)
        env.pop("GEN3DEVAL_SANDBOX")  # the full sandbox, as users run it
        out = tmp_path / "run"
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"suite: images:{images}\nsystems: ['csm:{FAST}', 'files:dir={outputs}']\n"
            f"protocol: {PROTOCOL}\njobs: 2\n",
            encoding="utf-8",
        )
        proc = _run([*_cmd(), "run", str(spec), "--out", str(out)], tmp_path, env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        db = sqlite3.connect(out / "store.sqlite")
        (value,) = db.execute(
            "SELECT value FROM stages WHERE stage='execute' AND system='files' AND \"case\"=?", (first,)
        ).fetchone()
        db.close()
        assert "SEARCHED" in json.loads(value)["stdout"]  # the thief ran, and printed what it found
        _assert_no_key(out, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_retry_failed_submits_a_new_try_beside_the_failed_one(images: Path, tmp_path: Path) -> None:
    faults = [Fault("fail", "submit", count=2, job_type="image_to_kit", message="decomposition failed")]
    with FakeCsm(FakeCsmConfig(api_key=KEY, faults=faults, seed=11)) as server:
        env = _env(server, tmp_path)
        out = tmp_path / "run"
        assert _run(_run_args(images, out), tmp_path, env).returncode == 0
        failed = {k for k, r in _generate_rows(out).items() if r["status"] == "failed"}
        assert len(failed) == 2 and all(s == "csm-kit" for _, s in failed)
        # Without --retry-failed a finished job, failed or not, is never submitted again.
        n = len(server.submissions)
        assert _run(_run_args(images, out), tmp_path, env).returncode == 0
        assert len(server.submissions) == n
        again = _run([*_run_args(images, out), "--retry-failed"], tmp_path, env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(server.submissions) == n + 2  # only the two failed jobs, each once
        # ... sending the asset ids stored by the first run: no photo is uploaded twice, across reruns.
        assert server.data_uploads == len([p for p in images.iterdir() if p.suffix.lower() == ".jpg"])
        assert all(str(b["input"]["image"]).startswith("ASSET_") for b in server.submissions[n:])
        rows = _generate_rows(out)
        assert all(r["status"] == "done" for r in rows.values())
        tries = {(j["case"], j["system"]): [] for j in _jobs(out)}
        for j in _jobs(out):
            tries[(j["case"], j["system"])].append((j["try"], j["state"], j["message"]))
        for key in failed:
            assert [t[:2] for t in sorted(tries[key])] == [(1, "failed"), (2, "complete")]
            assert "decomposition failed" in sorted(tries[key])[0][2]
            assert rows[key]["value"]["remote"]["try"] == 2
