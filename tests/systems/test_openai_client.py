"""The chat-completions client (gen3deval.systems._openai_api) against the loopback OpenAI-compatible stand-in
(tests/fakes/openai_server.py): real HTTP on 127.0.0.1, faults injected by the server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image

from fakes.openai_server import (
    BOX_PROGRAM,
    TOKENS_PER_IMAGE,
    ChatRequest,
    FakeOpenAI,
    FakeOpenAIConfig,
    Fault,
    Reply,
)
from gen3deval.errors import ConfigError, UserInputError
from gen3deval.execute.extract import extract_code
from gen3deval.remote.errors import FinalError, MaybeSentError, RemoteError, RetryableError
from gen3deval.remote.policy import RemotePolicy
from gen3deval.systems._openai_api import ChatAnswer, ChatClient, image_part, parse_answer

T = TypeVar("T")
MODEL = "test/vlm-small"
# Tiny waits so the file runs in a few seconds; retries as in production (3 after the first try).
POLICY = RemotePolicy(
    concurrency=16, rps=1000.0, retries=3, backoff_s=0.01, backoff_max_s=0.05, request_timeout_s=1.0
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (6, 4), color: Any = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "ref.png"
    p.write_bytes(png_bytes())
    return p


def program(text: str) -> str | None:
    """The program extract_code recovers from an answer (its trailing newline dropped)."""
    code = extract_code(text, "threejs")
    return None if code is None else code.rstrip("\n")


def messages(image: Path, text: str = "Rebuild this object.") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You write Three.js programs."},
        {"role": "user", "content": [{"type": "text", "text": text}, image_part(image)]},
    ]


async def ask(
    server: FakeOpenAI, msgs: list[dict[str, Any]], *, key: str | None = "", **kw: Any
) -> ChatAnswer:
    policy = kw.pop("policy", POLICY)
    api_key = server.config.api_key if key == "" else key
    async with ChatClient(base_url=server.base_url, api_key=api_key, policy=policy) as c:
        return await c.chat(model=kw.pop("model", MODEL), messages=msgs, **kw)


# -- a normal answer ---------------------------------------------------------------------------------------


def test_chat_sends_the_openai_request_and_parses_the_answer(server: FakeOpenAI, image: Path):
    msgs = messages(image)
    ans = run(
        ask(
            server, msgs, temperature=0.0, max_tokens=2048, seed=7, extra_body={"provider": {"sort": "price"}}
        )
    )
    assert program(ans.text) == BOX_PROGRAM
    assert ans.finish_reason == "stop" and ans.refusal is None and ans.model == MODEL
    assert ans.request_id is not None and ans.request_id.startswith("chatcmpl-")
    # Token counts and cost by the stand-in's formula, computed independently here.
    prompt_text = "You write Three.js programs.\nRebuild this object."
    assert ans.prompt_tokens == math.ceil(len(prompt_text) / 4) + TOKENS_PER_IMAGE
    assert ans.completion_tokens == math.ceil(len(ans.text) / 4)
    assert ans.cost == pytest.approx((ans.prompt_tokens + ans.completion_tokens) * 1e-6)
    assert 0 < ans.latency_s < 5
    [rec] = server.chats()
    assert rec.path == "/v1/chat/completions" and rec.method == "POST"
    assert rec.headers["authorization"] == f"Bearer {server.config.api_key}"
    assert rec.body == {
        "model": MODEL,
        "messages": msgs,
        "temperature": 0.0,
        "max_tokens": 2048,
        "seed": 7,
        "provider": {"sort": "price"},
    }  # top_p (None) is not sent
    # The image arrives inline, byte for byte.
    [url] = ChatRequest(rec.body, rec.headers).images
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()


def test_no_key_sends_no_authorization_header(image: Path):
    with FakeOpenAI(FakeOpenAIConfig(api_key=None)) as server:
        ans = run(ask(server, messages(image), key=None))
        assert ans.text
        assert "authorization" not in server.chats()[0].headers


def test_answer_round_trips_through_json(server: FakeOpenAI, image: Path):
    ans = run(ask(server, messages(image)))
    assert ChatAnswer.from_dict(json.loads(json.dumps(ans.to_dict()))) == ans


def test_revision_messages_reach_the_server_verbatim(image: Path):
    previous = "function createObject(THREE) { return new THREE.Mesh(new THREE.BoxGeometry(1,1,1)); }"
    seen: list[ChatRequest] = []

    def answer(req: ChatRequest) -> str:
        seen.append(req)
        return "```js\n" + ("// revised\n" + previous if previous in req.text else BOX_PROGRAM) + "\n```"

    with FakeOpenAI(FakeOpenAIConfig(answer=answer)) as server:
        msgs = messages(image, f"Your previous program:\n```js\n{previous}\n```\nIt failed: TypeError ...")
        msgs[1]["content"].append(image_part(image))  # its render beside the reference
        ans = run(ask(server, msgs))
    assert program(ans.text) == "// revised\n" + previous
    assert len(seen[0].images) == 2


# -- answers that are not a program ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "finish", "text", "refusal"),
    [
        ("length", "length", "half", None),
        ("refusal", "stop", "", "I can't help with that request."),
        ("empty", "stop", "", None),
    ],
)
def test_length_refusal_and_empty_answers_are_returned_as_such(image: Path, kind, finish, text, refusal):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault(kind, count=1)])) as server:
        ans = run(ask(server, messages(image)))
    full = "Here is the program.\n\n```js\n" + BOX_PROGRAM + "\n```\n"
    assert ans.finish_reason == finish and ans.refusal == refusal
    assert ans.text == (full[: len(full) // 2] if text == "half" else text)


def test_callback_reply_with_null_content(image: Path):
    cfg = FakeOpenAIConfig(answer=lambda req: Reply(content=None, finish_reason="content_filter"))
    with FakeOpenAI(cfg) as server:
        ans = run(ask(server, messages(image)))
    assert (ans.text, ans.finish_reason) == ("", "content_filter")


def test_parse_answer_joins_text_parts_and_rejects_bodies_without_choices():
    body = {
        "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]
    }
    ans = parse_answer(body, 0.5, "POST x")
    assert ans.text == "ab" and ans.cost is None and ans.prompt_tokens is None
    with pytest.raises(FinalError, match="no choices"):
        parse_answer({"id": "x", "choices": []}, 0.1, "POST x")
    with pytest.raises(FinalError, match="not a chat-completions object"):
        parse_answer([1, 2], 0.1, "POST x")
    with pytest.raises(FinalError, match="context length") as e:
        parse_answer({"error": {"message": "context length exceeded", "code": 400}}, 0.1, "POST x")
    assert e.value.status == 400


# -- transport faults --------------------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(image: Path):
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)
        await asyncio.sleep(s)

    cfg = FakeOpenAIConfig(faults=[Fault("429", count=2, retry_after=0.07)])
    with FakeOpenAI(cfg) as server:

        async def go() -> ChatAnswer:
            async with ChatClient(
                base_url=server.base_url, api_key=server.config.api_key, policy=POLICY, sleep=sleep
            ) as c:
                return await c.chat(model=MODEL, messages=messages(image))

        ans = run(go())
        assert ans.text and delays == [0.07, 0.07]
        assert [r.status for r in server.chats()] == [429, 429, 200]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_are_retried(image: Path, kind: str):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault(kind, count=2)])) as server:
        ans = run(ask(server, messages(image)))
        assert ans.text and [r.status for r in server.chats()] == [int(kind), int(kind), 200]


def test_retries_exhausted_raise_retryable_with_the_status(image: Path):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault("500", count=10)])) as server:
        with pytest.raises(RetryableError, match="gave up after 4 tries") as e:
            run(ask(server, messages(image)))
        assert e.value.status == 500 and len(server.chats()) == 4


@pytest.mark.parametrize("kind", ["drop", "cut", "slow"])
def test_a_lost_answer_is_sent_once_more(image: Path, kind: str):
    # slow: the answer comes after the client's 1 s timeout.
    cfg = FakeOpenAIConfig(faults=[Fault(kind, count=1, delay_s=1.5)])
    with FakeOpenAI(cfg) as server:

        async def go() -> tuple[ChatAnswer, int]:
            async with ChatClient(
                base_url=server.base_url, api_key=server.config.api_key, policy=POLICY
            ) as c:
                return await c.chat(model=MODEL, messages=messages(image)), c.resent

        ans, resent = run(go())
        assert program(ans.text) == BOX_PROGRAM
        assert resent == 1 and len(server.chats()) == 2 and server.faults_applied(kind) == 1


def test_an_answer_lost_twice_raises_maybe_sent(image: Path):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault("drop", count=2)])) as server:
        with pytest.raises(MaybeSentError):
            run(ask(server, messages(image)))
        assert len(server.chats()) == 2  # never a loop of resends


def test_malformed_json_is_a_final_error(image: Path):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault("malformed", count=1)])) as server:
        with pytest.raises(FinalError, match="malformed JSON"):
            run(ask(server, messages(image)))
        assert len(server.chats()) == 1


def test_an_error_object_in_a_200_is_not_an_empty_answer(image: Path):
    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault("error200", count=1)])) as server:
        with pytest.raises(RetryableError, match="Provider returned error") as e:
            run(ask(server, messages(image)))
        assert e.value.status == 502


def test_fault_match_targets_some_requests(image: Path):
    cfg = FakeOpenAIConfig(faults=[Fault("empty", probability=1.0, match=lambda r: "chair" in r.text)])
    with FakeOpenAI(cfg) as server:
        assert run(ask(server, messages(image, "a chair"))).text == ""
        assert run(ask(server, messages(image, "a table"))).text != ""


# -- key, model, errors --------------------------------------------------------------------------------------


def test_wrong_key_and_unknown_model_are_final_and_never_show_the_key(server: FakeOpenAI, image: Path):
    wrong = "sk-wrong-key-9876543210"
    with pytest.raises(FinalError) as e:
        run(ask(server, messages(image), key=wrong))
    assert e.value.status == 401 and "Incorrect API key provided: ***" in str(e.value)
    assert wrong not in str(e.value)  # the server echoed it; the client masked it
    with pytest.raises(FinalError) as e2:
        run(ask(server, messages(image), model="nope/none"))
    assert e2.value.status == 404 and "nope/none" in str(e2.value)
    assert str(server.config.api_key) not in str(e2.value)
    assert len(server.chats()) == 2  # 4xx is not retried


def test_bad_settings_are_config_errors(image: Path, server: FakeOpenAI):
    with pytest.raises(ConfigError, match="base_url"):
        ChatClient(base_url="localhost:8000/v1", api_key=None, policy=POLICY)
    with pytest.raises(ConfigError, match="extra_body: may not set model"):
        run(ask(server, messages(image), extra_body={"model": "x"}))


# -- preflight --------------------------------------------------------------------------------------------------


async def preflight(server_url: str, key: str | None, model: str = MODEL) -> None:
    async with ChatClient(base_url=server_url, api_key=key, policy=POLICY) as c:
        await c.check(model)


def test_preflight_passes_for_a_listed_model(server: FakeOpenAI):
    run(preflight(server.base_url, server.config.api_key))
    assert server.count("/models", 200) == 1 and not server.chats()


def test_preflight_refused_key(server: FakeOpenAI):
    wrong = "sk-wrong-key-9876543210"
    with pytest.raises(ConfigError, match=r"refused the key \(HTTP 401\)") as e:
        run(preflight(server.base_url, wrong))
    assert "provided: ***" in str(e.value) and wrong not in str(e.value) and not server.chats()


def test_preflight_refused_key_when_models_are_public(image: Path):
    # OpenRouter lists models without a key: the key is checked on /key instead.
    with FakeOpenAI(FakeOpenAIConfig(models_need_key=False)) as server:
        with pytest.raises(ConfigError, match=r"refused the key \(HTTP 401\).*/v1/key"):
            run(preflight(server.base_url, "sk-wrong-key-9876543210"))
        run(preflight(server.base_url, server.config.api_key))
        assert not server.chats()


def test_preflight_unknown_model_names_known_ones(server: FakeOpenAI):
    with pytest.raises(
        ConfigError, match=r"unknown model 'google/gemini' .*2 known: test/vlm-small, test/vlm-large"
    ):
        run(preflight(server.base_url, server.config.api_key, "google/gemini"))
    assert not server.chats()


def test_preflight_without_a_models_route_cannot_check_and_passes():
    with FakeOpenAI(FakeOpenAIConfig(models_route=False, key_route=False)) as server:
        run(preflight(server.base_url, server.config.api_key, "anything"))
        assert server.count("/models", 404) == 1 and not server.chats()


def test_preflight_unreachable_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ConfigError, match=rf"cannot reach {url}/models"):
        run(preflight(url, None))


def test_preflight_failing_endpoint():
    cfg = FakeOpenAIConfig(faults=[Fault("503", on="models", count=10)])
    with FakeOpenAI(cfg) as server, pytest.raises(ConfigError, match=r"failed the preflight.*HTTP 503"):
        run(preflight(server.base_url, server.config.api_key))


# -- concurrency ------------------------------------------------------------------------------------------------


def test_sixteen_requests_in_flight(image: Path):
    n, latency = 32, 0.3
    with FakeOpenAI(FakeOpenAIConfig(latency_s=latency)) as server:

        async def go() -> list[ChatAnswer]:
            async with ChatClient(
                base_url=server.base_url, api_key=server.config.api_key, policy=POLICY
            ) as c:
                msgs = messages(image)
                return await asyncio.gather(*(c.chat(model=MODEL, messages=msgs) for _ in range(n)))

        t0 = time.monotonic()
        answers = run(go())
        wall = time.monotonic() - t0
        assert all(a.text for a in answers)
        assert server.max_in_flight == 16  # the policy's concurrency, never more
        assert wall < n * latency / 4  # 2 waves of 16 (~0.6 s), far from serial (9.6 s)


# -- image_part ------------------------------------------------------------------------------------------------


def decode(part: dict[str, Any]) -> Image.Image:
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    raw = base64.b64decode(url.split(",", 1)[1])
    assert raw.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(raw))


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("JPEG", "CMYK"), ("WEBP", "RGBA"), ("BMP", "P")])
def test_image_part_converts_other_formats_to_png(tmp_path: Path, fmt: str, mode: str):
    p = tmp_path / f"ref.{fmt.lower()}"
    color: Any = 3 if mode == "P" else (10, 200, 30, 128)[: len(mode)]
    Image.new(mode, (7, 5), color).save(p, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    im = decode(image_part(p))
    assert im.size == (7, 5) and im.mode in ("RGB", "RGBA", "P", "L")
    if mode == "RGBA":
        assert im.mode == "RGBA" and im.getpixel((3, 2)) == (10, 200, 30, 128)


def test_image_part_sends_a_png_byte_for_byte(image: Path):
    url = image_part(image)["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()


def test_image_part_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "missing.png"
    with pytest.raises(UserInputError, match=f"{missing}: cannot read the image"):
        image_part(missing)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(UserInputError, match=f"{junk}: not a readable image"):
        image_part(junk)
    cut = tmp_path / "cut.png"
    cut.write_bytes(png_bytes(size=(64, 64))[:40])
    with pytest.raises(UserInputError, match=f"{cut}: not a readable PNG"):
        image_part(cut)


def test_errors_are_remote_errors():
    assert issubclass(MaybeSentError, RemoteError) and issubclass(FinalError, RemoteError)
