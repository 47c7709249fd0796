"""The ``vlm`` system's bad input (issue 11): a run against an unreachable endpoint, with a refused key or an
unknown model stops at the preflight with one line and exit status 2 before any chat request; a llama.cpp
server (one listed model under another name) is accepted; refusals, empty answers, two programs, huge answers
and answers cut at ``max_tokens`` are recorded per attempt with their class and the run goes on.

All against the loopback stand-in (tests/fakes/openai_server.py) through the real ``gen3deval run``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fakes.openai_server import BOX_PROGRAM, ChatRequest, FakeOpenAI, FakeOpenAIConfig, Reply
from gen3deval.errors import ConfigError
from gen3deval.remote.policy import RemotePolicy
from gen3deval.systems._openai_api import ChatClient

KEY = "sk-vlm-bad-input-1a2b3c4d5e6f"


def _cmd() -> list[str]:
    exe = Path(sys.executable).with_name("gen3deval")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gen3deval.cli"]


def _run(
    tmp: Path, manifest: Path, system: str, key: str = KEY, limit: int = 2
) -> subprocess.CompletedProcess[str]:
    spec = tmp / "spec.yaml"
    spec.write_text(
        f"suite: {{spec: 'manifest:{manifest}', limit: {limit}}}\n"
        f"systems: ['{system}']\n"
        "protocol: {name: code3d, render_size: 64, samples: 2000}\njobs: 2\n",
        encoding="utf-8",
    )
    env = dict(os.environ, OPENAI_API_KEY=key, HOME=str(tmp), GEN3DEVAL_SANDBOX="basic")
    args = [*_cmd(), "run", str(spec), "--out", str(tmp / "run"), "--quiet"]
    return subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- preflight: the run stops before spending anything ----------------------------------------------------------


def test_unreachable_endpoint_stops_with_one_line(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    proc = _run(tmp_path, manifest, f"vlm:model=test/vlm-small,base_url={url},retries=0,timeout_s=5")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1 and "cannot reach" in lines[0] and url in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_wrong_key_stops_with_one_line_and_no_chat(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    wrong = "sk-wrong-key-000111222333"
    with FakeOpenAI(FakeOpenAIConfig(api_key=KEY)) as server:
        proc = _run(tmp_path, manifest, f"vlm:model=test/vlm-small,base_url={server.base_url}", key=wrong)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = _error_lines(proc)
        assert len(lines) == 1 and "refused the key (HTTP 401)" in lines[0], lines
        assert wrong not in proc.stdout + proc.stderr  # the server echoes it; the message must not
        assert server.chats() == [] and server.count("/models") >= 1


def test_unknown_model_stops_with_one_line_and_no_chat(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    with FakeOpenAI(FakeOpenAIConfig(api_key=KEY)) as server:
        proc = _run(tmp_path, manifest, f"vlm:model=google/nope-1,base_url={server.base_url}")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = _error_lines(proc)
        assert len(lines) == 1 and "unknown model 'google/nope-1'" in lines[0], lines
        assert "test/vlm-small" in lines[0]  # names the known ones
        assert server.chats() == []


def test_missing_key_env_stops_before_any_request(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    with FakeOpenAI(FakeOpenAIConfig(api_key=KEY)) as server:
        proc = _run(tmp_path, manifest, f"vlm:model=test/vlm-small,base_url={server.base_url}", key="")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = _error_lines(proc)
        assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0], lines
        assert server.requests == []


def _check(server: FakeOpenAI, model: str) -> None:
    async def go() -> None:
        async with ChatClient(
            base_url=server.base_url, api_key=None, policy=RemotePolicy.from_settings({"retries": 0})
        ) as client:
            await client.check(model)

    asyncio.run(go())


def test_llama_cpp_single_listed_model_under_another_name_is_accepted() -> None:
    # llama.cpp's server lists its one loaded model (a file path) and answers any model name with it.
    cfg = FakeOpenAIConfig(api_key=None, models=("/models/qwen2.5-vl-7b-q4_k_m.gguf",))
    with FakeOpenAI(cfg) as server:
        _check(server, "qwen2.5-vl")  # no error
    # Two listed models: a name that is neither is still unknown (vLLM / OpenRouter).
    cfg = FakeOpenAIConfig(api_key=None, models=("a/one", "b/two"))
    with FakeOpenAI(cfg) as server, pytest.raises(ConfigError, match=r"unknown model 'qwen2\.5-vl'"):
        _check(server, "qwen2.5-vl")


# -- answers that are not a program: recorded per attempt with their class -------------------------------------

SECOND = BOX_PROGRAM.replace("BoxGeometry(1, 0.8, 0.6)", "BoxGeometry(2, 0.5, 0.5)").replace(
    "return new", "// the longer one: a second, revised program\n  return new"
)
KINDS = ("refusal", "empty", "two", "huge", "length", "ok")


class _ByImage:
    """Answers by the order in which images are first seen: the i-th image gets KINDS[i] (deterministic per
    image whatever the request order, so each case gets one kind)."""

    def __init__(self) -> None:
        self.kind: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest) -> str | Reply:
        with self.lock:
            kind = self.kind.setdefault(request.images[0], KINDS[len(self.kind) % len(KINDS)])
        if kind == "refusal":
            return Reply(content=None, refusal="I can't help with that.")
        if kind == "empty":
            return ""
        if kind == "two":
            return f"First:\n```js\n{BOX_PROGRAM}\n```\nOr better:\n```js\n{SECOND}\n```\n"
        if kind == "huge":
            return "I will describe the object at length. " * 55_000  # ~2.1 MB of prose, no program
        if kind == "length":
            return Reply(content=f"```js\n{BOX_PROGRAM[:60]}", finish_reason="length")
        return f"```js\n{BOX_PROGRAM}\n```"


def test_answers_that_are_not_programs_are_recorded_with_their_class(
    shared_data: Path, tmp_path: Path
) -> None:
    manifest = shared_data / "lowpoly304" / "manifest.jsonl"
    answers = _ByImage()
    with FakeOpenAI(FakeOpenAIConfig(api_key=KEY, answer=answers)) as server:
        system = f"vlm:model=test/vlm-small,base_url={server.base_url},attempts=1,concurrency=1,rps=100"
        proc = _run(tmp_path, manifest, system, limit=6)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert len(server.chats(200)) == 6 and sorted(answers.kind.values()) == sorted(KINDS)
    db = sqlite3.connect(tmp_path / "run" / "store.sqlite")
    rows = db.execute(
        "SELECT \"case\", stage, status, error_class, value FROM stages WHERE system='vlm' AND attempt=1"
    ).fetchall()
    db.close()
    gen = {c: (s, e, json.loads(v) if v else {}) for c, st, s, e, v in rows if st == "generate"}
    ex = {c: (s, e) for c, st, s, e, v in rows if st == "execute"}
    assert len(gen) == 6
    # Which case got which kind: the image hash of each generate row names its case's image.
    classes: dict[str, Any] = {}
    for case, (status, err, value) in gen.items():
        remote = value.get("remote") or {}
        classes[case] = (status, err, remote.get("finish_reason"), ex.get(case))
    got = sorted(
        (err or (ex_[1] if ex_ and ex_[0] != "done" else None) or "ok")
        for status, err, _, ex_ in classes.values()
    )
    # refusal -> refusal; empty and huge (prose, no program) -> no_code; cut at max_tokens -> truncated;
    # two programs -> the longer (later) one runs; ok runs.
    assert got == sorted(["refusal", "no_code", "no_code", "truncated", "ok", "ok"]), classes
