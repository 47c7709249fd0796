"""Framing for the CadQuery executor's channels: a JSON header plus raw binary blobs (never pickle).

A frame is ``<u64 little-endian header length><header JSON><blob 0><blob 1>...``; the header's
``"blobs"`` lists the blob sizes in bytes.

Two readers:

- :func:`parse_frame` for trusted, small messages (the control socket between the client and its
  template worker: one SOCK_SEQPACKET message = one frame);
- :class:`FrameReader` for the *untrusted* result pipe a sandboxed child writes: it reads in linear
  time into preallocated buffers, checks the header length against a bound before reading the
  header and the declared blob total against a bound before reading the blobs, and turns every
  malformed input (bad JSON, a deeply nested header, wrong sizes, extra bytes) into a
  :class:`FrameError` instead of an exception from deep inside ``json``.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

_LEN = struct.Struct("<Q")
MAX_HEADER = 16 * 1024 * 1024
# A result header holds a few scalars; anything bigger is a program writing to the result pipe.
MAX_RESULT_HEADER = 64 * 1024
_CHUNK = 1 << 20


class FrameError(ValueError):
    """A frame is truncated, oversized, not valid JSON or inconsistent."""


def encode_frame(header: dict[str, Any], blobs: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """Serialise ``header`` (JSON-able) and ``blobs`` into one frame."""
    head = dict(header)
    head["blobs"] = [len(b) for b in blobs]
    hb = json.dumps(head, allow_nan=True).encode("utf-8")
    return b"".join([_LEN.pack(len(hb)), hb, *blobs])


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until everything is written (pipes accept partial writes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def decode_header(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The JSON object in ``raw``; FrameError for anything else (bad UTF-8 or JSON, a nesting deep
    enough to exhaust the recursion limit, huge numbers, not an object, bad blob sizes)."""
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (
        ValueError,
        RecursionError,
        MemoryError,
    ) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueError
        raise FrameError(f"frame header is not JSON: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not an object")
    sizes = header.get("blobs", [])
    if not isinstance(sizes, list) or not all(type(s) is int and s >= 0 for s in sizes):
        raise FrameError("bad blob sizes")
    return header


def parse_frame(data: bytes) -> tuple[dict[str, Any], list[bytes], int]:
    """Parse one frame from the start of ``data``; returns (header, blobs, bytes consumed)."""
    if len(data) < _LEN.size:
        raise FrameError("truncated frame length")
    (n,) = _LEN.unpack_from(data, 0)
    if n > MAX_HEADER or _LEN.size + n > len(data):
        raise FrameError("truncated or oversized frame header")
    header = decode_header(memoryview(data)[_LEN.size : _LEN.size + n])
    pos = _LEN.size + n
    blobs = []
    for s in header.get("blobs", []):
        if pos + s > len(data):
            raise FrameError("truncated blob")
        blobs.append(bytes(data[pos : pos + s]))
        pos += s
    return header, blobs, pos


class FrameReader:
    """Incremental reader of one frame from an untrusted pipe, in linear time and bounded memory.

    Call :meth:`read_from` whenever the descriptor is readable; it returns False at end of file.
    ``error`` holds the reason once the input is malformed (the caller stops reading), ``done`` is
    True once a whole frame arrived; more bytes after it set ``error`` too.

    max_header: bound on the header length, checked before the header is read.
    max_blobs: bound on the declared blob total (bytes), checked before any blob is read.
    """

    def __init__(self, *, max_header: int = MAX_RESULT_HEADER, max_blobs: int) -> None:
        self.max_header = max_header
        self.max_blobs = max_blobs
        self.header: dict[str, Any] | None = None
        self.blobs: list[memoryview] = []
        self.error = ""
        self.received = 0
        self._stage = "length"
        self._buf = bytearray(_LEN.size)
        self._pos = 0
        self._sizes: list[int] = []

    @property
    def done(self) -> bool:
        return self._stage == "done" and not self.error

    def _advance(self) -> None:
        """A target buffer is full: move to the next stage (allocating the next buffer)."""
        if self._stage == "length":
            (n,) = _LEN.unpack(self._buf)
            if n > self.max_header:
                raise FrameError(f"result header of {n} bytes (bound {self.max_header})")
            self._stage, self._buf, self._pos = "header", bytearray(n), 0
        elif self._stage == "header":
            header = decode_header(self._buf)
            sizes = list(header.get("blobs", []))
            total = sum(sizes)
            if total > self.max_blobs:
                raise FrameError(f"result arrays of {total} bytes (bound {self.max_blobs})")
            self.header, self._sizes = header, sizes
            self._stage, self._buf, self._pos = "blobs", bytearray(total), 0
        elif self._stage == "blobs":
            view, pos = memoryview(self._buf), 0
            for s in self._sizes:
                self.blobs.append(view[pos : pos + s])
                pos += s
            self._stage = "done"
        if self._stage != "done" and len(self._buf) == 0:
            self._advance()

    def read_from(self, fd: int) -> bool:
        """Read what is available from ``fd`` (one read, at most 1 MiB); False at end of file."""
        if self._stage == "done":
            extra = os.read(fd, 4096)
            if extra:
                self.error = "extra bytes after the result"
            return bool(extra)
        want = min(len(self._buf) - self._pos, _CHUNK)
        n = os.readv(fd, [memoryview(self._buf)[self._pos : self._pos + want]])
        if n == 0:
            return False
        self._pos += n
        self.received += n
        if self._pos == len(self._buf):
            try:
                self._advance()
            except FrameError as exc:
                self.error = str(exc)
        return True

    def state(self) -> str:
        """Where reading stopped, for messages ("length", "header", "blobs", "done")."""
        return self._stage
