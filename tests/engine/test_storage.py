"""Storages: a local folder and a real S3 server (SeaweedFS) behind the same interface."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from backups.engine.errors import MissingObjectError, StorageError
from backups.engine.manifest import sidecar_text
from backups.engine.storage import Entry, LocalStorage, Pending, open_storage
from backups.engine.storage.s3 import MAX_PART_SIZE, MAX_PARTS, S3Storage, part_size
from tests.s3server import (
    ACCESS_KEY,
    BUCKET,
    READER_KEY,
    READER_SECRET,
    SECRET_KEY,
    CuttingProxy,
    SeaweedServer,
    credentials_env,
    free_ports,
    isolated_aws_env,
)

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
SLUG = "my-source"
NAME = "20260101T000000Z-7.tar.zst"
KEY = f"{SLUG}/{NAME}"
# Chunk sizes that straddle every boundary: bytes, pages, tar blocks, S3 parts.
ODD_SIZES = (1, 7, 511, 4093, 65_537, 1_048_583, 3 * MiB + 1, 9 * MiB - 3)


def odd_chunks(data: bytes):
    """Yield `data` in chunks of awkward sizes."""
    view = memoryview(data)
    position, turn = 0, 0
    while position < len(data):
        size = ODD_SIZES[turn % len(ODD_SIZES)]
        yield view[position : position + size]
        position += size
        turn += 1


def read_all(stream) -> bytes:
    """Read a raw stream to its end with readinto, 1 MiB at a time."""
    out = bytearray()
    buffer = bytearray(MiB)
    while count := stream.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


def one_sentence(text: str) -> bool:
    """Return whether `text` reads as one sentence: one line, a final stop, no traceback."""
    return "\n" not in text and text.endswith(".") and "Traceback" not in text


def s3_storage_for(server, prefix_env: str, **settings) -> S3Storage:
    """Return an S3 storage on `server` with a prefix of its own."""
    prefix = settings.pop("prefix", f"t-{os.urandom(6).hex()}")
    return S3Storage(
        settings.pop("bucket", BUCKET),
        prefix=prefix,
        endpoint_url=server.endpoint,
        credentials_env=prefix_env,
        **settings,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same tests against a local folder and against an S3 bucket."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return s3_storage_for(server, request.getfixturevalue("s3_env"))


def test_a_40_mib_stream_round_trips_through_the_same_interface(storage):
    data = random.Random(1).randbytes(40 * MiB)
    with storage.open_write(KEY) as upload:
        for chunk in odd_chunks(data):
            upload.write(chunk)
        upload.finish()
        upload.publish()
    assert upload.written == len(data)

    with storage.open_read(KEY) as stream:
        assert hashlib.sha256(read_all(stream)).digest() == hashlib.sha256(data).digest()
    with storage.open_read(KEY, offset=12_345_679) as stream:
        assert read_all(stream) == data[12_345_679:]
    with storage.open_read(KEY, offset=len(data)) as stream:
        assert read_all(stream) == b""
    assert storage.size(KEY) == len(data)
    assert list(storage.list(SLUG)) == [Entry(NAME, len(data))]
    assert Entry(SLUG, None) in list(storage.list())

    storage.delete(KEY)
    assert storage.size(KEY) is None
    assert list(storage.list(SLUG)) == []
    storage.delete(KEY)


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "multipart"])
def test_nothing_is_visible_under_the_key_before_publish(storage, size):
    data = random.Random(2).randbytes(size)
    with storage.open_write(KEY) as upload:
        for chunk in odd_chunks(data):
            upload.write(chunk)
        upload.finish()
        assert storage.size(KEY) is None
        assert NAME not in [entry.name for entry in storage.list(SLUG)]
        with pytest.raises(MissingObjectError):
            storage.open_read(KEY)
        upload.publish()
    assert storage.size(KEY) == size
    assert storage.pending() == []
    with storage.open_read(KEY) as stream:
        assert read_all(stream) == data


def test_a_discarded_write_leaves_nothing(storage, tmp_path):
    with pytest.raises(RuntimeError), storage.open_write(KEY) as upload:
        upload.write(random.Random(3).randbytes(12 * MiB))
        upload.finish()
        assert [pending.key for pending in storage.pending()] == [KEY]
        raise RuntimeError("the backup failed")
    assert storage.size(KEY) is None
    assert storage.pending() == []
    assert list(storage.list(SLUG)) == []
    if isinstance(storage, LocalStorage):
        assert os.listdir(storage.root / SLUG) == []


WRITER = r"""
import json, os, sys, time
from backups.engine.storage import open_storage
storage = open_storage(**json.loads(sys.argv[1]))
upload = storage.open_write(sys.argv[2])
block = os.urandom(1 << 20)
for _ in range(20):
    upload.write(block)
upload.finish()
print("finished", flush=True)
time.sleep(600)
"""


def test_a_writer_killed_before_publish_leaves_only_a_pending_write_that_abort_removes(
    storage, tmp_path
):
    if isinstance(storage, LocalStorage):
        settings = {"kind": "local", "root": str(storage.root)}
    else:
        settings = {
            "kind": "s3",
            "bucket": storage.bucket,
            "prefix": storage.prefix,
            "endpoint_url": storage.endpoint_url,
            "credentials_env": storage.credentials_env,
        }
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(settings), KEY],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert writer.stdout.readline() == b"finished\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    assert storage.size(KEY) is None
    assert list(storage.list(SLUG)) == []
    pending = storage.pending()
    assert [item.key for item in pending] == [KEY]
    assert abs((datetime.now(UTC) - pending[0].started).total_seconds()) < 600
    storage.abort(pending[0])
    assert storage.pending() == []
    storage.abort(pending[0])
    if isinstance(storage, LocalStorage):
        assert os.listdir(storage.root / SLUG) == []


def test_the_s3_server_killed_mid_upload_fails_the_write_and_leaves_an_upload_to_abort(
    tmp_path, s3_env
):
    server = SeaweedServer(tmp_path / "weed").start()
    try:
        server.create_bucket("crash-test")
        storage = s3_storage_for(server, s3_env, bucket="crash-test", prefix="p")
        block = os.urandom(MiB)
        with pytest.raises(StorageError) as caught, storage.open_write(KEY) as upload:
            for count in range(4096):
                if count == 24:
                    server.kill()
                    killed = time.monotonic()
                upload.write(block)
            upload.finish()
            upload.publish()
        # Bounded by the client's timeouts and retries, not by the server coming back.
        assert time.monotonic() - killed < 120
        message = str(caught.value)
        print(f"{time.monotonic() - killed:.1f} s after the kill: {message}")
        assert "Cannot reach the S3 endpoint" in message or "broke" in message, message
        assert server.endpoint in message and one_sentence(message), message

        server.start()
        assert storage.size(KEY) is None
        assert list(storage.list(SLUG)) == []
        pending = storage.pending()
        assert [item.key for item in pending] == [KEY]
        storage.abort(pending[0])
        assert storage.pending() == []
        assert server.client().list_multipart_uploads(Bucket="crash-test").get("Uploads") in (
            None,
            [],
        )
    finally:
        server.stop()


def read_all_by_read(stream) -> bytes:
    """Read a raw stream to its end with read, 1 MiB at a time."""
    out = bytearray()
    while data := stream.read(MiB):
        out += data
    return bytes(out)


@pytest.mark.parametrize("read", [read_all, read_all_by_read], ids=["readinto", "read"])
def test_a_read_broken_half_way_resumes_where_it_stopped(s3_server, s3_env, read):
    writer = s3_storage_for(s3_server, s3_env)
    data = random.Random(5).randbytes(20 * MiB)
    writer.put_atomic(KEY, data)
    proxy = CuttingProxy(s3_server.ports["s3"], cut_after=7 * MiB + 12_345)
    try:
        reader = s3_storage_for(proxy, s3_env, prefix=writer.prefix, max_attempts=1)
        with reader.open_read(KEY) as stream:
            assert read(stream) == data
    finally:
        proxy.close()
    assert proxy.cuts == 1


def _record_sent(storage, sent: list) -> None:
    """Record (operation, x-amz-content-sha256, body) of every request `storage` sends."""

    def record(request, event_name, **_):
        operation = event_name.rsplit(".", 1)[-1]
        body = request.body or b""
        if hasattr(body, "read"):
            position = body.tell()
            body, _ = body.read(), body.seek(position)
        sent.append((operation, request.headers.get("X-Amz-Content-SHA256"), bytes(body)))

    storage.client.meta.events.register("before-send.s3", record)


def test_over_plain_http_every_request_signs_its_bytes_parts_included(s3_server, s3_env):
    # Without TLS the signed sha256 of a part is what lets the server refuse altered bytes.
    storage = s3_storage_for(s3_server, s3_env, part_size=5 * MiB)
    sent = []
    _record_sent(storage, sent)
    data = random.Random(9).randbytes(12 * MiB)
    with storage.open_write(KEY) as upload:
        upload.write(data)
        upload.finish()
        upload.publish()
    storage.put_atomic(KEY + ".sha256", sidecar_text(hashlib.sha256(data).hexdigest(), NAME))

    assert [op for op, _header, _body in sent].count("UploadPart") == 3
    assert {op for op, _header, _body in sent} >= {
        "CreateMultipartUpload",
        "CompleteMultipartUpload",
        "PutObject",
    }
    for _operation, header, body in sent:
        assert header == hashlib.sha256(body).hexdigest().encode()
    with storage.open_read(KEY) as stream:
        assert read_all(stream) == data


def test_over_https_parts_are_signed_without_their_bytes_and_the_rest_with_them(s3_env):
    # No TLS server runs here: the requests are stopped just before they would be sent
    # (botocore's before-send event answers instead), after they were signed.
    storage = S3Storage(BUCKET, endpoint_url="https://s3.example.invalid", credentials_env=s3_env)
    sent = []
    _record_sent(storage, sent)

    class Raw:
        def stream(self, *args, **kwargs):
            yield b""

    def answer(request, **_):
        return AWSResponse(request.url, 200, {"ETag": '"e"'}, Raw())

    storage.client.meta.events.register_last("before-send.s3", answer)
    storage.client.upload_part(
        Bucket=BUCKET, Key=KEY, PartNumber=1, UploadId="u", Body=b"part bytes"
    )
    storage.client.put_object(Bucket=BUCKET, Key=KEY + ".sha256", Body=b"sidecar")

    (part,) = [header for op, header, _body in sent if op == "UploadPart"]
    assert part == b"UNSIGNED-PAYLOAD"
    (put,) = [(header, body) for op, header, body in sent if op == "PutObject"]
    assert put[0] == hashlib.sha256(b"sidecar").hexdigest().encode()


def test_an_upload_fills_the_same_few_part_buffers_again(s3_server, s3_env):
    storage = s3_storage_for(s3_server, s3_env, part_size=5 * MiB, upload_threads=2)
    bodies = set()

    def record(params, **_):
        bodies.add(id(params["Body"]))

    storage.client.meta.events.register("provide-client-params.s3.UploadPart", record)
    data = random.Random(10).randbytes(41 * MiB)
    with storage.open_write(KEY) as upload:
        for chunk in odd_chunks(data):
            upload.write(chunk)
        upload.finish()
        upload.publish()
    # Nine parts, through at most one buffer being filled and two in flight.
    assert 1 < len(bodies) <= 3
    with storage.open_read(KEY) as stream:
        assert hashlib.sha256(read_all(stream)).digest() == hashlib.sha256(data).digest()


def test_check_passes_on_a_working_storage(storage):
    storage.check()
    assert list(storage.list()) == []


def test_check_names_an_unknown_access_key(s3_server, s3_env, monkeypatch):
    monkeypatch.setenv("TEST_S3_ACCESS_KEY_ID", "nobody-knows-me")
    with pytest.raises(StorageError) as caught:
        s3_storage_for(s3_server, s3_env).check()
    message = str(caught.value)
    assert message.startswith("Wrong credentials") and "TEST_S3_ACCESS_KEY_ID" in message
    assert one_sentence(message)


def test_check_names_a_wrong_secret_key(s3_server, s3_env, monkeypatch):
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError) as caught:
        s3_storage_for(s3_server, s3_env).check()
    message = str(caught.value)
    assert message.startswith("Wrong credentials") and "secret key" in message
    assert "TEST_S3_SECRET_ACCESS_KEY" in message and "not-the-secret" not in message
    assert one_sentence(message)


def test_check_uses_the_standard_aws_variables_without_a_prefix(s3_server, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    storage = S3Storage(BUCKET, prefix="aws-vars", endpoint_url=s3_server.endpoint)
    storage.check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError) as caught:
        S3Storage(BUCKET, prefix="aws-vars", endpoint_url=s3_server.endpoint).check()
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(caught.value)


def test_check_says_when_no_credentials_are_found_at_all(s3_server, s3_env):
    storage = S3Storage(BUCKET, prefix="no-credentials", endpoint_url=s3_server.endpoint)
    with pytest.raises(StorageError) as caught:
        storage.check()
    assert str(caught.value) == (
        "No S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the workers' "
        "environment."
    )


def test_missing_credential_variables_are_named_when_the_storage_is_opened(
    s3_server, s3_env, monkeypatch
):
    monkeypatch.delenv("TEST_S3_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError) as caught:
        open_storage(
            "s3", bucket=BUCKET, endpoint_url=s3_server.endpoint, credentials_env="TEST_S3"
        )
    assert str(caught.value).startswith("TEST_S3_SECRET_ACCESS_KEY is not set")


def test_check_names_a_missing_bucket(s3_server, s3_env):
    with pytest.raises(StorageError) as caught:
        s3_storage_for(s3_server, s3_env, bucket="no-such-bucket").check()
    message = str(caught.value)
    assert message.startswith("The bucket no-such-bucket does not exist") and one_sentence(message)


def test_check_names_an_unreachable_endpoint(s3_env):
    nobody = f"http://127.0.0.1:{free_ports(1)[0]}"
    storage = S3Storage(BUCKET, endpoint_url=nobody, credentials_env=s3_env, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.check()
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert message.startswith(f"Cannot reach the S3 endpoint {nobody}") and one_sentence(message)


def test_check_names_an_endpoint_that_accepts_connections_but_never_answers(s3_env):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        storage = S3Storage(
            BUCKET, endpoint_url=endpoint, credentials_env=s3_env, read_timeout=1, max_attempts=2
        )
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            storage.check()
        assert time.monotonic() - started < 30
    finally:
        silent.close()
    message = str(caught.value)
    assert message.startswith(f"The S3 endpoint {endpoint} stopped answering"), message
    assert "within 1 s" in message and one_sentence(message)


def test_check_names_a_permission_refused_to_a_read_only_key(s3_server, s3_env, monkeypatch):
    monkeypatch.setenv("TEST_S3_ACCESS_KEY_ID", READER_KEY)
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", READER_SECRET)
    with pytest.raises(StorageError) as caught:
        s3_storage_for(s3_server, s3_env).check()
    message = str(caught.value)
    assert message.startswith("Permission denied") and "may not write" in message
    assert one_sentence(message)


def test_check_names_an_archive_folder_that_cannot_be_written(tmp_path):
    if os.getuid() == 0:
        # root writes anywhere; a read-only place it cannot write is /proc.
        storage = LocalStorage("/proc/archives")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        storage = LocalStorage(locked / "archives")
    with pytest.raises(StorageError) as caught:
        storage.check()
    assert one_sentence(str(caught.value)) and str(storage.root.parent) in str(caught.value)


HOSTILE = [
    "/etc/passwd",
    "../escape",
    f"{SLUG}/../../escape",
    f"{SLUG}//x",
    f"{SLUG}/",
    "",
    ".",
    f"{SLUG}/./x",
    "nul\x00byte",
    "new\nline",
    "\udcffnot-utf8",
    f"{SLUG}/x.tar.zst.tmp",
    "x" * 300,
]


@pytest.mark.parametrize("key", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_keys_are_refused_and_nothing_is_written(storage, key, tmp_path):
    before = sorted(os.listdir(tmp_path))
    operations = [
        lambda: storage.open_write(key),
        lambda: storage.put_atomic(key, b"x"),
        lambda: storage.open_read(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
        lambda: storage.locator(key),
        lambda: storage.abort(Pending(key, datetime.now(UTC), upload_id="x")),
    ]
    if key not in ("", f"{SLUG}/x.tar.zst.tmp"):
        operations += [lambda: storage.list(key), lambda: storage.pending(key)]
    for operation in operations:
        with pytest.raises(StorageError, match="is refused"):
            operation()
    assert sorted(os.listdir(tmp_path)) == before
    if isinstance(storage, S3Storage):
        everything = storage.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        assert not [item for item in everything if "escape" in item["Key"]]


def test_a_symlinked_source_folder_is_refused_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    storage = LocalStorage(tmp_path / "store")
    storage.root.mkdir()
    (storage.root / SLUG).symlink_to(elsewhere)
    for operation in (
        lambda: storage.open_write(KEY),
        lambda: storage.put_atomic(KEY, b"x"),
        lambda: storage.open_read(KEY),
    ):
        with pytest.raises(StorageError, match="not a plain folder"):
            operation()
    assert os.listdir(elsewhere) == []


def test_reading_a_missing_object_names_it(storage):
    with pytest.raises(MissingObjectError) as caught:
        storage.open_read(KEY)
    assert str(caught.value) == f"{storage.locator(KEY)} is missing."


def test_list_shows_one_level_of_files_and_folders(storage):
    storage.put_atomic("a/x", b"12345")
    storage.put_atomic("a/b/y", b"1")
    storage.put_atomic("c", b"123")
    assert sorted(storage.list()) == [Entry("a", None), Entry("c", 3)]
    assert sorted(storage.list("a")) == [Entry("b", None), Entry("x", 5)]
    assert list(storage.list("nothing-here")) == []


def test_put_atomic_replaces_a_small_object_whole(storage):
    storage.put_atomic(f"{SLUG}/{NAME}.sha256", b"old\n")
    storage.put_atomic(f"{SLUG}/{NAME}.sha256", b"new contents\n")
    assert storage.read_bytes(f"{SLUG}/{NAME}.sha256", limit=100) == b"new contents\n"
    with pytest.raises(StorageError, match="larger than the 5 bytes"):
        storage.read_bytes(f"{SLUG}/{NAME}.sha256", limit=5)


def _download(storage: S3Storage, folder: str, dest: Path, env: dict) -> None:
    """Copy the folder's objects with a plain S3 client: the aws CLI, else boto3."""
    source = f"s3://{storage.bucket}/{storage.prefix}/{folder}/"
    aws = shutil.which("aws")
    if aws:
        argv = [aws, "s3", "cp", "--recursive", "--only-show-errors", source, str(dest)]
        argv += ["--endpoint-url", storage.endpoint_url]
    else:
        script = (
            "import boto3, os, sys\n"
            "c = boto3.client('s3', endpoint_url=sys.argv[1])\n"
            "for o in c.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3])['Contents']:\n"
            "    c.download_file(sys.argv[2], o['Key'],"
            " os.path.join(sys.argv[4], o['Key'].rsplit('/', 1)[1]))\n"
        )
        prefix = f"{storage.prefix}/{folder}/"
        argv = [sys.executable, "-c", script, storage.endpoint_url, storage.bucket, prefix]
        argv.append(str(dest))
    subprocess.run(argv, check=True, env=env, timeout=120)


def test_an_archive_on_s3_restores_with_plain_tools(s3_server, s3_env, tree, tmp_path):
    """An S3 client, sha256sum, zstd and tar restore it, and the bytes equal a local copy."""
    s3 = s3_storage_for(s3_server, s3_env)
    local = LocalStorage(tmp_path / "store")
    pipeline = subprocess.Popen(
        ["bash", "-c", f"tar -cf - -C {tree} . | zstd -q -c"], stdout=subprocess.PIPE
    )
    digest = hashlib.sha256()
    with s3.open_write(KEY) as remote, local.open_write(KEY) as near:
        while chunk := pipeline.stdout.read(65_537):
            digest.update(chunk)
            remote.write(chunk)
            near.write(chunk)
        assert pipeline.wait() == 0
        for upload in (remote, near):
            upload.finish()
        for target in (s3, local):
            target.put_atomic(f"{KEY}.sha256", sidecar_text(digest.hexdigest(), NAME))
        remote.publish()
        near.publish()

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    env = {
        **os.environ,
        **isolated_aws_env(tmp_path),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    _download(s3, SLUG, fetched, env)
    assert sorted(os.listdir(fetched)) == [NAME, f"{NAME}.sha256"]
    check = subprocess.run(
        ["sha256sum", "-c", f"{NAME}.sha256"], cwd=fetched, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout == f"{NAME}: OK\n", check.stdout + check.stderr
    assert (fetched / NAME).read_bytes() == (local.root / KEY).read_bytes()

    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(
        ["bash", "-c", f"zstd -d -c < {fetched / NAME} | tar -xf - -C {restored}"], check=True
    )
    assert (restored / "sub" / "random.bin").read_bytes() == (
        tree / "sub" / "random.bin"
    ).read_bytes()


MEMORY_CHILD = r"""
import json, os, sys
from backups.engine.storage import open_storage
storage = open_storage(**json.loads(sys.argv[1]))
block = os.urandom(1 << 20)
with storage.open_write(sys.argv[2]) as upload:
    for _ in range(512):
        upload.write(block)
    upload.finish()
    upload.publish()
peak_kib = next(
    int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")
)
print(json.dumps({"peak_kib": peak_kib, "size": storage.size(sys.argv[2])}))
storage.delete(sys.argv[2])
"""


def test_writing_512_mib_to_s3_keeps_peak_memory_bounded(s3_server, s3_env):
    storage = s3_storage_for(s3_server, s3_env)
    settings = {
        "kind": "s3",
        "bucket": BUCKET,
        "prefix": storage.prefix,
        "endpoint_url": s3_server.endpoint,
        "credentials_env": s3_env,
    }
    child = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, json.dumps(settings), KEY],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert child.returncode == 0, child.stderr.decode()
    result = json.loads(child.stdout)
    assert result["size"] == 512 * MiB
    # The whole stream would need 512 MiB; parts in flight need a few dozen.
    assert result["peak_kib"] / 1024 < 200, result


def test_part_sizes_grow_so_the_largest_s3_object_fits_in_10000_parts():
    sizes = [part_size(number) for number in range(1, MAX_PARTS + 1)]
    assert sizes[0] == sizes[999] == 8 * MiB and sizes[1000] == 16 * MiB
    assert max(sizes) <= MAX_PART_SIZE
    assert sum(sizes) >= 5 << 40
    # Memory follows the part size: an 8 GiB archive still goes in 8 MiB parts.
    assert sum(sizes[:1000]) == 8000 * MiB


@pytest.mark.parametrize(
    ("kind", "config", "start"),
    [
        ("ftp", {}, "Unknown storage kind 'ftp'"),
        ("local", {"root": "/x", "bucket": "b"}, "A local storage has no setting 'bucket'"),
        ("local", {}, "A local storage needs a root"),
        ("s3", {}, "A s3 storage needs a bucket"),
        ("s3", {"bucket": "ab"}, "The bucket name 'ab' is not valid"),
        ("s3", {"bucket": "b" * 64}, "The bucket name"),
        ("s3", {"bucket": "ok-bucket", "prefix": "a/../b"}, "The prefix 'a/../b' is not valid"),
        ("s3", {"bucket": "ok-bucket", "endpoint_url": "ftp://h"}, "The endpoint 'ftp://h'"),
        (
            "s3",
            {"bucket": "ok-bucket", "endpoint_url": "http://key:secret@h"},
            "The endpoint address holds credentials",
        ),
        ("s3", {"bucket": "ok-bucket", "credentials_env": "1X"}, "credentials_env '1X'"),
        ("s3", {"bucket": "ok-bucket", "part_size": MiB}, "The part size"),
    ],
)
def test_open_storage_refuses_bad_settings_with_a_sentence(kind, config, start, s3_env):
    with pytest.raises(StorageError) as caught:
        open_storage(kind, **config)
    assert str(caught.value).startswith(start) and one_sentence(str(caught.value))
    assert "secret" not in str(caught.value).replace("holds credentials", "")


def test_an_s3_storage_is_never_pickled(s3_server, s3_env):
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(s3_storage_for(s3_server, s3_env))


def test_describe_and_locator_name_what_plain_tools_take(s3_server, s3_env, tmp_path):
    s3 = s3_storage_for(s3_server, s3_env, prefix="site-a")
    assert s3.describe() == f"s3://{BUCKET}/site-a at {s3_server.endpoint}"
    assert s3.locator(KEY) == f"s3://{BUCKET}/site-a/{KEY}"
    local = LocalStorage(tmp_path / "store")
    assert local.describe() == str(tmp_path / "store")
    assert local.locator(KEY) == str(tmp_path / "store" / SLUG / NAME)
    assert credentials_env()["TEST_S3_ACCESS_KEY_ID"] not in repr(s3) + s3.describe()
