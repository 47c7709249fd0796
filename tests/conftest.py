"""Shared pytest fixtures."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from testdata import SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Record (and refuse) every socket connection attempt made by the code under test."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    def refuse_lookup(host: object, *args: object, **kwargs: object) -> list[object]:
        attempts.append(host)  # name lookup comes first (and fails offline): refuse it too
        raise socket.gaierror(f"network access attempted: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield attempts
