"""The remote-job layer shared by systems that call a network API.

:class:`ApiClient` (httpx + limits + tenacity retries + redaction), :class:`RemotePolicy` (per-system limits),
:class:`RequestLimiter`, the error classes and API-key handling (:func:`load_api_key`, :func:`redact`).
Classification of failures is by status code and exception type only; secrets never reach a message.
"""

from __future__ import annotations

from gen3deval.remote.errors import FinalError, MaybeSentError, RemoteError, RetryableError
from gen3deval.remote.http import ApiClient, parse_retry_after
from gen3deval.remote.limits import RequestLimiter
from gen3deval.remote.policy import RemotePolicy
from gen3deval.remote.secrets import load_api_key, redact

__all__ = [
    "ApiClient",
    "FinalError",
    "MaybeSentError",
    "RemoteError",
    "RemotePolicy",
    "RequestLimiter",
    "RetryableError",
    "load_api_key",
    "parse_retry_after",
    "redact",
]
