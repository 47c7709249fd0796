"""A store-free async client for OpenAI-compatible chat-completions endpoints (OpenAI, OpenRouter, vLLM, Ollama,
llama.cpp's server), used by the ``vlm`` system.

:class:`ChatClient` sits on :class:`gen3deval.remote.http.ApiClient` (concurrency and rate limits, retries with
backoff and ``Retry-After`` on connection errors / 408 / 429 / 5xx, timeouts, secret redaction):

- :meth:`ChatClient.chat` sends ``POST {base_url}/chat/completions`` and returns a :class:`ChatAnswer` (text,
  ``finish_reason``, refusal, token counts, ``usage.cost`` when the endpoint reports it, latency). A 200 with
  no ``choices`` or an ``error`` object instead (OpenRouter reports some provider failures so) is an error,
  never an empty answer.
- :meth:`ChatClient.check` is the preflight: ``GET {base_url}/models`` (served by all of the above) before
  any spending request, so a wrong key, an unreachable URL or an unknown model stops a run with one line.

A lost answer (:class:`MaybeSentError`: read timeout, connection dropped or body cut after the request may
have reached the server): a chat completion leaves no state on the server, so :meth:`ChatClient.chat` sends it
once more (counted in ``resent`` and reported to the current job via ``note_resubmit``); at worst the
endpoint bills one extra answer. A second loss is raised.

:func:`image_part` makes the inline ``data:image/png;base64,...`` message part of an image file.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from gen3deval.errors import ConfigError, UserInputError
from gen3deval.remote.errors import FinalError, MaybeSentError, RemoteError, RetryableError
from gen3deval.remote.http import ApiClient
from gen3deval.remote.policy import RemotePolicy
from gen3deval.remote.secrets import redact
from gen3deval.remote.tracking import note_resubmit

__all__ = ["ChatAnswer", "ChatClient", "image_part"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_KNOWN_SHOWN = 5  # model ids named in an "unknown model" message
_MAX_ERROR = 300  # characters of an in-body error message kept


@dataclass
class ChatAnswer:
    """One chat-completions answer (JSON-able via :meth:`to_dict` / :meth:`from_dict`).

    ``text``: ``choices[0].message.content`` ("" when null or absent; a list of text parts is joined);
    ``finish_reason``: "stop", "length" (cut by ``max_tokens``), "content_filter", ... or None;
    ``refusal``: ``message.refusal`` when sent; ``model``: the answering model id; token counts and ``cost``
    (``usage.cost``, OpenRouter's credits in USD) as reported, else None; ``latency_s``: wall time of the
    whole call in seconds, retries and backoff included; ``request_id``: the response ``id``.
    """

    text: str
    finish_reason: str | None
    refusal: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    latency_s: float
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatAnswer:
        return cls(
            text=str(d.get("text") or ""),
            finish_reason=d.get("finish_reason"),
            refusal=d.get("refusal"),
            model=d.get("model"),
            prompt_tokens=d.get("prompt_tokens"),
            completion_tokens=d.get("completion_tokens"),
            cost=d.get("cost"),
            latency_s=float(d.get("latency_s") or 0.0),
            request_id=d.get("request_id"),
        )


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return int(v)


def _float_or_none(v: Any) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _content_text(content: Any) -> str:
    """``message.content`` as text: a string, or the text parts of a list of parts; "" otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def _short(text: str, n: int = _MAX_ERROR) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_answer(body: Any, latency_s: float, what: str) -> ChatAnswer:
    """A :class:`ChatAnswer` from a decoded chat-completions response body.

    Raises :class:`FinalError` for a body that is not an answer (no ``choices``, not an object), and for an
    ``error`` object in a 200 (``RetryableError`` when its ``code`` is 408, 429 or 5xx).
    """
    if not isinstance(body, dict):
        raise FinalError(f"{what}: the response is {type(body).__name__}, not a chat-completions object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        err = body.get("error")
        if err is not None:
            msg = err.get("message") if isinstance(err, dict) else err
            code = _int_or_none(err.get("code")) if isinstance(err, dict) else None
            text = f"{what}: the endpoint answered with an error: {_short(str(msg))}"
            if code is not None and (code in (408, 429) or code >= 500):
                raise RetryableError(text, status=code)
            raise FinalError(text, status=code)
        raise FinalError(f"{what}: the response has no choices (keys: {', '.join(sorted(body)) or 'none'})")
    choice = choices[0]
    raw_message, raw_usage = choice.get("message"), body.get("usage")
    message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    refusal = message.get("refusal")
    finish = choice.get("finish_reason")
    model = body.get("model")
    rid = body.get("id")
    return ChatAnswer(
        text=_content_text(message.get("content")),
        finish_reason=finish if isinstance(finish, str) else None,
        refusal=refusal if isinstance(refusal, str) and refusal else None,
        model=model if isinstance(model, str) else None,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        cost=_float_or_none(usage.get("cost")),
        latency_s=latency_s,
        request_id=rid if isinstance(rid, str) else None,
    )


class ChatClient:
    """Chat completions against one OpenAI-compatible endpoint. Use ``async with`` (or call :meth:`aclose`).

    Args:
        base_url: up to the API version, e.g. ``https://openrouter.ai/api/v1``, ``http://localhost:8000/v1``.
        api_key: sent as ``Authorization: Bearer KEY`` only when given (local servers need none); redacted
            from every message.
        policy: limits, retries and timeouts (:class:`RemotePolicy`; ``request_timeout_s`` bounds one try).
        transport, sleep: passed to :class:`ApiClient` (tests).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        policy: RemotePolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url: expected an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._secrets = (api_key,) if api_key else ()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self.api = ApiClient(
                self.base_url,
                headers=headers,
                policy=policy,
                secrets=self._secrets,
                transport=transport,
                sleep=sleep,
            )
        except ValueError as exc:
            raise ConfigError(f"base_url: {exc}") from None
        self.policy = policy
        # Requests sent once more after their answer was lost (MaybeSentError); each may be billed twice.
        self.resent = 0

    def __repr__(self) -> str:
        return f"ChatClient({self.base_url!r})"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.api.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def chat(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> ChatAnswer:
        """Send one chat-completions request; return the first choice as a :class:`ChatAnswer`.

        Parameters left None are not sent (the endpoint's defaults apply). ``extra_body`` is merged into the
        request body last (e.g. OpenRouter's ``provider`` routing); it may not replace ``model`` or
        ``messages``. Raises :class:`RemoteError` subclasses: ``FinalError`` (4xx such as 401/404, a body
        that is not an answer), ``RetryableError`` (retries exhausted), ``MaybeSentError`` (answer lost twice).
        """
        body: dict[str, Any] = {"model": model, "messages": messages}
        for name, value in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("max_tokens", max_tokens),
            ("seed", seed),
        ):
            if value is not None:
                body[name] = value
        if extra_body:
            clash = sorted(set(extra_body) & {"model", "messages"})
            if clash:
                raise ConfigError(
                    f"extra_body: may not set {', '.join(clash)} (use the settings of that name)"
                )
            body.update(extra_body)
        what = f"POST {self._redact(self.base_url)}/chat/completions ({model})"
        start = time.monotonic()
        try:
            resp = await self.api.request_json("POST", "chat/completions", json=body)
        except MaybeSentError:
            # No server-side state to duplicate: send it once more (an extra answer may be billed), counted.
            self.resent += 1
            note_resubmit()
            resp = await self.api.request_json("POST", "chat/completions", json=body)
        return parse_answer(resp, time.monotonic() - start, what)

    async def models(self) -> list[str] | None:
        """The model ids ``GET {base_url}/models`` lists; None when the server has no such route (404/405)."""
        try:
            resp = await self.api.request_json("GET", "models")
        except FinalError as exc:
            if exc.status in (404, 405, 501):
                return None
            raise
        data = resp.get("data") if isinstance(resp, dict) else resp
        if not isinstance(data, list):
            return None  # an unknown listing format: cannot check
        ids = [m.get("id") if isinstance(m, dict) else m for m in data]
        return [i for i in ids if isinstance(i, str)]

    async def check(self, model: str) -> None:
        """Preflight (no spending request): the endpoint is reachable, takes the key and lists ``model``.

        Raises :class:`ConfigError` with one line: the key refused (HTTP 401/403), the endpoint unreachable or
        failing (naming the URL), or the model unknown (naming a few known ones). A server without
        ``/models`` (404) cannot be checked: nothing is raised; nor is a listing of exactly one other id
        (llama.cpp's server: it answers any model name with its one loaded model). When a key is given and ``/models`` did not
        need it (OpenRouter lists models publicly), ``GET {base_url}/key`` (OpenRouter's key info) is asked
        too; only its 401/403 counts.
        """
        url = f"{self._redact(self.base_url)}/models"
        try:
            known = await self.models()
        except RemoteError as exc:
            raise self._preflight_error(url, exc) from None
        if self._secrets:
            try:
                await self.api.request_json("GET", "key")
            except RemoteError as exc:
                if exc.status in (401, 403):
                    raise self._preflight_error(f"{self._redact(self.base_url)}/key", exc) from None
        if known is None or model in known:
            return
        if len(known) == 1:
            # llama.cpp's server lists its one loaded model (often as a file path) and answers any name with
            # it: a single listed id that differs is not an unknown model.
            return
        shown = ", ".join(known[:_KNOWN_SHOWN]) + (", ..." if len(known) > _KNOWN_SHOWN else "")
        raise ConfigError(
            f"model: unknown model {model!r} at {self._redact(self.base_url)} "
            f"({len(known)} known: {shown or 'none'})"
        )

    def _preflight_error(self, url: str, exc: RemoteError) -> ConfigError:
        if exc.status in (401, 403):
            return ConfigError(
                f"api key: the endpoint refused the key (HTTP {exc.status}) at {url}: {exc.message}; "
                "check the key (api_key_env) and base_url"
            )
        if exc.status is None:
            return ConfigError(f"base_url: cannot reach {url}: {exc.message}")
        return ConfigError(f"base_url: the endpoint failed the preflight at {url}: {exc.message}")


def image_part(path: str | Path) -> dict[str, Any]:
    """An OpenAI image message part with ``path`` inline as a PNG ``data:`` URL.

    Returns ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``. A PNG is sent
    byte for byte; any other format PIL reads is converted to PNG (RGBA kept, palette/CMYK/16-bit converted
    to RGB(A)). Raises :class:`UserInputError` naming the file when it is missing or not an image.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{p}: cannot read the image ({type(exc).__name__}: {exc.strerror})") from None
    if not raw.startswith(_PNG_MAGIC):
        raw = _to_png(p, raw)
    else:
        _check_image(p, raw)
    url = "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def _check_image(p: Path, raw: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{p}: not a readable PNG image ({type(exc).__name__})") from None


def _to_png(p: Path, raw: bytes) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            im: Image.Image = opened
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserInputError(f"{p}: not a readable image ({type(exc).__name__})") from None
    return buf.getvalue()
