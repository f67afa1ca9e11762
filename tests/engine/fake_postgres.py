"""A stand-in PostgreSQL server that asks every client for a password and records what comes.

It speaks just enough of the protocol for libpq to get to authentication: it declines SSL
and GSS encryption, reads the startup message, then asks for a cleartext password. A client
that has one sends it next, in clear; the listener keeps every byte it receives.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_SSL_REQUEST, _GSS_REQUEST = 80877103, 80877104


class FakePostgres:
    """Listen on a free loopback port in a thread; `received` holds each connection's bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakePostgres:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()

    @property
    def everything(self) -> bytes:
        """Return all bytes received, over every connection."""
        return b"".join(self.received)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.received.append(b"")
                with contextlib.suppress(OSError):
                    self._talk(conn, len(self.received) - 1)

    def _read(self, conn: socket.socket, index: int, size: int) -> bytes:
        data = b""
        while len(data) < size:
            piece = conn.recv(size - len(data))
            if not piece:
                break
            data += piece
        self.received[index] += data
        return data

    def _talk(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(5)
        while True:
            head = self._read(conn, index, 8)
            if len(head) < 8:
                return
            length, code = struct.unpack("!II", head)
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                conn.sendall(b"N")
                continue
            self._read(conn, index, length - 8)  # the rest of the startup message
            break
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        while self._read(conn, index, 1):  # whatever the client answers, until it hangs up
            pass
