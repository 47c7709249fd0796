"""An async JSON/download client for remote APIs: timeouts, limits, retries with backoff, no leaked secrets.

Classification is by HTTP status code and exception type only (never by message text):

* retried: connection errors and other httpx transport errors, timeouts, 408, 429, 5xx, a body cut short;
* final: other 4xx (keeping the server's message), a 2xx whose body is not JSON, an unexpected redirect, a
  download that fails ``verify``.

Retries use tenacity; the wait before retry n is ``backoff_s * 2**(n-1)`` +-20 % jitter capped at
``backoff_max_s``, or the server's ``Retry-After`` (seconds or an HTTP date, capped at 300 s) when it sent one.
The API headers (the key) go only to the origin of ``base_url``; a download from any other origin (signed URLs)
is sent without them, redirects included.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json as jsonlib
import logging
import os
import random
import secrets as pysecrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
)

from gen3deval.errors import Gen3DEvalError
from gen3deval.remote.errors import FinalError, MaybeSentError, RemoteError, RetryableError
from gen3deval.remote.limits import RequestLimiter
from gen3deval.remote.policy import RETRY_AFTER_MAX_S, RemotePolicy
from gen3deval.remote.secrets import redact
from gen3deval.remote.tracking import note_retry

# Methods a retry cannot turn into a second action on the server (RFC 9110 section 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Transport errors raised before the request left this machine: safe to retry for any method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
log = logging.getLogger(__name__)

_MAX_MESSAGE = 300  # characters of a server's message kept in an error
_MAX_REDIRECTS = 5
_CHUNK = 1 << 16
# Header names whose values are treated as secrets even when not passed in ``secrets=``.
_SECRET_HEADER_WORDS = ("key", "auth", "token", "secret", "cookie", "signature")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _shown(url: httpx.URL) -> str:
    """The URL as shown in messages: without the query (a signed URL's signature is a credential)."""
    return str(url.copy_with(query=None, fragment=None))


def _shorten(text: str, n: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _server_message(response: httpx.Response) -> str:
    """The server's reason from an error body: a JSON ``message``/``error``/``detail`` field, else the text."""
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.HTTPError):
        return ""
    try:
        body = jsonlib.loads(text)
    except ValueError:
        return _shorten(text)
    if isinstance(body, dict):
        for name in ("message", "error", "detail", "error_description", "reason"):
            value = body.get(name)
            if isinstance(value, dict):  # {"error": {"message": ...}}
                value = value.get("message", value)
            if value:
                return _shorten(value if isinstance(value, str) else jsonlib.dumps(value))
    return _shorten(jsonlib.dumps(body))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (>= 0) from delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class _BackoffWait:
    """tenacity wait: the server's Retry-After when given, else exponential backoff with jitter."""

    def __init__(self, policy: RemotePolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, RETRY_AFTER_MAX_S)
        p = self._policy
        base = p.backoff_s * 2.0 ** (state.attempt_number - 1)
        return min(p.backoff_max_s, base * self._rng.uniform(0.8, 1.2))


class ApiClient:
    """httpx.AsyncClient + :class:`RequestLimiter` + tenacity retries, for one system's API.

    ``headers`` (e.g. the API key) are sent only to the origin of ``base_url``; ``secrets`` (and the values of
    headers whose names look secret) are redacted from every message this client builds; neither appears in its
    repr. ``transport`` is passed to httpx; ``sleep`` is awaited for backoff waits (tests record the delays).
    ``stats`` counts ``requests`` (tries sent), ``retries``, ``errors`` (transport/timeout) and ``status_NNN``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        policy: RemotePolicy,
        secrets: tuple[str, ...] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {redact(base_url, secrets)!r}")
        self._headers = dict(headers)
        implied = (v for k, v in self._headers.items() if any(w in k.lower() for w in _SECRET_HEADER_WORDS))
        self._secrets = tuple(s for s in (*secrets, *implied) if s)
        self.policy = policy
        self.limiter = RequestLimiter(policy.concurrency, policy.rps)
        self._sleep = sleep
        self._rng = random.Random()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(policy.request_timeout_s),
            transport=transport,
            follow_redirects=False,  # redirects are followed by hand, so the key never crosses origins
            # Idle kept-alive connections are capped: httpcore checks each pooled connection (a syscall per
            # idle socket) at every request event, so an uncapped pool made keep-alive slower than none.
            limits=httpx.Limits(
                max_connections=max(10, 2 * policy.concurrency),
                max_keepalive_connections=min(20, max(10, 2 * policy.concurrency)),
            ),
            trust_env=False,
        )
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "errors": 0}

    def __repr__(self) -> str:
        return (
            f"ApiClient({_shown(self._base)!r}, concurrency={self.policy.concurrency}, rps={self.policy.rps})"
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- helpers --------------------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` with this client's secrets masked."""
        return redact(text, self._secrets)

    def _url(self, path: str) -> httpx.URL:
        if path.startswith(("http://", "https://")):
            return httpx.URL(path)
        return self._base.join(path.lstrip("/"))

    def _headers_for(self, url: httpx.URL) -> dict[str, str]:
        return dict(self._headers) if _origin(url) == _origin(self._base) else {}

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _transport_error(self, what: str, exc: BaseException, *, maybe_sent: bool = False) -> RemoteError:
        """An httpx / asyncio failure as a RemoteError, by exception type; the cause is not chained (may leak)."""
        self._count("errors")
        detail = self.redact(_shorten(str(exc))) or "no detail"
        msg = f"{what}: {type(exc).__name__}: {detail}"
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.InvalidURL):
            return FinalError(msg)
        if maybe_sent and not isinstance(exc, _NOT_SENT):
            return MaybeSentError(msg + " (the request may have reached the server: not retried)")
        return RetryableError(msg)

    def _status_error(self, what: str, response: httpx.Response) -> RemoteError:
        status = response.status_code
        reason = self.redact(_server_message(response)) or response.reason_phrase
        msg = f"{what} -> HTTP {status}: {reason}"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return RetryableError(msg, status=status, retry_after=retry_after)
        return FinalError(msg, status=status)

    def _retrying(self) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            self.stats["retries"] += 1
            note_retry()
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.info("retry %d/%d in %.1f s: %s", state.attempt_number, self.policy.retries, wait, exc)

        return AsyncRetrying(
            stop=stop_after_attempt(self.policy.retries + 1),
            wait=_BackoffWait(self.policy, self._rng),
            retry=retry_if_exception_type(RetryableError) & retry_if_not_exception_type(MaybeSentError),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _retry(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            return await self._retrying()(fn, *args)
        except MaybeSentError:
            raise
        except RetryableError as exc:
            tries = self.policy.retries + 1
            raise RetryableError(
                f"{exc.message} (gave up after {tries} tries)", status=exc.status, retry_after=exc.retry_after
            ) from None

    # -- JSON requests --------------------------------------------------------------------------------------
    async def request_json(self, method: str, path: str, *, json: Any = None) -> Any:
        """Send ``method path`` (relative to base_url, or absolute) with a JSON body; return the decoded JSON.

        Retried as the module says; raises :class:`RetryableError` (retries exhausted, with the last status) or
        :class:`FinalError`. A non-idempotent request (POST, PATCH) that fails after it may have reached the
        server (read timeout, connection dropped before the answer) is not retried: :class:`MaybeSentError`, so
        that a retry never creates a second server-side job unknowingly. An empty 2xx body returns None.
        """
        return await self._retry(self._request_once, method.upper(), self._url(path), json)

    async def _request_once(self, method: str, url: httpx.URL, body: Any) -> Any:
        what = f"{method} {self.redact(_shown(url))}"
        async with self.limiter:
            self.stats["requests"] += 1
            try:
                # The whole try has a deadline, so a server trickling bytes cannot hold it forever.
                async with asyncio.timeout(self.policy.request_timeout_s):
                    response = await self._client.request(
                        method, url, json=body, headers=self._headers_for(url)
                    )
            except (TimeoutError, httpx.HTTPError) as exc:
                raise self._transport_error(what, exc, maybe_sent=method not in _IDEMPOTENT) from None
        self._count(f"status_{response.status_code}")
        if response.status_code >= 400:
            raise self._status_error(what, response)
        if response.status_code >= 300:
            raise FinalError(
                f"{what} -> HTTP {response.status_code}: unexpected redirect", status=response.status_code
            )
        if not response.content.strip():
            return None
        try:
            return jsonlib.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            snippet = self.redact(_shorten(response.content[:200].decode("utf-8", "replace"), 80))
            raise FinalError(
                f"{what} -> HTTP {response.status_code}: malformed JSON in the response: {snippet!r}",
                status=response.status_code,
            ) from None

    # -- downloads ------------------------------------------------------------------------------------------
    async def download(self, url: str, dest: Path, *, verify: Callable[[Path], None] | None = None) -> Path:
        """Download absolute ``url`` to ``dest``; return ``dest``.

        Streamed to a temporary file beside ``dest`` (same suffix, so loaders that go by extension work); a body
        shorter than Content-Length or a connection dropped mid-body is retried; then ``verify(tmp_path)`` runs
        (a ValueError or gen3deval error -> :class:`FinalError`) and the file is moved into place with
        ``os.replace``, so ``dest`` is either absent or complete and verified. The API headers are sent only if
        ``url`` (or a redirect target) has base_url's origin.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        result: Path = await self._retry(self._download_once, httpx.URL(url), dest, verify)
        return result

    async def _download_once(self, url: httpx.URL, dest: Path, verify: Callable[[Path], None] | None) -> Path:
        tmp = dest.parent / f".{dest.stem}.{pysecrets.token_hex(4)}.partial{dest.suffix}"
        try:
            await self._stream_to(url, tmp)
            if verify is not None:
                try:
                    verify(tmp)
                except RetryableError:
                    raise  # e.g. a file shorter than its own header says: cut short, download again
                except (ValueError, Gen3DEvalError) as exc:
                    raise FinalError(
                        f"GET {self.redact(_shown(url))}: downloaded file failed verification: "
                        f"{self.redact(_shorten(str(exc)))}"
                    ) from None
            os.replace(tmp, dest)
            return dest
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def _stream_to(self, url: httpx.URL, tmp: Path) -> None:
        for _ in range(_MAX_REDIRECTS + 1):
            what = f"GET {self.redact(_shown(url))}"
            async with self.limiter:
                self.stats["requests"] += 1
                try:
                    async with self._client.stream("GET", url, headers=self._headers_for(url)) as response:
                        self._count(f"status_{response.status_code}")
                        if response.is_redirect:
                            location = response.headers.get("location", "")
                            url = url.join(location)  # next hop: headers decided again for its origin
                            continue
                        if response.status_code >= 300:
                            await response.aread()
                            raise self._status_error(what, response)
                        expected = response.headers.get("content-length")
                        with tmp.open("wb") as fh:
                            async for chunk in response.aiter_raw(_CHUNK):
                                fh.write(chunk)
                        got = response.num_bytes_downloaded
                except httpx.HTTPError as exc:
                    raise self._transport_error(what, exc) from None
            if expected is not None and expected.isdigit() and got < int(expected):
                self._count("errors")
                raise RetryableError(f"{what}: body cut short ({got} of {expected} bytes)", status=200)
            return
        raise FinalError(f"GET {self.redact(_shown(url))}: more than {_MAX_REDIRECTS} redirects")
