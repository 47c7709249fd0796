"""A per-system request limiter: at most ``concurrency`` requests in flight, at most ``rps`` starts per second."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType


class RequestLimiter:
    """Async context manager around one request: a semaphore (``concurrency``) then a token bucket (``rps``).

    The bucket holds at most ``burst`` tokens (default 1: starts are spaced 1/rps s apart) and refills at ``rps``
    tokens/s. A slot is taken before the token, so a start is never "saved up" while waiting for a slot.
    ``clock`` (s) and ``sleep`` are injectable so tests can run it on a fake clock; ``in_flight`` is the number
    of requests inside now and ``peak_in_flight`` the most ever seen at once.
    """

    def __init__(
        self,
        concurrency: int,
        rps: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        burst: int = 1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not rps > 0:
            raise ValueError(f"rps must be > 0, got {rps}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.concurrency = concurrency
        self.rps = rps
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(concurrency)
        self._bucket_lock = asyncio.Lock()
        self._tokens = float(burst)
        self._last = clock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started = 0

    async def _take_token(self) -> None:
        if math.isinf(self.rps):
            return
        async with self._bucket_lock:  # one waiter at a time, so starts stay in arrival order
            while True:
                now = self._clock()
                self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rps)
                self._last = now
                # The epsilon stops float rounding (0.999...) from turning into endless ulp-sized sleeps.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep((1.0 - self._tokens) / self.rps)

    async def __aenter__(self) -> RequestLimiter:
        await self._slots.acquire()
        try:
            await self._take_token()
        except BaseException:
            self._slots.release()
            raise
        self.in_flight += 1
        self.started += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
        self._slots.release()
