"""A real TCP server on 127.0.0.1 for the tests that check a sandbox cannot reach the network."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def listening_server() -> Iterator[tuple[int, list[object]]]:
    """Listen on a free port of 127.0.0.1, accepting in a thread; yields (port, accepted connections).

    On leaving, waits 0.2 s for a late connection before it stops; check ``accepted`` after the block.
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.1)
    stop = threading.Event()
    accepted: list[object] = []

    def _accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    th = threading.Thread(target=_accept)
    th.start()
    try:
        yield server.getsockname()[1], accepted
        time.sleep(0.2)
    finally:
        stop.set()
        th.join()
        server.close()
