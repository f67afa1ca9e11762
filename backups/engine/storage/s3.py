"""A storage in an S3 bucket, under a prefix: AWS S3, MinIO, SeaweedFS, Ceph RGW, Garage, R2.

An archive is written as a multipart upload: parts are uploaded by background threads
while the caller compresses and hashes the next bytes, with at most `upload_threads`
parts in flight and one being filled, so memory stays bounded whatever the archive's
size. The upload is completed only by `publish()`: until then no object exists under the
key, and a crash, a kill or a network failure leaves at most an incomplete upload, which
`pending` lists and `abort` removes. Objects smaller than one part are sent with a single
PutObject at publish time.

Credentials never pass through this module's configuration: they come from the workers'
environment when the storage is opened, either the AWS credential chain
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, ...) or `<PREFIX>_ACCESS_KEY_ID` /
`<PREFIX>_SECRET_ACCESS_KEY` (and optionally `<PREFIX>_SESSION_TOKEN`) for a
`credentials_env` prefix.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlsplit

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config

from ..errors import MissingObjectError, StorageError
from .base import Entry, Pending, Storage, Upload, check_key, join_key

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_UPLOAD_THREADS = 2
# S3's limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
# The part size doubles every thousand parts: 8 MiB parts up to 8 GiB, 16 MiB up to
# 24 GiB, ..., past S3's 5 TiB object limit within 10,000 parts.
PARTS_PER_STEP = 1000
# A stream that breaks while an object is read is resumed where it stopped, this often.
READ_RESUMES = 3
# What `readall` asks the response for at a time.
READ_PIECE = 1 << 20

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_ENV_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROBE_PREFIX = ".storage-check-"
_WRONG_KEY = {"InvalidAccessKeyId"}
_WRONG_SECRET = {"SignatureDoesNotMatch"}
_BAD_TOKEN = {"InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidClientTokenId"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_WRONG_REGION = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_NO_CREDENTIALS = (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)
_BROKEN_STREAM = (
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
)


def part_size(number: int, base: int = DEFAULT_PART_SIZE) -> int:
    """Return the size of part `number` (from 1) of an upload whose first part is `base`."""
    return min(base << ((number - 1) // PARTS_PER_STEP), MAX_PART_SIZE)


def _error_code(error: boto_errors.ClientError) -> tuple[str, str, int]:
    response = getattr(error, "response", {}) or {}
    body = response.get("Error", {}) or {}
    status = int((response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
    return str(body.get("Code", status)), str(body.get("Message", "")).rstrip("."), status


class S3Upload(Upload):
    """A multipart upload fed by `write`, completed by `publish`, aborted by `discard`."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self.written = 0
        self.published = False
        self._storage = storage
        self._object = storage.object_key(key)
        self._base = storage.part_size
        self._buffer = bytearray(part_size(1, self._base))
        self._fill = 0
        self._number = 0
        self._upload_id: str | None = None
        self._etags: dict[int, str] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._slots = threading.BoundedSemaphore(storage.upload_threads)
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._finished = False
        # Part buffers whose upload is done, filled again rather than allocated anew.
        self._spare: list[bytearray] = []

    def write(self, data) -> int:
        """Append bytes; a full part goes to an upload thread (waiting for a free one)."""
        self._raise_failure()
        if self._finished:
            raise StorageError(f"{self._storage.locator(self.key)} was already finished.")
        view = memoryview(data).cast("B")
        count = len(view)
        while view:
            take = min(len(self._buffer) - self._fill, len(view))
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._buffer):
                self._send_part()
        self.written += count
        return count

    def flush(self) -> None:
        """Do nothing: a part is sent once full, and the last one by `finish`."""

    def _send_part(self) -> None:
        number = self._number + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"{self._storage.locator(self.key)} needs more than the {MAX_PARTS} parts S3 "
                "allows in one upload; raise the storage's part size."
            )
        if self._upload_id is None:
            response = self._storage.call(
                "start the upload of", self.key, "create_multipart_upload", Key=self._object
            )
            self._upload_id = response["UploadId"]
            self._pool = ThreadPoolExecutor(
                self._storage.upload_threads, thread_name_prefix="s3-upload"
            )
        body = self._buffer
        del body[self._fill :]
        # Blocks while every thread is busy: this is what bounds memory.
        self._slots.acquire()
        try:
            self._raise_failure()
            self._futures.append(self._pool.submit(self._upload_part, number, body))
        except BaseException:
            self._slots.release()
            raise
        self._number = number
        self._buffer = self._new_buffer(part_size(number + 1, self._base))
        self._fill = 0

    def _new_buffer(self, size: int) -> bytearray:
        """Return a part buffer of `size` bytes: one whose upload is done, or a new one."""
        with self._lock:
            while self._spare:
                buffer = self._spare.pop()
                if len(buffer) == size:
                    return buffer
        return bytearray(size)

    def _upload_part(self, number: int, body: bytearray) -> None:
        try:
            response = self._storage.client.upload_part(
                Bucket=self._storage.bucket,
                Key=self._object,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
            with self._lock:
                self._etags[number] = response["ETag"]
                if len(body) == part_size(number, self._base):
                    self._spare.append(body)
        except BaseException as error:  # the writer raises it at its next call
            with self._lock:
                if self._failure is None:
                    self._failure = self._storage.explain(
                        error, f"upload part {number} of", self.key
                    )
        finally:
            self._slots.release()

    def _raise_failure(self) -> None:
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise failure

    def finish(self) -> None:
        """Upload the last part and wait for every part to be stored."""
        if self._finished:
            return
        self._raise_failure()
        if self._upload_id is None:
            # Smaller than one part: kept for a single PutObject at publish.
            del self._buffer[self._fill :]
        else:
            if self._fill:
                self._send_part()
            for future in self._futures:
                future.result()
            self._pool.shutdown(wait=True)
            self._raise_failure()
        self._finished = True

    def publish(self) -> None:
        """Complete the upload (or put the small object): the object appears whole."""
        if not self._finished:
            raise StorageError(f"{self._storage.locator(self.key)} is published before finish.")
        if self._upload_id is None:
            self._storage.call(
                "write", self.key, "put_object", Key=self._object, Body=bytes(self._buffer)
            )
        else:
            parts = [{"ETag": self._etags[n], "PartNumber": n} for n in sorted(self._etags)]
            try:
                self._storage.call(
                    "complete the upload of",
                    self.key,
                    "complete_multipart_upload",
                    Key=self._object,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except StorageError as error:
                # A retry after a lost reply finds the upload completed, hence gone.
                gone = getattr(error, "code", None) == "NoSuchUpload"
                if not gone or self._storage.size(self.key) != self.written:
                    raise
        self.published = True
        self._buffer = bytearray()
        self._spare = []

    def discard(self) -> None:
        """Stop the upload threads and abort the upload; never raises.

        When the server cannot be reached, the upload stays pending until `abort`.
        """
        if self.published:
            return
        self._buffer = bytearray()
        self._spare = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._storage.client.abort_multipart_upload(
                    Bucket=self._storage.bucket, Key=self._object, UploadId=self._upload_id
                )


class S3Reader(io.RawIOBase):
    """An object's bytes streamed from GetObject, resumed with a Range when the stream breaks.

    Every resumed request is pinned to the first response's ETag, so an object replaced
    while it is read fails instead of mixing two objects' bytes.
    """

    def __init__(self, storage: S3Storage, key: str, offset: int) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._position = offset
        self._etag: str | None = None
        self._body = None
        self._open()

    def _open(self) -> None:
        extra = {}
        if self._position:
            extra["Range"] = f"bytes={self._position}-"
        if self._etag:
            extra["IfMatch"] = self._etag
        try:
            response = self._storage.call(
                "read", self._key, "get_object", Key=self._storage.object_key(self._key), **extra
            )
        except StorageError as error:
            if getattr(error, "code", None) == "InvalidRange":
                self._body = None
                return
            raise
        self._etag = response.get("ETag")
        self._body = response["Body"]

    def readable(self) -> bool:
        """Return True: this stream is for reading."""
        return True

    def _next(self, size: int) -> bytes:
        """Return up to `size` bytes from the response (b"" at the end), resuming a break."""
        if self._body is None:
            return b""
        for attempt in range(READ_RESUMES + 1):
            try:
                data = self._body.read(size)
                break
            except _BROKEN_STREAM as error:
                with contextlib.suppress(Exception):
                    self._body.close()
                if attempt == READ_RESUMES:
                    raise self._storage.explain(error, "read", self._key) from None
                self._open()
                if self._body is None:
                    return b""
        self._position += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes as the response gives them, with no copy on the way."""
        if size is None or size < 0:
            return self.readall()
        return self._next(size)

    def readall(self) -> bytes:
        """Return the rest of the object."""
        pieces = []
        while data := self._next(READ_PIECE):
            pieces.append(data)
        return b"".join(pieces)

    def readinto(self, buffer) -> int:
        """Read up to len(buffer) bytes into it; return how many (0 at the end)."""
        view = memoryview(buffer).cast("B")
        data = self._next(len(view))
        count = len(data)
        view[:count] = data
        return count

    def close(self) -> None:
        """Close the response stream."""
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None
        super().close()


class S3Storage(Storage):
    """Archives in `s3://<bucket>/<prefix>/<source-slug>/<archive name>`."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials_env: str | None = None,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        upload_threads: int = DEFAULT_UPLOAD_THREADS,
        connect_timeout: float = 5,
        read_timeout: float = 20,
        max_attempts: int = 3,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise StorageError(
                f"The bucket name {bucket!r} is not valid: it has 3 to 63 letters, digits, "
                "dots, hyphens or underscores, and starts and ends with a letter or digit."
            )
        prefix = (prefix or "").strip("/")
        if prefix:
            try:
                check_key(prefix, folder=True)
            except StorageError:
                raise StorageError(
                    f"The prefix {prefix!r} is not valid: use a relative path such as "
                    "'backups/site-a' (no '..', no empty part, no control character)."
                ) from None
        if endpoint_url is not None:
            endpoint_url = _check_endpoint(endpoint_url)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise StorageError(
                f"The part size {part_size} is outside S3's limits (5 MiB to 5 GiB)."
            )
        if upload_threads < 1:
            raise StorageError("An S3 storage needs at least one upload thread.")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials_env = credentials_env
        self.part_size = part_size
        self.upload_threads = upload_threads
        self.read_timeout = read_timeout
        credentials, self._credentials_named = _credentials(credentials_env)
        if region is None and endpoint_url is not None:
            # S3-compatible services accept any region; signing needs one.
            region = "us-east-1"
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=upload_threads + 4,
            # Checksums only where S3 requires them: several S3-compatible services refuse
            # the streamed CRC trailers, and the sidecar's sha256 covers every byte anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        try:
            session = boto3.session.Session(region_name=region, **credentials)
            self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except boto_errors.BotoCoreError as error:
            raise StorageError(
                f"The S3 storage {self.describe()} cannot be opened: {error}."
            ) from None
        if endpoint_url is None or endpoint_url.lower().startswith("https://"):
            # Over plain http a part's signed sha256 is what lets the server refuse bytes
            # altered on the way; over TLS the channel already does.
            self.client.meta.events.register("before-sign.s3.UploadPart", _unsigned_payload)
        self._session = session

    def describe(self) -> str:
        """Return `s3://bucket/prefix`, with the endpoint when it is not AWS."""
        where = f"s3://{join_key(self.bucket, self.prefix)}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def locator(self, key: str) -> str:
        """Return `s3://bucket/prefix/key`."""
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def object_key(self, key: str, *, folder: bool = False) -> str:
        """Return the full object key of `key` in the bucket, refusing hostile keys."""
        check_key(key, folder=folder)
        return join_key(self.prefix, key)

    def call(self, action: str, key: str, operation: str, **params):
        """Call a client operation on this bucket, turning failures into StorageError."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            raise self.explain(error, action, key) from None

    def open_write(self, key: str) -> S3Upload:
        """Start a streaming write of `key`."""
        self.object_key(key)
        return S3Upload(self, key)

    def put_atomic(self, key: str, data: bytes) -> None:
        """Store a small object with one PutObject (S3 makes it visible whole)."""
        self.call("write", key, "put_object", Key=self.object_key(key), Body=bytes(data))

    def open_read(self, key: str, offset: int = 0) -> S3Reader:
        """Return a stream of the object from `offset`."""
        self.object_key(key)
        return S3Reader(self, key, offset)

    def size(self, key: str) -> int | None:
        """Return the object's size, or None when there is none."""
        try:
            response = self.call("look up", key, "head_object", Key=self.object_key(key))
        except MissingObjectError:
            return None
        return int(response["ContentLength"])

    def _folder(self, prefix: str) -> str:
        full = self.object_key(prefix, folder=True)
        return full + "/" if full else ""

    def list(self, prefix: str = "") -> Iterator[Entry]:
        """Yield the objects (with sizes) and folders directly under `prefix`."""
        return self._list(self._folder(prefix), prefix)

    def _list(self, folder: str, prefix: str) -> Iterator[Entry]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder, Delimiter="/"
        )
        try:
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    name = common["Prefix"][len(folder) :].rstrip("/")
                    if _plain_name(name):
                        yield Entry(name, None)
                for item in page.get("Contents", ()):
                    name = item["Key"][len(folder) :]
                    if _plain_name(name):
                        yield Entry(name, int(item["Size"]))
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            raise self.explain(error, "list", prefix) from None

    def delete(self, key: str) -> None:
        """Remove the object (S3 treats a missing one as removed)."""
        self.call("delete", key, "delete_object", Key=self.object_key(key))

    def pending(self, prefix: str = "") -> list[Pending]:
        """Return the incomplete multipart uploads under `prefix`."""
        folder = self._folder(prefix)
        skip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=folder
        )
        found = []
        try:
            for page in pages:
                for upload in page.get("Uploads", ()):
                    key = upload["Key"][skip:]
                    try:
                        check_key(key)
                    except StorageError:
                        continue
                    found.append(
                        Pending(
                            key=key,
                            started=upload["Initiated"].astimezone(UTC),
                            upload_id=upload["UploadId"],
                        )
                    )
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            raise self.explain(error, "list the incomplete uploads in", prefix) from None
        return sorted(found, key=lambda item: (item.key, item.started))

    def abort(self, pending: Pending) -> None:
        """Abort an incomplete multipart upload; one already gone is fine."""
        if not pending.upload_id:
            raise StorageError(f"{self.locator(pending.key)}: an S3 abort needs an upload id.")
        try:
            self.call(
                "abort the upload of",
                pending.key,
                "abort_multipart_upload",
                Key=self.object_key(pending.key),
                UploadId=pending.upload_id,
            )
        except StorageError as error:
            if getattr(error, "code", None) != "NoSuchUpload":
                raise

    def check(self) -> None:
        """Write, read back, list, start and abort an upload, and delete a probe object."""
        probe = _PROBE_PREFIX + secrets.token_hex(8)
        payload = secrets.token_bytes(64)
        self.put_atomic(probe, payload)
        try:
            if self.read_bytes(probe, limit=len(payload)) != payload:
                raise StorageError(
                    f"{self.describe()} returned other bytes than were written to it: "
                    "something between here and the service alters data."
                )
            self.call("list", "", "list_objects_v2", Prefix=self._folder(""), MaxKeys=1)
            upload = self.call(
                "start an upload in", probe, "create_multipart_upload", Key=self.object_key(probe)
            )
            self.abort(Pending(probe, datetime.now(UTC), upload_id=upload["UploadId"]))
        finally:
            self.delete(probe)

    def _credentials_text(self) -> str:
        if self._credentials_named:
            return self._credentials_named
        with contextlib.suppress(Exception):
            method = self._session.get_credentials().method
            if method != "env":
                return f"the AWS credentials boto3 found ({method})"
        return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"

    def explain(self, error: BaseException, action: str, key: str) -> StorageError:
        """Return one sentence saying why `action` on `key` failed and what to do."""
        target = self.locator(key) if key else self.describe()
        endpoint = self.endpoint_url or "AWS S3"
        where = f"the S3 endpoint {endpoint}"
        opening = f"The S3 endpoint {endpoint}"
        creds = self._credentials_text()
        code = None
        if isinstance(error, boto_errors.ClientError):
            code, message, status = _error_code(error)
            detail = f"{code}: {message}" if message else code
            if code in _WRONG_KEY:
                text = (
                    f"Wrong credentials: {where} does not know the access key in {creds}; "
                    "set the right one in the workers' environment."
                )
            elif code in _WRONG_SECRET:
                text = (
                    f"Wrong credentials: {where} rejected the secret key in {creds} (the "
                    "signature does not match); set the right one in the workers' environment."
                )
            elif code in _BAD_TOKEN:
                text = f"Wrong credentials: the session token in {creds} is invalid or expired."
            elif code == "NoSuchBucket":
                text = (
                    f"The bucket {self.bucket} does not exist at {endpoint}: create it, or fix "
                    "the storage's bucket name."
                )
            elif code in _MISSING_KEY:
                return _coded(MissingObjectError(f"{target} is missing."), code)
            elif code in _DENIED:
                text = (
                    f"Permission denied: the credentials in {creds} may not {action} {target}; "
                    "grant them read, write, list, delete and multipart upload rights on "
                    f"s3://{join_key(self.bucket, self.prefix)}."
                )
            elif code in _WRONG_REGION:
                region = (
                    error.response.get("Error", {}).get("Region")
                    or error.response.get("ResponseMetadata", {})
                    .get("HTTPHeaders", {})
                    .get("x-amz-bucket-region")
                    or "the bucket's region"
                )
                text = (
                    f"The bucket {self.bucket} is in another region: set the storage's region "
                    f"to {region}."
                )
            elif code == "NoSuchUpload":
                text = (
                    f"The upload of {target} is gone from {where} (aborted by a clean-up or a "
                    "lifecycle rule while it was written); run it again."
                )
            elif status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                text = f"{opening} failed to {action} {target} ({detail}); try again later."
            else:
                text = f"{opening} refused to {action} {target} ({detail})."
        elif isinstance(error, _NO_CREDENTIALS):
            text = f"No S3 credentials: set {creds} in the workers' environment."
        elif isinstance(error, boto_errors.SSLError):
            text = (
                f"The TLS connection to {where} failed ({error}); check the endpoint's "
                "certificate, or its scheme (http:// or https://)."
            )
        elif isinstance(error, boto_errors.ConnectionError):
            text = (
                f"Cannot reach {where} to {action} {target}; check the address and that the "
                "service is running."
            )
        elif isinstance(error, boto_errors.ReadTimeoutError):
            text = (
                f"{opening} stopped answering while asked to {action} {target} (no "
                f"reply within {self.read_timeout:g} s); check that the service is running."
            )
        elif isinstance(error, _BROKEN_STREAM):
            text = (
                f"The connection to {where} broke while asked to {action} {target}; check "
                "that the service is running."
            )
        elif isinstance(error, StorageError):
            return error
        else:
            text = f"S3 failed to {action} {target}: {error}."
        return _coded(StorageError(text), code)

    def __getstate__(self):
        raise TypeError("An S3 storage holds credentials and is never pickled.")


def _unsigned_payload(request, **_) -> None:
    """Sign a multipart upload's part with its headers but not its bytes (UNSIGNED-PAYLOAD).

    Used over https only. botocore otherwise hashes every part with sha256 for the
    signature (without a checksum header): a second pass over every stored byte, which the
    backup already hashes for the archive's checksum file. TLS keeps the bytes intact on
    the way; the checksum file, a small object sent whole with a signed PutObject, is what
    every restore, verification and copy checks the archive's bytes against.
    """
    config = request.context.get("client_config")
    if config is not None:
        s3 = {**(config.s3 or {}), "payload_signing_enabled": False}
        request.context["client_config"] = config.merge(Config(s3=s3))


def _coded(error: StorageError, code: str | None) -> StorageError:
    error.code = code
    return error


def _plain_name(name: str) -> bool:
    try:
        check_key(name)
    except StorageError:
        return False
    return "/" not in name


def _check_endpoint(url: object) -> str:
    """Return the endpoint URL once it is `http(s)://host[:port][/path]` with no secret."""
    text = str(url)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(
            f"The endpoint {text!r} is not an http:// or https:// address such as "
            "'https://s3.example.com' or 'http://127.0.0.1:8333'."
        )
    if parts.username or parts.password:
        raise StorageError(
            "The endpoint address holds credentials: remove them, and set them in the "
            "workers' environment (see credentials_env)."
        )
    if parts.query or parts.fragment:
        raise StorageError(f"The endpoint {text!r} has a query or fragment: remove it.")
    return text.rstrip("/")


def _credentials(prefix: str | None) -> tuple[dict, str | None]:
    """Read the credentials of a `credentials_env` prefix from the environment now."""
    if prefix is None:
        return {}, None
    if not isinstance(prefix, str) or not _ENV_PREFIX.fullmatch(prefix):
        raise StorageError(
            f"credentials_env {prefix!r} is not a variable name prefix such as 'BACKUP_S3'."
        )
    key_var, secret_var = f"{prefix}_ACCESS_KEY_ID", f"{prefix}_SECRET_ACCESS_KEY"
    missing = [name for name in (key_var, secret_var) if not os.environ.get(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise StorageError(
            f"{' and '.join(missing)} {verb} not set in the workers' environment: set the "
            f"S3 credentials of this storage there (credentials_env={prefix})."
        )
    credentials = {
        "aws_access_key_id": os.environ[key_var],
        "aws_secret_access_key": os.environ[secret_var],
        "aws_session_token": os.environ.get(f"{prefix}_SESSION_TOKEN") or None,
    }
    return credentials, f"{key_var} and {secret_var}"
