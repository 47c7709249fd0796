"""A loopback stand-in for an OpenAI-compatible chat-completions endpoint, with fault injection.

A real :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 (port 0, HTTP/1.1 keep-alive, backlog 256) under
``/v1`` (``base_url`` is ``http://127.0.0.1:PORT/v1``):

- ``POST /v1/chat/completions``: the body must be a JSON object with ``model`` (a listed one, else 404 as
  OpenAI answers) and a non-empty ``messages`` list (else 400). The answer has OpenAI's shape: ``id``,
  ``object``, ``created``, ``model``, ``choices[0].message.content`` / ``.refusal``, ``finish_reason`` and
  ``usage`` with ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and (OpenRouter's) ``cost``.
  Tokens are counted as ceil(characters / 4) of the message texts and the answer, plus 85 per image;
  ``cost`` = ``price_per_token`` x total tokens.
- ``GET /v1/models``: ``{"object": "list", "data": [{"id": ...}, ...]}`` (``models_route=False``: 404, as a
  server without the route); ``GET /v1/key``: OpenRouter's key info (checks the key; ``key_route=False``: 404).

With ``api_key`` set, every route (``/models`` only when ``models_need_key``, as OpenRouter lists publicly)
checks ``Authorization: Bearer KEY`` -> 401 with an OpenAI error body that echoes the key it got (OpenAI
echoes part of it), so tests can check that clients redact it. Errors use OpenAI's
``{"error": {"message", "type", "code"}}``.

The answer text comes from ``answer(request) -> str | Reply`` (:class:`ChatRequest`: the parsed body, its
text and images; default: :func:`box_program_answer`, a valid Three.js box program in a ```` ```js ```` fence).
A :class:`Reply` sets ``finish_reason``, ``refusal`` or a null content too.

Faults (:class:`Fault`) apply to the first ``count`` matching requests, then with ``probability`` (seeded
RNG); ``on`` is ``chat`` or ``models``; ``match(request)`` restricts chat faults to some requests:
``429`` (with ``Retry-After``), ``500``, ``503``, ``drop`` (connection closed without an answer), ``cut``
(a 200 whose ``Content-Length`` is larger than the bytes sent), ``slow`` (answer after ``delay_s``: a client
timeout), ``malformed`` (a 200 whose JSON is cut), ``error200`` (a 200 carrying an ``error`` object and no
choices, as OpenRouter does for provider failures), ``length`` (the answer cut at half with
``finish_reason: length``), ``refusal`` (null content and a ``refusal``), ``empty`` (content "").

Every request is recorded (:class:`Recorded`: method, path, headers, parsed body, status, fault) so tests can
assert what was sent. Use it as a context manager::

    with FakeOpenAI(FakeOpenAIConfig(faults=[Fault("429", count=1)])) as server:
        client = ChatClient(base_url=server.base_url, api_key=server.config.api_key, policy=...)
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULT_KINDS = (
    "429",
    "500",
    "503",
    "drop",
    "cut",
    "slow",
    "malformed",
    "error200",
    "length",
    "refusal",
    "empty",
)
PATH_KINDS = ("chat", "models")
TOKENS_PER_IMAGE = 85

BOX_PROGRAM = """function createObject(THREE) {
  const geometry = new THREE.BoxGeometry(1, 0.8, 0.6);
  const material = new THREE.MeshStandardMaterial({ color: 0x8899aa });
  return new THREE.Mesh(geometry, material);
}"""


@dataclass
class ChatRequest:
    """A chat-completions request as the stand-in parsed it (handed to the ``answer`` callback)."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def model(self) -> str:
        return str(self.body.get("model"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages")
        return msgs if isinstance(msgs, list) else []

    def texts(self, role: str | None = None) -> list[str]:
        """The text of every message (or of messages with ``role``), text parts joined per message."""
        out = []
        for m in self.messages:
            if role is not None and m.get("role") != role:
                continue
            c = m.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out.append(
                    "\n".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
                )
        return out

    @property
    def text(self) -> str:
        """All message texts joined (system, user, assistant)."""
        return "\n".join(self.texts())

    @property
    def images(self) -> list[str]:
        """The ``image_url.url`` of every image part, in order."""
        urls = []
        for m in self.messages:
            c = m.get("content")
            if isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and p.get("type") == "image_url":
                        iu = p.get("image_url")
                        urls.append(iu.get("url") if isinstance(iu, dict) else iu)
        return [u for u in urls if isinstance(u, str)]


@dataclass
class Reply:
    """A full answer from the ``answer`` callback: ``content`` None sends a null content."""

    content: str | None
    finish_reason: str = "stop"
    refusal: str | None = None


def box_program_answer(request: ChatRequest) -> str:
    """The default answer: a short remark and a valid Three.js box program in one ```js fence."""
    return f"Here is the program.\n\n```js\n{BOX_PROGRAM}\n```\n"


@dataclass
class Fault:
    """One fault rule: ``kind`` (FAULT_KINDS) on requests of path kind ``on`` (PATH_KINDS).

    Applied to the first ``count`` matching requests, then to each further one with ``probability``;
    ``match`` (chat only) restricts the rule to requests for which it returns True.
    """

    kind: str
    on: str = "chat"
    count: int = 0
    probability: float = 0.0
    retry_after: float = 0.05  # seconds, 429 only
    delay_s: float = 1.0  # slow only
    match: Callable[[ChatRequest], bool] | None = None
    used: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.on not in PATH_KINDS:
            raise ValueError(f"fault path kind must be one of {PATH_KINDS}, got {self.on!r}")


@dataclass
class FakeOpenAIConfig:
    """Behaviour of the stand-in. ``latency_s``: seconds before each chat answer (a range: uniform)."""

    api_key: str | None = "sk-test-0123456789abcdefXYZ"
    models: tuple[str, ...] = ("test/vlm-small", "test/vlm-large")
    answer: Callable[[ChatRequest], str | Reply] = box_program_answer
    latency_s: float | tuple[float, float] = 0.0
    price_per_token: float = 1e-6
    models_route: bool = True
    models_need_key: bool = True
    key_route: bool = True
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0


@dataclass
class Recorded:
    """One request as the server saw it (headers with lower-case names; ``body`` parsed JSON or None)."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    time: float
    status: int | None = None
    fault: str | None = None


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # bursts of 100+ concurrent requests, as a hosted API takes them
    daemon_threads = True


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class FakeOpenAI:
    """The stand-in server; a context manager that starts and stops it on a background thread."""

    def __init__(self, config: FakeOpenAIConfig | None = None) -> None:
        self.config = config or FakeOpenAIConfig()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most chat requests being answered at once
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def origin(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    # -- assertion helpers ------------------------------------------------------------------------------
    def chats(self, status: int | None = None) -> list[Recorded]:
        """The chat-completions requests received (optionally only those answered with ``status``)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.endswith("/chat/completions") and (status is None or r.status == status)
            ]

    def count(self, path_end: str, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.path.endswith(path_end) and (status is None or r.status == status)
            )

    def faults_applied(self, kind: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.fault == kind)

    # -- internals --------------------------------------------------------------------------------------
    def pick_fault(self, on: str, request: ChatRequest | None) -> Fault | None:
        with self._lock:
            for f in self.config.faults:
                if f.on != on:
                    continue
                if f.match is not None and (request is None or not f.match(request)):
                    continue
                if f.used < f.count or (f.probability > 0 and self._rng.random() < f.probability):
                    f.used += 1
                    return f
        return None

    def latency(self) -> float:
        lat = self.config.latency_s
        if isinstance(lat, tuple):
            with self._lock:
                return self._rng.uniform(*lat)
        return float(lat)


class _ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    server_version = "FakeOpenAI/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read self.fake.requests
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fake = self.fake
        path = urlsplit(self.path).path.rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded(
            method, path, {k.lower(): v for k, v in self.headers.items()}, raw, body, time.monotonic()
        )
        with fake._lock:
            fake.requests.append(rec)
        try:
            self._route(method, path, raw, rec)
        except _ApiError as e:
            err = {"error": {"message": e.message, "type": e.type, "code": e.status}}
            self._send_json(e.status, err, rec)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
            self.close_connection = True

    def _check_key(self) -> None:
        key = self.fake.config.api_key
        got = self.headers.get("Authorization")
        if key is not None and got != f"Bearer {key}":
            # Echoes the key it got, as OpenAI does (partly): clients must redact server messages.
            sent = (got or "").removeprefix("Bearer ")
            raise _ApiError(401, f"Incorrect API key provided: {sent}.", "authentication_error")

    def _route(self, method: str, path: str, raw: bytes, rec: Recorded) -> None:
        cfg = self.fake.config
        if method == "GET" and path == "/v1/models":
            if not cfg.models_route:
                raise _ApiError(404, "Not Found")
            if cfg.models_need_key:
                self._check_key()
            fault = self.fake.pick_fault("models", None)
            if fault is not None and self._transport_fault(fault, rec):
                return
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in cfg.models]
            self._send_json(200, {"object": "list", "data": data}, rec)
            return
        if method == "GET" and path == "/v1/key":
            if not cfg.key_route:
                raise _ApiError(404, "Not Found")
            self._check_key()
            self._send_json(200, {"data": {"label": "fake", "usage": 0, "limit": None}}, rec)
            return
        if method == "POST" and path == "/v1/chat/completions":
            self._chat(raw, rec)
            return
        raise _ApiError(404, f"no route for {method} {path}")

    def _chat(self, raw: bytes, rec: Recorded) -> None:
        fake = self.fake
        cfg = fake.config
        self._check_key()
        if not isinstance(rec.body, dict):
            raise _ApiError(400, "the body must be a JSON object")
        req = ChatRequest(rec.body, rec.headers)
        if req.model not in cfg.models:
            raise _ApiError(404, f"The model `{req.model}` does not exist", "not_found_error")
        if not req.messages or not all(isinstance(m, dict) and "role" in m for m in req.messages):
            raise _ApiError(400, "messages: a non-empty list of {role, content} objects is required")
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            delay = fake.latency()
            if delay:
                time.sleep(delay)
            fault = fake.pick_fault("chat", req)
            if fault is not None and self._transport_fault(fault, rec):
                return
            self._answer(req, fault, rec)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _answer(self, req: ChatRequest, fault: Fault | None, rec: Recorded) -> None:
        cfg = self.fake.config
        got = cfg.answer(req)
        reply = got if isinstance(got, Reply) else Reply(content=got)
        if fault is not None:
            rec.fault = fault.kind
            if fault.kind == "length":
                text = reply.content or ""
                reply = Reply(content=text[: len(text) // 2], finish_reason="length")
            elif fault.kind == "refusal":
                reply = Reply(content=None, refusal="I can't help with that request.")
            elif fault.kind == "empty":
                reply = Reply(content="")
        prompt_tokens = _tokens(req.text) + TOKENS_PER_IMAGE * len(req.images)
        completion_tokens = _tokens(reply.content or reply.refusal or "")
        total = prompt_tokens + completion_tokens
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.refusal is not None:
            message["refusal"] = reply.refusal
        obj = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:20]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
                "cost": round(total * cfg.price_per_token, 12),
            },
        }
        if fault is not None and fault.kind == "malformed":
            self._send(200, json.dumps(obj).encode()[:40], rec)
            return
        self._send_json(200, obj, rec)

    def _transport_fault(self, fault: Fault, rec: Recorded) -> bool:
        """Apply a fault that replaces the answer; True when the request was answered (or dropped) by it."""
        if fault.kind in ("length", "refusal", "empty", "malformed"):
            return False  # these shape the answer itself (see _answer)
        rec.fault = fault.kind
        if fault.kind == "429":
            err = {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": 429}}
            self._send_json(429, err, rec, {"Retry-After": f"{fault.retry_after:g}"})
            return True
        if fault.kind in ("500", "503"):
            err = {
                "error": {
                    "message": "The server had an error",
                    "type": "server_error",
                    "code": int(fault.kind),
                }
            }
            self._send_json(int(fault.kind), err, rec)
            return True
        if fault.kind == "error200":
            err = {"error": {"message": "Provider returned error", "code": 502}}
            self._send_json(200, err, rec)
            return True
        if fault.kind == "drop":
            self.close_connection = True
            return True
        if fault.kind == "cut":
            data = json.dumps(
                {"id": "chatcmpl-cut", "choices": [{"message": {"content": "x" * 200}}]}
            ).encode()
            self.close_connection = True
            self._send(200, data[: len(data) // 2], rec, length=len(data))
            return True
        if fault.kind == "slow":
            time.sleep(fault.delay_s)
        return False

    def _send_json(self, status: int, obj: Any, rec: Recorded, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), rec, headers=headers)

    def _send(
        self,
        status: int,
        data: bytes,
        rec: Recorded,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
