"""Real notification targets for the tests: a JSON webhook and an SMTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    """Return a TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Webhook:
    """An HTTP server that records every JSON body POSTed to it (apprise's `json://`)."""

    def __init__(self, port: int | None = None) -> None:
        self.messages: list[dict] = []
        self.stall_s = 0.0
        self.status = 200
        self.port = port or free_port()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                hook.messages.append(json.loads(self.rfile.read(length) or b"{}"))
                if hook.stall_s:
                    time.sleep(hook.stall_s)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def titles(self) -> list[str]:
        return [message.get("title", "") for message in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return True
            time.sleep(0.05)
        return False


class Mailbox:
    """An SMTP server (aiosmtpd) that keeps every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.port = free_port()
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append(envelope)
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> Mailbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def url(self) -> str:
        return (
            f"mailto://127.0.0.1:{self.port}?from=backups@example.com&to=oncall@example.com"
            "&mode=insecure"
        )


def write_config(path: Path, entries: list[tuple[str, str]]) -> Path:
    """Write an apprise YAML configuration of (url, tags) entries."""
    lines = ["urls:"]
    for url, tags in entries:
        lines.append(f"  - {json.dumps(url)}:")
        lines.append(f"      tag: {tags}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def webhook():
    """A JSON webhook target listening on 127.0.0.1."""
    hook = Webhook().start()
    yield hook
    hook.stop()


@pytest.fixture
def mailbox():
    """An SMTP server listening on 127.0.0.1."""
    box = Mailbox().start()
    yield box
    box.stop()


@pytest.fixture
def watched(db, data_dir, settings, tmp_path, webhook):
    """A directory source routed to the webhook (tag `ops`), RPO 2h, workers alive."""
    from backups.models import WorkerBeat
    from backups.services.catalog import policy_create, source_create

    settings.APPRISE_CONFIG = write_config(tmp_path / "apprise.yml", [(webhook.url, "ops")])
    settings.DASHBOARD_URL = "https://backups.example.com"
    policy = policy_create(name="watched", rpo_s=7200)
    source = source_create(
        name="files", kind="directory", location=str(data_dir), policy=policy, notify="ops"
    )
    WorkerBeat.beat("housekeeping", worker="test")
    return source
