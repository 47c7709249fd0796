"""Per-system limits of the remote-job layer: concurrency, rate, retries, timeouts and the poll schedule."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gen3deval.errors import ConfigError

# Upper bound on a server's Retry-After that we honour (s): a longer one is most likely a mistake.
RETRY_AFTER_MAX_S = 300.0


@dataclass(frozen=True)
class RemotePolicy:
    """How one system talks to its API. Times in seconds unless the name says otherwise.

    ``retries`` counts retries after the first try (3 -> at most 4 tries); the backoff before retry n (1-based) is
    ``backoff_s * 2**(n-1)`` with +-20 % jitter, capped at ``backoff_max_s``; a server's ``Retry-After`` replaces
    it (capped at 300 s). Polls wait ``poll_interval_s``, growing x1.5 per poll up to ``poll_max_s``; a job is
    given up after ``timeout_min`` minutes overall.
    """

    concurrency: int = 8
    rps: float = 5.0
    retries: int = 3
    backoff_s: float = 2.0
    backoff_max_s: float = 30.0
    request_timeout_s: float = 60.0
    poll_interval_s: float = 10.0
    poll_max_s: float = 60.0
    timeout_min: float = 90.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
                minimum = 0 if f.name == "retries" else 1
                if not ok or value < minimum:
                    raise ConfigError(f"{f.name}: expected an integer >= {minimum}, got {value!r}")
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                if not ok or value <= 0:
                    raise ConfigError(
                        f"{f.name}: expected a positive number of {_unit(f.name)}, got {value!r}"
                    )
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(
                f"backoff_max_s: must be >= backoff_s ({self.backoff_s}), got {self.backoff_max_s}"
            )
        if self.poll_max_s < self.poll_interval_s:
            raise ConfigError(
                f"poll_max_s: must be >= poll_interval_s ({self.poll_interval_s}), got {self.poll_max_s}"
            )

    def poll_delays(self) -> Iterator[float]:
        """Endless delays between polls (s): poll_interval_s, x1.5 each time, capped at poll_max_s."""
        delay = self.poll_interval_s
        while True:
            yield delay
            delay = min(self.poll_max_s, delay * 1.5)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RemotePolicy:
        """The policy from a system's settings: keys named as the fields; other keys are ignored.

        Numeric strings (from ``--set key=value``) are accepted; bad values raise :class:`ConfigError` naming
        the key.
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in settings:
                continue
            value = settings[f.name]
            if isinstance(value, str):
                try:
                    value = int(value) if f.type == "int" else float(value)
                except ValueError:
                    raise ConfigError(f"{f.name}: expected a number, got {value!r}") from None
            elif f.type != "int" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[f.name] = value
        return cls(**kwargs)


def _unit(name: str) -> str:
    if name == "rps":
        return "requests per second"
    return "minutes" if name.endswith("_min") else "seconds"
