"""Encrypt and decrypt streams with age, in the archive pipeline, in bounded memory.

pyrage only offers pull-style streaming (`encrypt_io(reader, writer)`), which runs until
its reader ends. So the work runs beside the caller, fed through an OS pipe of 1 MiB: in a
thread ("thread" mode) or in a child process ("process" mode, see `child`). A pipe rather
than a queue because both ends then block, and wake, outside the GIL, and because closing
one end is how either side tells the other to stop: the writer of a closed pipe gets
EPIPE, its reader gets end-of-file. That is what makes a failure on either side end the
other promptly, without a deadlock.

pyrage holds the GIL while it encrypts or decrypts (about 0.7-1 GB/s). In a thread that
competes with the Python work of the caller; "process" mode moves it to another core at
the cost of a process start (~60 ms) and one more copy through a pipe (see stream_mode).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import pyrage
from pyrage import x25519

from ..errors import ArchiveError, EngineError, KeyFileError, NoMatchingIdentityError
from ..processes import kill_group
from .failures import Seen, Subject, failure
from .keys import Identity, no_identity_message, parse_recipients

THREAD, PROCESS = "thread", "process"
MODES = (THREAD, PROCESS)
# Below this many stored bytes a child's start (~60 ms) costs more than the core it frees.
PROCESS_FROM = 32 << 20
# What one read from a pipe or the archive takes at most: as big as the pipe.
CHUNK = 1 << 20
# The project's root, so a child finds this package whatever its working directory.
_ROOT = str(Path(__file__).resolve().parents[3])
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


# These two mirror restore.children's helpers: importing the restore package would add
# a tenth of a second to the start of every crypto child.
def widen_pipe(fd: int) -> None:
    """Grow a pipe to CHUNK where the system allows it (a failure only costs speed)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)


_STOPPED_EARLY = "Encrypting the archive stopped before its end."


class _Stopped(Exception):
    """The owner stopped the stream: the worker ends without producing more output."""


class _Shared:
    """What the caller and the worker share: the stop flag, the first failure, the outcome."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.source_error: BaseException | None = None
        self.done = False

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error


def stream_mode(size: int | None) -> str:
    """Return where to run the crypto of a stream of about `size` stored bytes.

    A big stream goes to a child process: pyrage holds the GIL while it works, so in a
    thread it takes turns with the caller's decompression, parsing and hashing rather than
    running beside them. In bench.crypto (1 GiB of mixed data, 2 cores), with a child the
    restore's own process spent 7 % more CPU than without encryption and its best run took
    9 % longer; with a thread, 85 % more CPU and 76 % longer. An unknown size (a first
    backup) counts as big.
    """
    return THREAD if size is not None and size < PROCESS_FROM else PROCESS


def canonical_recipients(recipients: Sequence[str | x25519.Recipient]) -> list[str]:
    """Return `recipients` as checked age1… strings; refuse an empty list."""
    texts = parse_recipients([str(recipient) for recipient in recipients])
    if not texts:
        raise KeyFileError("Encrypting needs at least one recipient (an age1… public key).")
    return texts


def encrypt_bytes(data: bytes, recipients: Sequence[str | x25519.Recipient]) -> bytes:
    """Return `data` encrypted to `recipients` as a binary age file (for manifests)."""
    keys = [x25519.Recipient.from_str(text) for text in canonical_recipients(recipients)]
    return pyrage.encrypt(bytes(data), keys)


def decrypt_bytes(
    data: bytes,
    identities: Sequence[Identity],
    *,
    what: str = "The encrypted file",
    recipients: Sequence[str] = (),
    size: int | None = None,
) -> bytes:
    """Return the plaintext of the age file `data`, or raise the ArchiveError that says why not.

    `what` starts the sentences ("The manifest X"); `recipients` are the ones recorded
    for the file, named when no identity opens it; `size` is its recorded size, if known.
    """
    subject = Subject(what, tuple(recipients), tuple(identities), size)
    if not identities:
        raise NoMatchingIdentityError(no_identity_message(what, recipients, identities))
    seen = Seen()
    seen.read(data)
    seen.read(b"")
    plain = io.BytesIO()
    try:
        pyrage.decrypt_io(io.BytesIO(data), plain, [identity.key for identity in identities])
    except (pyrage.DecryptError, OSError) as error:
        seen.plain = plain.tell()
        raise failure(str(error), seen, subject) from None
    return plain.getvalue()


def _write_all(out, data) -> None:
    """Write all of `data` to `out`, which may take less than all of it in one call."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        if written is None or written >= len(view):
            return
        view = view[written:]


def _spawn(argv: list[str], *, secrets: str | None = None) -> tuple[subprocess.Popen, object]:
    """Start the crypto child; `secrets` go through a pipe of their own, never argv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the stream
    keys_read = keys_write = None
    if secrets is not None:
        keys_read, keys_write = os.pipe()
        argv = [*argv, str(keys_read)]
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "backups.engine.crypto.child", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            pass_fds=() if keys_read is None else (keys_read,),
            start_new_session=True,
        )
    except BaseException:
        errors.close()
        raise
    finally:
        if keys_read is not None:
            os.close(keys_read)
    if keys_write is not None:
        with contextlib.suppress(BrokenPipeError), open(keys_write, "wb", buffering=0) as keys:
            keys.write(secrets.encode("ascii"))
    for pipe in (child.stdin, child.stdout):
        widen_pipe(pipe.fileno())
    return child, errors


def _child_failure(child: subprocess.Popen, errors) -> tuple[str, str] | None:
    """Return the child's (error type, message) when it failed, None when it succeeded."""
    if child.wait() == 0:
        return None
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    try:
        report = json.loads(text)
        return str(report["error"]), str(report["message"])
    except (ValueError, KeyError, TypeError):
        return "ChildError", text or f"exit status {child.returncode}"


def _release(shared: _Shared, pipe, child: subprocess.Popen | None) -> None:
    """Stop the worker: flag it, kill the child, close the caller's end of the pipe."""
    shared.stop.set()
    if child is not None:
        kill_group(child)
    with contextlib.suppress(OSError):
        pipe.close()


class EncryptingWriter:
    """A writer that encrypts what it is given to age `recipients` and writes it to `out`.

    It sits between a compressor and the writer that hashes and stores the archive:
    `write(data)` takes plaintext, and ciphertext reaches `out.write` (called from the
    worker, never concurrently) as it is produced, 64 KiB blocks at a time; memory stays
    bounded by the 1 MiB pipe. `close()` ends the stream (the last block and its tag) and
    returns once everything is in `out`; `abort()` stops without ending it, so what `out`
    got is never a complete age file. Use it as a context manager: an exception aborts.

    A failure of `out` (a full disk) or of the encryption is raised by the next `write`
    or by `close`, as the same exception (`OSError` stays `OSError`).
    """

    def __init__(
        self, out, recipients: Sequence[str | x25519.Recipient], *, mode: str = THREAD
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        texts = canonical_recipients(recipients)
        self.recipients = texts
        self._shared = _Shared()
        self._closed = False
        self._child: subprocess.Popen | None = None
        self._errors = None
        self._report: tuple[str, str] | None = None
        if mode == THREAD:
            read_fd, write_fd = os.pipe()
            widen_pipe(write_fd)
            self._pipe = io.FileIO(write_fd, "wb")
            keys = [x25519.Recipient.from_str(text) for text in texts]
            self._worker = threading.Thread(
                target=_encrypt_in_thread,
                args=(read_fd, out, keys, self._shared),
                name="age-encrypt",
                daemon=True,
            )
        else:
            self._child, self._errors = _spawn(["encrypt", *texts])
            self._pipe = self._child.stdin
            self._worker = threading.Thread(
                target=_pump,
                args=(self._child, out, self._shared),
                name="age-encrypt-output",
                daemon=True,
            )
        # An abandoned writer is aborted, never ended: a partial stream must not look whole.
        self._fd = self._pipe.fileno()
        self._finalizer = weakref.finalize(self, _release, self._shared, self._pipe, self._child)
        self._worker.start()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def writable(self) -> bool:
        """Return True: this is a writer."""
        return True

    def write(self, data) -> int:
        """Encrypt `data` (bytes-like); raise the worker's failure if it stopped."""
        if self._closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            try:
                written = os.write(self._fd, view)
            except BrokenPipeError:
                error = self._failure() or EngineError(_STOPPED_EARLY)
                self.abort()
                raise error from None
            view = view[written:]
        return size

    def flush(self) -> None:
        """Do nothing: age writes whole 64 KiB blocks; `close` writes the last one."""

    def close(self) -> None:
        """End the stream, wait until all of it is in `out`, raise what went wrong if anything."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._pipe.close()
        error = self._failure()
        if error is not None:
            raise error

    def abort(self) -> None:
        """Stop without ending the stream (cancel, error upstream); never raises."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        self._end()

    def _end(self) -> None:
        """Wait for the worker and the child, keeping what the child reported; idempotent."""
        self._worker.join()
        if self._errors is not None:
            self._report = _child_failure(self._child, self._errors)
            self._errors.close()
            self._errors = None
            for pipe in (self._child.stdin, self._child.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()

    def _failure(self) -> BaseException | None:
        """Wait for the worker; return the exception the caller should raise, if any."""
        self._end()
        shared = self._shared
        error = shared.error
        if isinstance(error, _Stopped):
            error = None
        if error is None and self._report is not None:
            error = EngineError(f"Encrypting the archive failed: {self._report[1]}.")
        elif error is None and not shared.done:
            error = EngineError(_STOPPED_EARLY)
        if error is None or isinstance(error, (EngineError, OSError)):
            return error
        return EngineError(f"Encrypting the archive failed: {error}.")


class _Sink:
    """Where a thread's encryption writes: `out`, unless the owner stopped the stream."""

    def __init__(self, out, shared: _Shared) -> None:
        self._out = out
        self._shared = shared

    def write(self, data) -> int:
        if self._shared.stop.is_set():
            raise _Stopped()
        try:
            _write_all(self._out, data)
        except BaseException as error:
            self._shared.fail(error)
            raise
        return len(data)

    def flush(self) -> None:
        """Leave flushing to the owner of `out`."""


def _encrypt_in_thread(read_fd: int, out, keys: list, shared: _Shared) -> None:
    # Closing the read end (leaving `with`) is what fails the caller's next write.
    try:
        with io.FileIO(read_fd, "rb") as source:
            pyrage.encrypt_io(source, _Sink(out, shared), keys)
        shared.done = True
    except BaseException as error:
        shared.fail(error)


def _pump(child: subprocess.Popen, out, shared: _Shared) -> None:
    """Copy the child's ciphertext to `out`; on a failure of `out`, stop the child."""
    fd = child.stdout.fileno()
    try:
        while True:
            data = os.read(fd, CHUNK)
            if not data or shared.stop.is_set():
                break
            _write_all(out, data)
        shared.done = True
    except BaseException as error:
        shared.fail(error)
        kill_group(child)


class DecryptingReader(io.RawIOBase):
    """A raw reader of the plaintext of the age-encrypted stream `raw`, in bounded memory.

    `raw` has `read(n)` (the archive file, or the reader that hashes it); a decompressor
    then reads this one. Decryption runs beside the caller (see the module's docstring),
    reading `raw` from its own thread; after `close()` it has stopped and `raw` is the
    caller's again (to hash the rest of the file, say).

    Plaintext is handed out only once age has authenticated it. When decryption fails
    the read that reaches the failure raises an ArchiveError subclass with one sentence:
    NoMatchingIdentityError (no identity opens it: names the recorded `recipients` and
    the identity files tried), TruncatedArchiveError, AlteredArchiveError (with the stored
    byte where the failing 64 KiB block starts), NotEncryptedError. `what` starts those
    sentences ("The archive X"); `size` is the stored size recorded at backup time, which
    tells a truncation from damage to the last block.
    """

    def __init__(
        self,
        raw,
        identities: Sequence[Identity],
        *,
        what: str = "The encrypted file",
        recipients: Sequence[str] = (),
        size: int | None = None,
        mode: str = THREAD,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self._subject = Subject(what, tuple(recipients), tuple(identities), size)
        if not identities:
            raise NoMatchingIdentityError(no_identity_message(what, recipients, identities))
        self._seen = Seen()
        self._shared = _Shared()
        self._child: subprocess.Popen | None = None
        self._errors = None
        self._ended = False
        if mode == THREAD:
            read_fd, write_fd = os.pipe()
            widen_pipe(write_fd)
            self._pipe = io.FileIO(read_fd, "rb")
            source = _Source(raw, self._seen, self._shared)
            keys = [identity.key for identity in identities]
            self._worker = threading.Thread(
                target=_decrypt_in_thread,
                args=(source, write_fd, keys, self._shared),
                name="age-decrypt",
                daemon=True,
            )
        else:
            secrets = "".join(f"{identity.key}\n" for identity in identities)
            self._child, self._errors = _spawn(["decrypt"], secrets=secrets)
            self._pipe = self._child.stdout
            self._worker = threading.Thread(
                target=_feed,
                args=(raw, self._child, self._seen, self._shared),
                name="age-decrypt-input",
                daemon=True,
            )
        self._fd = self._pipe.fileno()
        self._worker.start()

    @property
    def plain_bytes(self) -> int:
        """Return the plaintext bytes handed out so far."""
        return self._seen.plain

    def readable(self) -> bool:
        """Return True: this is a reader."""
        return True

    def readinto(self, buffer) -> int:
        """Read plaintext into `buffer`; return 0 at the end of a stream that authenticated.

        Raise at the end of one that did not: everything handed out before was
        authenticated by age, block by block.
        """
        if self.closed:
            raise ValueError("read from a closed DecryptingReader")
        if self._ended:
            return 0
        count = os.readv(self._fd, [buffer])
        if count:
            self._seen.plain += count
            return count
        self._end_of_stream()
        return 0

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes of plaintext (all the rest when `size` < 0).

        One read of the pipe, whatever it holds: filling whole buffers cost the caller
        more (a copy and a zeroed buffer per MiB) than the extra calls it saved.
        """
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read from a closed DecryptingReader")
        if self._ended or size == 0:
            return b""
        data = os.read(self._fd, min(size, CHUNK))
        if data:
            self._seen.plain += len(data)
            return data
        self._end_of_stream()
        return b""

    def _end_of_stream(self) -> None:
        self._ended = True
        self._worker.join()
        shared = self._shared
        if shared.source_error is not None:
            raise self._read_failed(shared.source_error)
        message = None
        if self._child is not None:
            reported = _child_failure(self._child, self._errors)
            message = None if reported is None else reported[1]
        elif shared.error is not None:
            message = str(shared.error)
        elif not shared.done:
            message = "the decryption stopped before the end"
        if message is not None:
            raise failure(message, self._seen, self._subject)

    def _read_failed(self, error: BaseException) -> BaseException:
        if isinstance(error, EngineError):
            return error
        reason = getattr(error, "strerror", None) or error
        return ArchiveError(f"{self._subject.what} cannot be read: {reason}.")

    def close(self) -> None:
        """Stop decrypting and wait until nothing reads `raw` any more; never raises."""
        if self.closed:
            return
        _release(self._shared, self._pipe, self._child)
        self._worker.join()
        if self._child is not None:
            self._child.wait()
            for pipe in (self._child.stdin, self._child.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
            self._errors.close()
        super().close()


class _Source:
    """Where a thread's decryption reads: `raw`, accounted, unless the owner stopped."""

    def __init__(self, raw, seen: Seen, shared: _Shared) -> None:
        self._raw = raw
        self._seen = seen
        self._shared = shared

    def read(self, size: int = -1) -> bytes:
        if self._shared.stop.is_set():
            raise _Stopped()
        try:
            data = self._raw.read(size)
        except BaseException as error:
            self._shared.source_error = error
            raise
        self._seen.read(data)
        return data


def _decrypt_in_thread(source: _Source, write_fd: int, keys: list, shared: _Shared) -> None:
    # Closing the write end (leaving `with`) is the reader's end-of-file.
    try:
        with io.FileIO(write_fd, "wb") as sink:
            pyrage.decrypt_io(source, sink, keys)
        shared.done = True
    except BaseException as error:
        shared.fail(error)


def _feed(raw, child: subprocess.Popen, seen: Seen, shared: _Shared) -> None:
    """Copy the stored bytes to the child; stop when it exits or the owner stops."""
    target = child.stdin.fileno()
    try:
        while not shared.stop.is_set():
            try:
                data = raw.read(CHUNK)
            except BaseException as error:
                shared.source_error = error
                kill_group(child)
                return
            seen.read(data)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(target, view) :]
    except OSError:
        # The child exited (it failed, or the owner killed it): its status tells why.
        pass
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()
