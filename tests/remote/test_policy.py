"""RemotePolicy: defaults of the issue, the poll schedule, settings parsing and validation."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gen3deval.errors import ConfigError
from gen3deval.remote import RemotePolicy


def test_defaults_match_the_issue() -> None:
    p = RemotePolicy()
    assert (p.concurrency, p.rps, p.retries) == (8, 5.0, 3)
    assert (p.backoff_s, p.backoff_max_s, p.request_timeout_s) == (2.0, 30.0, 60.0)
    assert (p.poll_interval_s, p.poll_max_s, p.timeout_min) == (10.0, 60.0, 90.0)


def test_poll_delays_grow_by_half_up_to_the_cap() -> None:
    delays = list(itertools.islice(RemotePolicy().poll_delays(), 8))
    assert delays == pytest.approx([10.0, 15.0, 22.5, 33.75, 50.625, 60.0, 60.0, 60.0])
    assert list(itertools.islice(RemotePolicy(poll_interval_s=1, poll_max_s=1).poll_delays(), 3)) == [1, 1, 1]


def test_from_settings_reads_fields_and_ignores_others() -> None:
    p = RemotePolicy.from_settings(
        {"concurrency": 16, "rps": "2.5", "retries": "0", "timeout_min": 5, "geometry_model": "turbo"}
    )
    assert p == RemotePolicy(concurrency=16, rps=2.5, retries=0, timeout_min=5.0)
    assert isinstance(p.timeout_min, float)
    assert RemotePolicy.from_settings({}) == RemotePolicy()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"rps": "fast"}, "rps"),
        ({"rps": 0}, "rps"),
        ({"rps": float("inf")}, "rps"),
        ({"retries": -1}, "retries"),
        ({"request_timeout_s": None}, "request_timeout_s"),
        ({"timeout_min": -5}, "timeout_min"),
        ({"backoff_s": 10, "backoff_max_s": 5}, "backoff_max_s"),
        ({"poll_interval_s": 90}, "poll_max_s"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RemotePolicy.from_settings(settings)
    assert str(info.value).startswith(f"{field}:")
