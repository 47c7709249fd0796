"""``gen3deval run --system vlm`` end to end against the loopback OpenAI-compatible stand-in (issue 11, phase 1):
Three.js programs for 6 ``lowpoly304`` objects with k = 3 attempts. Some first answers are broken and fixed
when the error is fed back; every attempt is asked once and stored; a rerun asks nothing again; the key is in
no byte of the run folder."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fakes.openai_server import BOX_PROGRAM, ChatRequest, FakeOpenAI, FakeOpenAIConfig, Fault

KEY = "sk-vlm-e2e-9f8e7d6c5b4a"
BROKEN = "function createObject(THREE) {\n  return new THREE.Mesh(undefinedGeometry);  // BROKEN\n}"


def answer(request: ChatRequest) -> str:
    """First answers are broken for half of the images (by image hash); a revision that was told about the
    error answers a working program."""
    text = request.text
    if "BROKEN" in text:  # the previous program, quoted in a revision
        assert "runtime" in text or "ReferenceError" in text, "the error was not fed back"
        return f"Fixed:\n```js\n{BOX_PROGRAM}\n```\n"
    if "Your previous program" in text:
        return f"Again:\n```js\n{BOX_PROGRAM}\n```\n"
    digest = hashlib.sha256(request.images[0].encode()).digest()
    return f"```js\n{BROKEN if digest[0] % 2 == 0 else BOX_PROGRAM}\n```"


def _cmd() -> list[str]:
    exe = Path(sys.executable).with_name("gen3deval")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval.cli"]


def _spec(tmp: Path, manifest: Path, base_url: str) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(
        f"suite: {{spec: 'manifest:{manifest}', limit: 6}}\n"
        f"systems: ['vlm:model=test/vlm-small,base_url={base_url},attempts=3,concurrency=4,rps=100']\n"
        "protocol: {name: code3d, render_size: 64, samples: 4000}\njobs: 2\n",
        encoding="utf-8",
    )
    return spec


def _generate_rows(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    db = sqlite3.connect(out / "store.sqlite")
    rows = db.execute(
        "SELECT \"case\", attempt, status, error_class, value FROM stages WHERE stage='generate' AND system='vlm'"
    )
    res = {(c, a): {"status": s, "error_class": e, "value": json.loads(v)} for c, a, s, e, v in rows}
    db.close()
    return res


def _executed(out: Path) -> dict[tuple[str, int], bool]:
    db = sqlite3.connect(out / "store.sqlite")
    rows = db.execute("SELECT \"case\", attempt, status FROM stages WHERE stage='execute' AND system='vlm'")
    res = {(c, a): s == "done" for c, a, s in rows}
    db.close()
    return res


@pytest.mark.slow
def test_vlm_threejs_with_revisions_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    faults = [Fault("429", count=2, retry_after=0.1), Fault("500", count=1), Fault("drop", count=1)]
    cfg = FakeOpenAIConfig(api_key=KEY, answer=answer, faults=faults, latency_s=(0.0, 0.05))
    with FakeOpenAI(cfg) as server:
        env = dict(os.environ, OPENAI_API_KEY=KEY, HOME=str(tmp_path), GEN3DEVAL_SANDBOX="basic")
        out = tmp_path / "run"
        args = [*_cmd(), "run", str(_spec(tmp_path, manifest, server.base_url)), "--out", str(out)]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = _generate_rows(out)
        assert len(rows) == 6 * 3 and all(r["status"] == "done" for r in rows.values())
        # Every attempt asked once (answers that were lost on the way are resent and counted, not re-asked).
        answered = [r for r in server.chats() if r.status == 200]
        assert len(answered) == 18
        # Errors fed back, recovery rises: attempt 1 fails where the program was broken, attempt 2 runs.
        ran = _executed(out)
        first = sum(ran[(c, 1)] for c, a in ran if a == 1)
        second = sum(ran[(c, 2)] for c, a in ran if a == 2)
        assert first < 6 and second == 6
        for r in rows.values():
            assert r["value"]["remote"]["prompt_tokens"] and r["value"]["remote"]["finish_reason"] == "stop"
        # The reference image shown is named by its hash in every row, the same for all attempts of a case.
        for case in {c for c, _a in rows}:
            hashes = {rows[(case, a)]["value"]["remote"]["image_sha256"] for a in (1, 2, 3)}
            assert len(hashes) == 1 and len(next(iter(hashes))) == 64
        # A rerun asks nothing again.
        n = len(server.requests)
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert again.returncode == 0, again.stderr[-2000:]
        chats_after = [r for r in server.requests[n:] if r.path.endswith("/chat/completions")]
        assert chats_after == []
        for p in out.rglob("*"):
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p
        assert KEY not in proc.stdout + proc.stderr


# -- CadQuery on GenCAD-Code (issue 11, phase 2) -----------------------------------------------------------------

CQ_OK = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.0, 0.6, 0.1)\n"
CQ_BROKEN = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.0, 0.6)  # BROKEN\n"


def cq_answer(request: ChatRequest) -> str:
    """CadQuery programs: broken first for half of the images (by hash), fixed once the error is fed back."""
    text = request.text
    if "BROKEN" in text:
        assert "runtime" in text and "TypeError" in text, "the error was not fed back"
        return f"Fixed:\n```python\n{CQ_OK}```\n"
    if "Your previous program" in text:
        return f"Again:\n```python\n{CQ_OK}```\n"
    digest = hashlib.sha256(request.images[0].encode()).digest()
    return f"```python\n{CQ_BROKEN if digest[0] % 2 == 0 else CQ_OK}```"


@pytest.mark.slow
def test_vlm_cadquery_gencad_with_revisions_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    cases = shared_data / "gencad100" / "cases.jsonl"
    faults = [Fault("429", count=1, retry_after=0.1), Fault("500", count=1)]
    cfg = FakeOpenAIConfig(api_key=KEY, answer=cq_answer, faults=faults, latency_s=(0.0, 0.05))
    with FakeOpenAI(cfg) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"suite: {{spec: 'gencad:{cases}', limit: 6}}\n"
            f"systems: ['vlm:model=test/vlm-small,base_url={server.base_url},language=cadquery,attempts=3,"
            "concurrency=4,rps=100']\n"
            "protocol: {name: gencad, render_size: 64, samples: 3000, iou_resolution: 32}\njobs: 2\n",
            encoding="utf-8",
        )
        env = dict(os.environ, OPENAI_API_KEY=KEY, HOME=str(tmp_path), GEN3DEVAL_SANDBOX="basic")
        out = tmp_path / "run"
        args = [*_cmd(), "run", str(spec), "--out", str(out)]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = _generate_rows(out)
        assert len(rows) == 6 * 3 and all(r["status"] == "done" for r in rows.values())
        assert len(server.chats(200)) == 18  # each attempt asked once
        # The system prompt states the CadQuery contract; images are PNG data URLs (the ref render of the truth).
        first = server.chats(200)[0].body
        assert "cadquery" in json.dumps(first["messages"][0]).lower()
        ran = _executed(out)
        first_ok = [ran[(c, 1)] for c, a in ran if a == 1]
        assert 0 < sum(first_ok) < 6 and all(ran[(c, a)] for c, a in ran if a > 1)
        db = sqlite3.connect(out / "store.sqlite")
        errs = db.execute(
            "SELECT error_class FROM stages WHERE stage='execute' AND system='vlm' AND status!='done'"
        ).fetchall()
        db.close()
        assert errs and {e for (e,) in errs} == {"runtime"}
        # VSR and IoU with failures counted (attempt 1 by default), and the recovery curve, from the store.
        summary = json.loads((out / "summary.json").read_text())
        (vlm,) = [s for s in summary["systems"] if s["system"] == "vlm"]
        assert vlm["n"] == 6 and vlm["n_executable"] == sum(first_ok)
        assert vlm["vsr"]["value"] == pytest.approx(sum(first_ok) / 6)
        assert vlm["errors"] == {"runtime": 6 - sum(first_ok)}
        iou = vlm["metrics"]["best_iou"]
        assert iou["all"]["n"] == 6 and iou["valid"]["n"] == sum(first_ok)
        assert iou["all"]["value"] == pytest.approx(iou["valid"]["value"] * sum(first_ok) / 6)  # failures: 0
        shares = [sum(ran[(c, a)] for c, b in ran if b == a) / 6 for a in (1, 2, 3)]
        assert vlm["revision"]["k"] == 3 and vlm["revision"]["recovery"] == pytest.approx(shares)
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(server.chats(200)) == 18  # the rerun asked nothing
        for p in out.rglob("*"):
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p


# -- kill -9 mid-run, then a rerun asks no stored attempt again ---------------------------------------------------

MARK = re.compile(r"// attempt (\d)")


def marked_answer(request: ChatRequest) -> str:
    """A program that names its attempt (``// attempt N``): the revision request quotes the previous program
    verbatim, so the server knows which attempt each request is for."""
    prev = MARK.findall(request.text)
    n = int(prev[-1]) + 1 if prev else 1
    digest = hashlib.sha256(request.images[0].encode()).digest()
    body = BROKEN if (n == 1 and digest[0] % 2 == 0) else BOX_PROGRAM
    return f"```js\n// attempt {n}\n{body}\n```"


def _asked(server: FakeOpenAI, since: int = 0) -> collections.Counter[tuple[str, int]]:
    """Chat requests answered (200) per (image hash, attempt), from request ``since`` on."""
    out: collections.Counter[tuple[str, int]] = collections.Counter()
    for r in server.requests[since:]:
        if r.path.endswith("/chat/completions") and r.status == 200:
            req = ChatRequest(r.body, r.headers)
            prev = MARK.findall(req.text)
            out[
                (hashlib.sha256(req.images[0].encode()).hexdigest()[:12], int(prev[-1]) + 1 if prev else 1)
            ] += 1
    return out


@pytest.mark.slow
def test_vlm_kill9_mid_run_then_rerun_asks_no_stored_attempt(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    cfg = FakeOpenAIConfig(api_key=KEY, answer=marked_answer, latency_s=0.4)
    with FakeOpenAI(cfg) as server:
        env = dict(os.environ, OPENAI_API_KEY=KEY, HOME=str(tmp_path), GEN3DEVAL_SANDBOX="basic")
        out = tmp_path / "run"
        spec = _spec(tmp_path, manifest, server.base_url)
        args = [*_cmd(), "run", str(spec), "--out", str(out)]
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while len(server.chats(200)) < 8 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed mid-way"
            os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the run; then its orphaned workers
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        # An answer is stored the moment it arrives (the jobs table), even when the kill came before its
        # generate row was committed: such an attempt is finished from the stored answer, never asked again.
        db = sqlite3.connect(out / "store.sqlite")
        stored = db.execute('SELECT "case", attempt FROM jobs WHERE handle IS NOT NULL').fetchall()
        db.close()
        assert 0 < len(stored) < 18, stored
        n = len(server.requests)
        again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        rerun = _asked(server, n)
        # The rerun asks exactly the attempts whose answer was not stored, each once.
        assert all(v == 1 for v in rerun.values()), rerun
        assert sum(rerun.values()) == 18 - len(stored), (len(stored), rerun)
        # Across both runs: 6 images x 3 attempts, each answered once, or twice when in flight at the kill.
        both = _asked(server)
        assert len(both) == 18 and max(both.values()) <= 2, both
        # Same rows as an uninterrupted run: 6 x 3 answers; broken first programs fail, every revision runs.
        rows = _generate_rows(out)
        assert len(rows) == 18 and all(r["status"] == "done" for r in rows.values())
        ran = _executed(out)
        assert len(ran) == 18 and all(ran[(c, a)] for c, a in ran if a > 1) and not all(ran.values())
        db = sqlite3.connect(out / "store.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
