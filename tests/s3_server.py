"""A local S3 server (moto) for the S3 tests: one home for starting it on a free port."""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_moto() -> Iterator[str]:
    """moto's threaded S3 server on 127.0.0.1 while the block runs; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
