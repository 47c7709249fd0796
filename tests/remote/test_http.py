"""ApiClient against real HTTP servers on 127.0.0.1 (ThreadingHTTPServer in a thread) that inject faults."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gen3deval.remote import (
    ApiClient,
    FinalError,
    MaybeSentError,
    RemoteError,
    RemotePolicy,
    RetryableError,
    parse_retry_after,
)

KEY = "sk_live_4f9a1c2e8b7d6a5f3e2c1b0a9d8e7f6a"  # looks like a real key, so a leak would be obvious

# An action the server performs for one request:
#   ("json", status, obj[, headers])  ("raw", status, bytes[, headers])  ("drop",)  ("sleep", s, action)
#   ("truncate", bytes, declared_length)  ("redirect", location)
Action = tuple[Any, ...]


@dataclass
class Script:
    """Per-path queues of actions (the last one repeats) and a log of every request received."""

    routes: dict[str, list[Action]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self, path: str) -> Action:
        with self.lock:
            queue = self.routes.get(path)
            if not queue:
                return ("json", 404, {"message": f"no route {path}"})
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"].split("?")[0] == path)


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with script.lock:
                script.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": body,
                    }
                )
                script.in_flight += 1
                script.peak_in_flight = max(script.peak_in_flight, script.in_flight)
            try:
                self._act(script.next_action(self.path.split("?")[0]))
            finally:
                with script.lock:
                    script.in_flight -= 1

        def _send(
            self, status: int, data: bytes, headers: dict[str, str] | None = None, length: int | None = None
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _act(self, action: Action) -> None:
            kind = action[0]
            if kind == "sleep":
                time.sleep(action[1])
                self._act(action[2])
            elif kind == "json":
                headers = {"Content-Type": "application/json", **(action[3] if len(action) > 3 else {})}
                self._send(action[1], json.dumps(action[2]).encode(), headers)
            elif kind == "raw":
                self._send(action[1], action[2], action[3] if len(action) > 3 else None)
            elif kind == "drop":  # close the socket without answering
                self.close_connection = True
            elif kind == "truncate":  # promise more bytes than are sent, then hang up
                self._send(200, action[1], {"Content-Type": "model/gltf-binary"}, length=action[2])
                self.close_connection = True
            elif kind == "redirect":
                self._send(302, b"", {"Location": action[1]})
            else:  # pragma: no cover - a mistake in a test
                raise AssertionError(kind)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


@contextlib.contextmanager
def serve(routes: dict[str, Any] | None = None) -> Iterator[tuple[str, Script]]:
    """A real HTTP server on 127.0.0.1 (free port) in a thread; yields (base URL, script)."""
    script = Script(routes=dict(routes or {}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def client(base: str, delays: list[float], *, secrets: tuple[str, ...] = (KEY,), **policy: Any) -> ApiClient:
    """An ApiClient whose backoff sleeps are recorded in ``delays`` instead of waited."""

    async def record(d: float) -> None:
        delays.append(d)

    kw: dict[str, Any] = {"rps": 1000.0, "request_timeout_s": 5.0, **policy}
    return ApiClient(
        base, headers={"x-api-key": KEY}, policy=RemotePolicy(**kw), secrets=secrets, sleep=record
    )


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def assert_no_key(exc: BaseException) -> None:
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert KEY not in text


# -- retries -----------------------------------------------------------------------------------------------------


def test_429_retry_after_seconds_is_the_wait() -> None:
    routes = {
        "/sessions/": [
            ("json", 429, {"message": "slow down"}, {"Retry-After": "7"}),
            ("json", 200, {"ok": 1}),
        ]
    }
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("POST", "/sessions/", json={"a": 1}), dict(c.stats)

        result, stats = run(go)
    assert result == {"ok": 1}
    assert delays == [7.0]  # the server's value, not the 2 s backoff
    assert stats["retries"] == 1 and stats["status_429"] == 1 and stats["requests"] == 2
    assert [json.loads(r["body"]) for r in script.requests] == [{"a": 1}, {"a": 1}]


def test_429_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    routes = {"/x": [("json", 429, {}, {"Retry-After": when}), ("json", 200, [1, 2])]}
    delays: list[float] = []
    with serve(routes) as (base, _):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("GET", "x")

        assert run(go) == [1, 2]
    assert len(delays) == 1 and 18.0 <= delays[0] <= 20.5


def test_retry_after_capped_and_parsed() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after(past) == 0.0
    routes = {"/x": [("json", 503, {}, {"Retry-After": "3600"}), ("json", 200, {})]}
    delays: list[float] = []
    with serve(routes) as (base, _):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("GET", "/x")

        run(go)
    assert delays == [300.0]


def test_500_503_then_success_with_exponential_backoff() -> None:
    routes = {"/s": [("json", 500, {"message": "boom"}), ("raw", 503, b"busy"), ("json", 200, {"id": "S1"})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("GET", "/s")

        assert run(go) == {"id": "S1"}
    assert script.count("/s") == 3
    assert len(delays) == 2
    assert 1.6 <= delays[0] <= 2.4 and 3.2 <= delays[1] <= 4.8


def test_backoff_capped() -> None:
    routes: dict[str, Any] = {"/s": [("json", 502, {})]}
    delays: list[float] = []
    with serve(routes) as (base, _):

        async def go() -> Any:
            async with client(base, delays, backoff_s=20.0, backoff_max_s=30.0) as c:
                await c.request_json("GET", "/s")

        with pytest.raises(RetryableError):
            run(go)
    assert 16.0 <= delays[0] <= 24.0 and delays[1:] == [30.0, 30.0]


def test_retries_exhausted_keeps_last_status() -> None:
    routes = {"/s": [("json", 500, {}), ("json", 503, {"message": "maintenance"})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays, retries=3) as c:
                await c.request_json("GET", "/s")

        with pytest.raises(RetryableError) as info:
            run(go)
    assert script.count("/s") == 4  # first try + 3 retries
    assert len(delays) == 3
    assert info.value.status == 503 and "maintenance" in str(info.value) and "4 tries" in str(info.value)
    assert_no_key(info.value)


def test_dropped_connection_is_retried() -> None:
    routes = {"/s": [("drop",), ("json", 200, {"status": "complete"})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("GET", "/s")

        assert run(go) == {"status": "complete"}
    assert script.count("/s") == 2 and len(delays) == 1


def test_a_post_whose_answer_is_lost_is_not_retried() -> None:
    """A dropped connection after a POST was sent may have created a job on the server: retrying it could pay
    for a second one, so the client raises MaybeSentError after exactly one request (issue 10: never twice)."""
    routes = {"/jobs": [("drop",), ("json", 200, {"_id": "second"})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                return await c.request_json("POST", "/jobs", json={"x": 1})

        with pytest.raises(MaybeSentError) as info:
            run(go)
    assert script.count("/jobs") == 1 and delays == []
    assert "may have reached the server" in str(info.value)
    assert_no_key(info.value)


def test_a_post_that_never_left_is_retried() -> None:
    """Connection refused: the request never reached a server, so a POST is retried like any request."""
    with serve() as (base, _):
        pass  # the port is free again now
    delays: list[float] = []

    async def go() -> Any:
        async with client(base, delays, retries=2) as c:
            return await c.request_json("POST", "/jobs", json={})

    with pytest.raises(RetryableError) as info:
        run(go)
    assert not isinstance(info.value, MaybeSentError) and len(delays) == 2


def test_request_timeout_is_retried_then_given_up() -> None:
    routes: dict[str, Any] = {"/slow": [("sleep", 1.5, ("json", 200, {}))]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays, request_timeout_s=0.2, retries=1) as c:
                await c.request_json("GET", "/slow")

        t0 = time.monotonic()
        with pytest.raises(RetryableError) as info:
            run(go)
        elapsed = time.monotonic() - t0
    assert elapsed < 1.2  # two tries of 0.2 s, not the server's 1.5 s
    assert info.value.status is None and "Timeout" in str(info.value)
    assert script.count("/slow") == 2 and len(delays) == 1
    assert_no_key(info.value)


def test_connection_refused_is_retryable() -> None:
    with serve() as (base, _):
        pass  # the port is free again now
    delays: list[float] = []

    async def go() -> Any:
        async with client(base, delays, retries=2) as c:
            await c.request_json("GET", "/s")

    with pytest.raises(RetryableError) as info:
        run(go)
    assert len(delays) == 2 and info.value.status is None


# -- final errors ------------------------------------------------------------------------------------------------


def test_404_is_final_with_the_servers_message() -> None:
    routes = {"/sessions/SESSION_1": [("json", 404, {"error": {"message": "Session SESSION_1 not found"}})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                await c.request_json("GET", "/sessions/SESSION_1")

        with pytest.raises(FinalError) as info:
            run(go)
    assert info.value.status == 404 and "Session SESSION_1 not found" in str(info.value)
    assert delays == [] and script.count("/sessions/SESSION_1") == 1


def test_4xx_text_body_kept_shortened() -> None:
    routes = {"/s": [("raw", 422, b"invalid resolution: " + b"x" * 2000)]}
    with serve(routes) as (base, _):

        async def go() -> Any:
            async with client(base, []) as c:
                await c.request_json("POST", "/s", json={})

        with pytest.raises(FinalError) as info:
            run(go)
    assert "invalid resolution" in str(info.value) and len(str(info.value)) < 450


def test_classification_ignores_error_text() -> None:
    """A 400 whose text says "rate limit / retry" is still final; a 503 with a text saying "fatal" is retried."""
    routes = {
        "/a": [("json", 400, {"message": "rate limit exceeded, timeout, please retry"})],
        "/b": [
            ("json", 503, {"message": "fatal: invalid request, do not retry"}),
            ("json", 200, {"ok": True}),
        ],
    }
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                with pytest.raises(FinalError):
                    await c.request_json("GET", "/a")
                return await c.request_json("GET", "/b")

        assert run(go) == {"ok": True}
    assert script.count("/a") == 1 and script.count("/b") == 2


def test_malformed_json_on_200_is_final() -> None:
    routes = {"/s": [("raw", 200, b'{"status": "compl', {"Content-Type": "application/json"})]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Any:
            async with client(base, delays) as c:
                await c.request_json("GET", "/s")

        with pytest.raises(FinalError) as info:
            run(go)
    assert "malformed JSON" in str(info.value) and info.value.status == 200
    assert delays == [] and script.count("/s") == 1


# -- downloads ---------------------------------------------------------------------------------------------------

GLB = bytes(range(256)) * 40  # 10 KiB of recognisable bytes


def _verify_glb(path: Path) -> None:
    if path.read_bytes() != GLB:
        raise ValueError(f"{path.name}: not the expected mesh")


def test_truncated_download_retried_then_verified(tmp_path: Path) -> None:
    routes = {"/files/m.glb": [("truncate", GLB[:3000], len(GLB)), ("raw", 200, GLB)]}
    delays: list[float] = []
    seen: list[Path] = []

    def verify(p: Path) -> None:
        seen.append(p)
        _verify_glb(p)

    with serve(routes) as (base, script):

        async def go() -> Path:
            async with client(base, delays) as c:
                return await c.download(f"{base}/files/m.glb", tmp_path / "out" / "m.glb", verify=verify)

        dest = run(go)
    assert dest == tmp_path / "out" / "m.glb" and dest.read_bytes() == GLB
    assert script.count("/files/m.glb") == 2 and len(delays) == 1
    assert len(seen) == 1 and seen[0].suffix == ".glb" and seen[0].parent == dest.parent
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.glb"]  # no temp file left


def test_download_failing_verification_is_final_and_leaves_nothing(tmp_path: Path) -> None:
    routes = {"/m.glb": [("raw", 200, b"not a glb at all")]}
    delays: list[float] = []
    with serve(routes) as (base, script):

        async def go() -> Path:
            async with client(base, delays) as c:
                return await c.download(f"{base}/m.glb", tmp_path / "m.glb", verify=_verify_glb)

        with pytest.raises(FinalError) as info:
            run(go)
    assert "verification" in str(info.value) and "not the expected mesh" in str(info.value)
    assert delays == [] and script.count("/m.glb") == 1
    assert list(tmp_path.iterdir()) == []


def test_expired_download_url_403_is_final(tmp_path: Path) -> None:
    routes = {
        "/m.glb": [
            ("raw", 403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        ]
    }
    with serve(routes) as (base, _):

        async def go() -> Path:
            async with client(base, []) as c:
                return await c.download(f"{base}/m.glb?X-Signature=abc123secret", tmp_path / "m.glb")

        with pytest.raises(FinalError) as info:
            run(go)
    assert info.value.status == 403 and "Request has expired" in str(info.value)
    assert "abc123secret" not in str(info.value)  # the query (signature) is not shown
    assert list(tmp_path.iterdir()) == []


# -- secrets -----------------------------------------------------------------------------------------------------


def test_key_never_sent_to_another_host_nor_in_any_message(tmp_path: Path) -> None:
    api_routes = {
        "/sessions/": [("json", 401, {"message": f"invalid api key {KEY}"})],
        "/echo": [("raw", 500, f"upstream said x-api-key={KEY}".encode())],
        "/own.glb": [("raw", 200, GLB)],
        "/redirect.glb": [("redirect", "")],  # filled in below, once the other server's port is known
    }
    errors: list[RemoteError] = []
    with (
        serve(api_routes) as (api, api_script),
        serve({"/signed.glb": [("raw", 200, GLB)]}) as (cdn, cdn_script),
    ):
        api_script.routes["/redirect.glb"] = [("redirect", f"{cdn}/signed.glb")]

        async def go() -> ApiClient:
            c = client(api, [], retries=1)
            for method, path in (("POST", "/sessions/"), ("GET", "/echo")):
                try:
                    await c.request_json(method, path, json={"x": 1})
                except RemoteError as exc:
                    errors.append(exc)
            await c.download(f"{cdn}/signed.glb", tmp_path / "a.glb")
            await c.download(f"{api}/own.glb", tmp_path / "b.glb")
            await c.download(f"{api}/redirect.glb", tmp_path / "c.glb")
            await c.aclose()
            return c

        c = run(go)
    assert len(errors) == 2
    for exc in errors:
        assert_no_key(exc)
        assert "***" in str(exc)
    assert isinstance(errors[0], FinalError) and isinstance(errors[1], RetryableError)
    # The API host gets the key; the other host never does, not even through a redirect from the API host.
    assert all(r["headers"].get("x-api-key") == KEY for r in api_script.requests)
    assert len(cdn_script.requests) == 2
    assert all("x-api-key" not in {k.lower() for k in r["headers"]} for r in cdn_script.requests)
    assert all(KEY not in json.dumps(r["headers"]) for r in cdn_script.requests)
    assert KEY not in repr(c) and KEY not in str(vars(c).get("stats"))
    assert (tmp_path / "c.glb").read_bytes() == GLB


def test_key_header_value_redacted_even_without_secrets_argument() -> None:
    routes = {"/s": [("json", 403, {"detail": f"key {KEY} revoked"})]}
    with serve(routes) as (base, _):

        async def go() -> Any:
            async with client(base, [], secrets=()) as c:
                await c.request_json("GET", "/s")

        with pytest.raises(FinalError) as info:
            run(go)
    assert_no_key(info.value)
    assert "revoked" in str(info.value)


# -- limits through the client -----------------------------------------------------------------------------------


def test_concurrency_limit_holds_on_the_wire() -> None:
    routes: dict[str, Any] = {"/s": [("sleep", 0.1, ("json", 200, {}))]}
    with serve(routes) as (base, script):

        async def go() -> int:
            async with client(base, [], concurrency=3) as c:
                await asyncio.gather(*(c.request_json("GET", "/s") for _ in range(9)))
                return c.limiter.peak_in_flight

        peak = run(go)
    assert peak == 3 and script.peak_in_flight == 3 and script.count("/s") == 9
