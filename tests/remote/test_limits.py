"""RequestLimiter: concurrency cap and token-bucket rate, on a fake clock and with real short timings."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from gen3deval.remote import RequestLimiter


class FakeClock:
    """A clock that only moves when the limiter sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.now += d
        await asyncio.sleep(0)


def _start_times(limiter: RequestLimiter, clock: FakeClock, n: int) -> list[float]:
    starts: list[float] = []

    async def one() -> None:
        async with limiter:
            starts.append(clock.now)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(go())
    return starts


def test_rps_spaces_starts_on_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(concurrency=10, rps=5.0, clock=clock, sleep=clock.sleep)
    starts = _start_times(limiter, clock, 6)
    assert starts == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_burst_then_steady_rate() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(concurrency=10, rps=4.0, clock=clock, burst=3, sleep=clock.sleep)
    starts = _start_times(limiter, clock, 6)
    assert starts == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.5, 0.75])


def test_idle_time_refills_at_most_burst() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(concurrency=10, rps=2.0, clock=clock, sleep=clock.sleep)
    _start_times(limiter, clock, 1)
    clock.now += 100.0  # a long pause must not bank 200 starts
    starts = _start_times(limiter, clock, 3)
    assert [s - 100.0 for s in starts] == pytest.approx([0.0, 0.5, 1.0])


def test_rps_with_real_time() -> None:
    limiter = RequestLimiter(concurrency=8, rps=40.0)
    starts: list[float] = []

    async def one() -> None:
        async with limiter:
            starts.append(time.monotonic())

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(9)))

    asyncio.run(go())
    starts.sort()
    assert starts[-1] - starts[0] >= 8 / 40.0 - 0.01  # 8 gaps of 25 ms
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.02


def test_concurrency_cap_and_peak() -> None:
    limiter = RequestLimiter(concurrency=3, rps=math.inf)
    seen: list[int] = []

    async def one() -> None:
        async with limiter:
            seen.append(limiter.in_flight)
            await asyncio.sleep(0.02)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(12)))

    asyncio.run(go())
    assert max(seen) == 3 and limiter.peak_in_flight == 3
    assert limiter.in_flight == 0 and limiter.started == 12


def test_slot_released_on_error_and_cancel() -> None:
    limiter = RequestLimiter(concurrency=1, rps=math.inf)

    async def go() -> None:
        with pytest.raises(RuntimeError):
            async with limiter:
                raise RuntimeError("boom")

        async def hold() -> None:
            async with limiter:
                await asyncio.sleep(10)

        task = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with limiter:  # would hang if a slot leaked
            pass

    asyncio.run(asyncio.wait_for(go(), 2))
    assert limiter.in_flight == 0


@pytest.mark.parametrize(("concurrency", "rps"), [(0, 1.0), (1, 0.0), (1, -2.0)])
def test_bad_limits_rejected(concurrency: int, rps: float) -> None:
    with pytest.raises(ValueError):
        RequestLimiter(concurrency, rps)
