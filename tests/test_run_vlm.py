"""``gen3deval run --system vlm`` end to end against the loopback OpenAI-compatible stand-in (issue 11, phase 1):
Three.js programs for 6 ``lowpoly304`` objects with k = 3 attempts. Some first answers are broken and fixed
when the error is fed back; every attempt is asked once and stored; a rerun asks nothing again; the key is in
no byte of the run folder."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
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
