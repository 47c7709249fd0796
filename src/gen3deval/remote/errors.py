"""Errors of the remote-job layer, classified by HTTP status code and exception type (never by message text).

::

    RemoteError          base: ``message`` (already redacted, never contains a secret), ``status`` (HTTP or None)
    ├── RetryableError   connection errors, timeouts, 408, 429, 5xx; ``retry_after`` (s) when the server sent one
    │   └── MaybeSentError  a non-idempotent request (POST) whose answer was lost after it may have reached the
    │                       server: never retried by the client (a retry could create a second job); the caller
    │                       decides (the remote layer resubmits at most once per run and counts it)
    └── FinalError       other 4xx, a malformed JSON body on a 2xx, a failed verification, protocol violations
"""

from __future__ import annotations

from gen3deval.errors import Gen3DEvalError


class RemoteError(Gen3DEvalError):
    """A call to a remote API failed; ``str()`` is ``message``, which the builder has already redacted."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class RetryableError(RemoteError):
    """A transient failure worth another try; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, retry_after={self.retry_after!r})"


class FinalError(RemoteError):
    """A failure that another try cannot fix; the message keeps the server's reason."""


class MaybeSentError(RetryableError):
    """A POST (or other non-idempotent request) failed after it may have reached the server (read timeout,
    dropped connection mid-answer): whether the server acted on it is unknown. Not retried by ApiClient."""
