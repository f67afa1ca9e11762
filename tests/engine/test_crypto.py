"""age encryption at rest: keys, the streaming writer and reader, against the real age CLI."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backups.engine.backup import _HashingWriter
from backups.engine.compression import compressor, decompressor
from backups.engine.crypto import (
    PROCESS,
    THREAD,
    DecryptingReader,
    EncryptingWriter,
    check_identities,
    decrypt_bytes,
    encrypt_bytes,
    fingerprint,
    identity_paths,
    load_identities,
    load_recipients_file,
    parse_recipients,
    stream_mode,
)
from backups.engine.errors import (
    AlteredArchiveError,
    ArchiveError,
    Cancelled,
    KeyFileError,
    NoMatchingIdentityError,
    NotEncryptedError,
    TruncatedArchiveError,
)
from backups.engine.hooks import Hooks
from backups.engine.manifest import EntrySpool
from backups.engine.restore.reader import _HashingReader
from backups.engine.sources import Output, open_source

from .conftest import make_tree

MODES = [THREAD, PROCESS]
BLOCK = 64 << 10
STORED_BLOCK = BLOCK + 16


class Key:
    """A key pair made by the real age-keygen: the identity file and its recipient."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.txt"
        subprocess.run(["age-keygen", "-o", str(self.path)], check=True, capture_output=True)
        self.path.chmod(0o600)
        self.recipient = subprocess.run(
            ["age-keygen", "-y", str(self.path)], check=True, capture_output=True, text=True
        ).stdout.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[Key]:
    folder = tmp_path_factory.mktemp("keys")
    return [Key(folder, name) for name in ("alice", "bob", "carol")]


def encrypt_stream(data: bytes, recipients, *, mode=THREAD, piece=100_003) -> bytes:
    out = io.BytesIO()
    with EncryptingWriter(out, recipients, mode=mode) as writer:
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
    return out.getvalue()


def decrypt_stream(blob: bytes, identities, *, mode=THREAD, **kwargs) -> bytes:
    reader = DecryptingReader(io.BytesIO(blob), identities, mode=mode, **kwargs)
    try:
        return reader.read()
    finally:
        reader.close()


def age_decrypt(blob: bytes, key: Key) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(key.path)], input=blob, capture_output=True, check=True
    ).stdout


def header_length(blob: bytes) -> int:
    """Return the length of an age header, read the way the age spec lays it out."""
    lines = blob.split(b"\n")
    length = 0
    for line in lines:
        length += len(line) + 1
        if line.startswith(b"--- "):
            return length
    raise AssertionError("no header MAC line")


# Keys


def test_parse_recipients_keeps_valid_keys_once_and_skips_comments(keys):
    text = f"# backups\n\n{keys[0].recipient}\n  {keys[1].recipient}  \n{keys[0].recipient}\n"
    assert parse_recipients(text) == [keys[0].recipient, keys[1].recipient]


def test_parse_recipients_refuses_an_ssh_key_naming_its_line(keys):
    lines = [keys[0].recipient, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 me@host"]
    with pytest.raises(KeyFileError, match=r"^Recipient 2 is an ssh key \(ssh-ed25519\)"):
        parse_recipients(lines)


def test_parse_recipients_refuses_a_private_key_without_echoing_it(keys):
    secret = next(
        line for line in keys[0].path.read_text().splitlines() if line.startswith("AGE-SECRET")
    )
    with pytest.raises(KeyFileError) as caught:
        parse_recipients(["# ours", secret], origin="/etc/backup/recipients.txt")
    message = str(caught.value)
    assert message.startswith("Line 2 of /etc/backup/recipients.txt is a private key")
    assert secret not in message and secret[20:40] not in message


def test_parse_recipients_refuses_a_damaged_key(keys):
    damaged = keys[0].recipient[:-1] + ("q" if keys[0].recipient[-1] != "q" else "p")
    with pytest.raises(KeyFileError, match=r"^Recipient 1 is not an age X25519 recipient"):
        parse_recipients([damaged])


def test_load_recipients_file_reads_one_key_a_line(keys, tmp_path):
    path = tmp_path / "recipients.txt"
    path.write_text(f"# team\n{keys[1].recipient}\n{keys[2].recipient}\n")
    assert load_recipients_file(path) == [keys[1].recipient, keys[2].recipient]
    path.write_text("# nobody yet\n")
    with pytest.raises(KeyFileError, match="lists no recipient"):
        load_recipients_file(path)


def test_load_identities_reads_age_keygen_files_joined_by_pathsep(keys, tmp_path):
    both = tmp_path / "both.txt"
    both.write_text(keys[1].path.read_text() + keys[2].path.read_text())
    both.chmod(0o400)
    identities = load_identities(f"{keys[0].path}{os.pathsep}{both}")
    assert [identity.recipient for identity in identities] == [k.recipient for k in keys]
    assert [identity.path for identity in identities] == [str(keys[0].path), str(both), str(both)]
    assert "AGE-SECRET" not in repr(identities)


def test_load_identities_refuses_a_file_other_users_can_read(keys, tmp_path):
    path = tmp_path / "open.txt"
    path.write_text(keys[0].path.read_text())
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"is open to other users \(mode 0644\).*chmod 600"):
        load_identities([path])


def test_load_identities_refuses_a_missing_file_and_a_bad_line(keys, tmp_path):
    with pytest.raises(KeyFileError, match="does not exist; check AGE_IDENTITY_FILE"):
        load_identities([tmp_path / "absent.txt"])
    path = tmp_path / "bad.txt"
    path.write_text(keys[0].path.read_text() + "hunter2 is my password\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as caught:
        load_identities([path])
    assert str(caught.value).startswith(f"Line 4 of the identity file {path} is not an age")
    assert "hunter2" not in str(caught.value)


def test_check_identities_names_the_recipients_and_the_files_tried(keys):
    carol = load_identities([keys[2].path])
    recorded = [keys[0].recipient, keys[1].recipient]
    with pytest.raises(NoMatchingIdentityError) as caught:
        check_identities("The archive A.tar.zst.age", recorded, carol)
    assert str(caught.value) == (
        f"The archive A.tar.zst.age is encrypted to {fingerprint(keys[0].recipient)}, "
        f"{fingerprint(keys[1].recipient)}; none of the identities in {keys[2].path} can open "
        "it. Set AGE_IDENTITY_FILE to a file holding the private key of one of those recipients."
    )
    check_identities("The archive A.tar.zst.age", recorded, load_identities([keys[1].path]))


def test_fingerprint_is_short_and_keeps_both_ends(keys):
    recipient = keys[0].recipient
    short = fingerprint(recipient)
    assert len(short) < 20 and short.startswith(recipient[:10]) and short.endswith(recipient[-6:])


# Round trips


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK])
def test_streaming_round_trip_decrypts_with_the_age_cli(keys, mode, size):
    data = os.urandom(size)
    blob = encrypt_stream(data, [keys[0].recipient], mode=mode)
    assert age_decrypt(blob, keys[0]) == data
    identities = load_identities([keys[0].path])
    assert decrypt_stream(blob, identities, mode=mode, size=len(blob)) == data


@pytest.mark.parametrize("mode", MODES)
def test_fifty_mib_of_random_bytes_round_trip(keys, mode, tmp_path):
    data = os.urandom(50 << 20)
    archive = tmp_path / "big.age"
    with open(archive, "wb") as file:
        hashed = _HashingWriter(file)
        with EncryptingWriter(hashed, [keys[0].recipient], mode=mode) as writer:
            for start in range(0, len(data), 1 << 20):
                writer.write(data[start : start + (1 << 20)])
    stored = archive.read_bytes()
    assert hashed.hexdigest() == hashlib.sha256(stored).hexdigest()
    assert hashed.size == len(stored)
    assert hashlib.sha256(age_decrypt(stored, keys[0])).digest() == hashlib.sha256(data).digest()
    identities = load_identities([keys[0].path])
    with open(archive, "rb", buffering=0) as file:
        reader = DecryptingReader(file, identities, mode=mode, size=len(stored))
        digest = hashlib.sha256()
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
        reader.close()
    assert digest.digest() == hashlib.sha256(data).digest()


def test_engine_tar_zstd_stream_extracts_with_age_zstd_and_tar(keys, tmp_path):
    source = make_tree(tmp_path / "source")
    archive = tmp_path / "A.tar.zst.age"
    spool = EntrySpool(tmp_path)
    with open(archive, "wb") as file:
        hashed = _HashingWriter(file)
        with EncryptingWriter(hashed, [keys[0].recipient]) as encrypted:
            stream = compressor("zstd", encrypted)
            open_source("directory", str(source)).stream(Output(stream, spool, Hooks()))
            stream.close()
    spool.close()
    sidecar = subprocess.run(
        ["sha256sum", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert sidecar == hashed.hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(
        f"age -d -i '{keys[0].path}' < '{archive}' | zstd -d | tar -xf - -C '{dest}'",
        shell=True,
        check=True,
    )
    listed = subprocess.run(
        ["diff", "-r", "--no-dereference", str(source), str(dest)], capture_output=True
    )
    assert listed.returncode == 0, listed.stdout.decode(errors="replace")

    # And back through the reader the restore uses: stored bytes -> hash -> decrypt -> zstd.
    identities = load_identities([keys[0].path])
    with open(archive, "rb", buffering=0) as file:
        hashing = _HashingReader(file)
        plain = DecryptingReader(hashing, identities, size=archive.stat().st_size)
        payload = decompressor("zstd", plain).read()
        plain.close()
    expected = subprocess.run(
        f"age -d -i '{keys[0].path}' < '{archive}' | zstd -d",
        shell=True,
        check=True,
        capture_output=True,
    ).stdout
    assert payload == expected
    assert hashing.sha.hexdigest() == sidecar


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("armor", [False, True])
def test_files_the_age_cli_encrypts_decrypt_with_the_reader(keys, tmp_path, mode, armor):
    data = os.urandom(3 * BLOCK + 5)
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# two of us\n{keys[0].recipient}\n{keys[1].recipient}\n")
    argv = ["age", "-R", str(recipients)] + (["-a"] if armor else [])
    blob = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
    assert decrypt_stream(blob, load_identities([keys[1].path]), mode=mode) == data


def test_each_of_several_recipients_decrypts_alone(keys):
    data = os.urandom(2 * BLOCK + 100)
    blob = encrypt_stream(data, [key.recipient for key in keys])
    for key in keys:
        assert decrypt_stream(blob, load_identities([key.path])) == data
        assert age_decrypt(blob, key) == data


def test_small_objects_round_trip_and_open_with_the_age_cli(keys):
    manifest = b'{"format": 1, "entries": []}'
    blob = encrypt_bytes(manifest, [keys[0].recipient, keys[1].recipient])
    assert age_decrypt(blob, keys[1]) == manifest
    assert decrypt_bytes(blob, load_identities([keys[0].path])) == manifest
    with pytest.raises(NoMatchingIdentityError, match="^The manifest M is encrypted to "):
        decrypt_bytes(
            blob,
            load_identities([keys[2].path]),
            what="The manifest M",
            recipients=[keys[0].recipient, keys[1].recipient],
        )


# Failures


@pytest.fixture(scope="module")
def sealed(keys) -> bytes:
    """Five full 64 KiB blocks and a short one, encrypted to alice."""
    return encrypt_stream(os.urandom(5 * BLOCK + 1000), [keys[0].recipient])


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_identity_names_the_recipients_and_the_identity_files(keys, sealed, mode):
    bob = load_identities([keys[1].path])
    with pytest.raises(NoMatchingIdentityError) as caught:
        decrypt_stream(sealed, bob, mode=mode, what="The archive X", recipients=[keys[0].recipient])
    assert str(caught.value).startswith(
        f"The archive X is encrypted to {fingerprint(keys[0].recipient)}; none of the "
        f"identities in {keys[1].path} can open it."
    )


def test_no_identity_at_all_says_to_set_age_identity_file(keys, sealed):
    with pytest.raises(NoMatchingIdentityError, match="set AGE_IDENTITY_FILE on this host"):
        DecryptingReader(io.BytesIO(sealed), [], what="The archive X")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", ["mid-block", "block-boundary", "header", "nonce"])
def test_a_truncated_archive_says_it_ends_early(keys, sealed, mode, cut):
    header = header_length(sealed)
    at = {
        "mid-block": header + 16 + 2 * STORED_BLOCK + 500,
        "block-boundary": header + 16 + 3 * STORED_BLOCK,
        "header": header - 20,
        "nonce": header + 7,
    }[cut]
    identities = load_identities([keys[0].path])
    with pytest.raises(TruncatedArchiveError, match=r"^The archive X is truncated: "):
        decrypt_stream(sealed[:at], identities, mode=mode, what="The archive X", size=len(sealed))


def test_a_truncation_without_the_recorded_size_still_says_truncated(keys, sealed):
    header = header_length(sealed)
    identities = load_identities([keys[0].path])
    for at in (header + 16 + 2 * STORED_BLOCK + 500, header + 16 + 3 * STORED_BLOCK):
        with pytest.raises(TruncatedArchiveError, match=r"^The archive X is truncated"):
            decrypt_stream(sealed[:at], identities, what="The archive X")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block", [0, 2, 5])
def test_a_flipped_byte_says_where_authentication_failed(keys, sealed, mode, block):
    header = header_length(sealed)
    start = header + 16 + block * STORED_BLOCK
    damaged = bytearray(sealed)
    damaged[start + 300] ^= 0x01
    identities = load_identities([keys[0].path])
    reader = DecryptingReader(
        io.BytesIO(bytes(damaged)), identities, mode=mode, what="The archive X", size=len(sealed)
    )
    got = bytearray()
    with pytest.raises(AlteredArchiveError) as caught:
        while chunk := reader.read(1 << 20):
            got += chunk
    reader.close()
    assert str(caught.value) == (
        f"The archive X was altered: age authentication failed at byte {start} (the 64 KiB "
        "block that starts there)."
    )
    # Only authenticated plaintext came out: the blocks before the damaged one.
    assert len(got) == block * BLOCK


def test_a_flipped_byte_in_the_header_says_the_header_was_altered(keys, sealed):
    header = header_length(sealed)
    damaged = bytearray(sealed)
    damaged[header - 10] ^= 0x01  # inside the header's MAC
    with pytest.raises(AlteredArchiveError, match=r"^The archive X was altered: its age header"):
        decrypt_stream(bytes(damaged), load_identities([keys[0].path]), what="The archive X")


def test_a_file_that_is_not_age_says_so(keys, tmp_path):
    plain = subprocess.run(["zstd", "-c"], input=b"x" * 1000, capture_output=True).stdout
    with pytest.raises(NotEncryptedError, match=r"^The archive X is not age-encrypted"):
        decrypt_stream(plain, load_identities([keys[0].path]), what="The archive X")


# The pipeline around the worker: failures on either side, cancellation


class FullDisk:
    """An archive file that takes `room` bytes, then fails like a full disk."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.size = 0

    def write(self, data) -> int:
        if self.size + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.size += len(data)
        return len(data)


def threads_settle(before: int) -> bool:
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count() == before


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_a_failing_archive_file_fails_the_next_write_with_the_same_error(keys, mode):
    before = threading.active_count()
    piece = os.urandom(1 << 20)
    writer = EncryptingWriter(FullDisk(3 << 20), [keys[0].recipient], mode=mode)
    with pytest.raises(OSError) as caught:
        for _ in range(200):  # far more than the pipe holds: the failure must surface
            writer.write(piece)
    assert caught.value.errno == errno.ENOSPC
    writer.abort()
    assert threads_settle(before)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_a_failing_producer_aborts_and_leaves_no_complete_age_file(keys, mode):
    before = threading.active_count()
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError, match="source vanished"),
        EncryptingWriter(out, [keys[0].recipient], mode=mode) as writer,
    ):
        for index in range(20):
            writer.write(os.urandom(100_000))
            if index == 10:
                raise RuntimeError("source vanished")
    assert threads_settle(before)
    refused = subprocess.run(["age", "-d", "-i", str(keys[0].path)], input=out.getvalue())
    assert refused.returncode != 0


class SlowDisk:
    """An archive file that takes a tenth of a second per write."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data) -> int:
        self.writes += 1
        time.sleep(0.1)
        return len(data)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_cancelling_mid_stream_returns_promptly_while_the_disk_is_slow(keys, mode):
    before = threading.active_count()
    disk = SlowDisk()
    with (
        pytest.raises(Cancelled),
        EncryptingWriter(disk, [keys[0].recipient], mode=mode) as writer,
    ):
        # Fill the pipe: a megabyte is waiting, about 16 writes (1.6 s) of this disk.
        for _ in range(16):
            writer.write(os.urandom(64 << 10))
        cancelled_at = time.monotonic()
        raise Cancelled("The run was cancelled.")
    # Only the write in progress is waited for, not the megabyte behind it.
    assert time.monotonic() - cancelled_at < 1.0
    assert disk.writes < 8
    assert threads_settle(before)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_closing_the_reader_mid_stream_stops_reading_the_archive(keys, mode, tmp_path):
    blob = encrypt_stream(os.urandom(20 << 20), [keys[0].recipient])
    path = tmp_path / "a.age"
    path.write_bytes(blob)
    before = threading.active_count()
    with open(path, "rb", buffering=0) as file:
        hashing = _HashingReader(file)
        reader = DecryptingReader(hashing, load_identities([keys[0].path]), mode=mode)
        assert len(reader.read(1000)) > 0
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 5
        assert threads_settle(before)
        # The caller owns the file again: hashing the rest gives the whole file's sha256.
        stopped_at = hashing.count
        assert stopped_at < len(blob)
        while hashing.read(1 << 20):
            pass
    assert hashing.sha.hexdigest() == hashlib.sha256(blob).hexdigest()


class BrokenDisk(io.RawIOBase):
    """An archive file whose reads fail after `good` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data = io.BytesIO(data)
        self._good = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._data.tell() >= self._good:
            raise OSError(errno.EIO, "Input/output error")
        return self._data.readinto(memoryview(buffer)[: self._good - self._data.tell()])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_a_failing_archive_read_is_reported_as_such(keys, sealed, mode):
    reader = DecryptingReader(
        BrokenDisk(sealed, 2 * STORED_BLOCK),
        load_identities([keys[0].path]),
        mode=mode,
        what="The archive X",
    )
    with pytest.raises(ArchiveError, match=r"^The archive X cannot be read: Input/output error"):
        while reader.read(1 << 20):
            pass
    reader.close()


@pytest.mark.timeout(30)
def test_the_decrypting_child_gets_its_keys_through_neither_argv_nor_environment(keys, sealed):
    identities = load_identities([keys[0].path])
    secret = next(
        line for line in keys[0].path.read_text().splitlines() if line.startswith("AGE-SECRET")
    )
    reader = DecryptingReader(io.BytesIO(sealed), identities, mode=PROCESS)
    try:
        child = reader._child
        for name in ("cmdline", "environ"):
            assert secret.encode() not in Path(f"/proc/{child.pid}/{name}").read_bytes()
        assert len(reader.read()) == 5 * BLOCK + 1000
    finally:
        reader.close()


# Memory

_STREAM_512_MIB = textwrap.dedent(
    """
    import hashlib, os, sys
    from backups.engine.crypto import DecryptingReader, EncryptingWriter, load_identities

    def peak_kib():
        # The high-water mark of this process's own memory: getrusage's ru_maxrss would
        # also count the parent's, which a child inherits across fork and exec on Linux.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    mode, recipient, key, path = sys.argv[1:]
    block = os.urandom(1 << 20)
    base = peak_kib()
    expected = hashlib.sha256()
    with open(path, "wb") as file, EncryptingWriter(file, [recipient], mode=mode) as writer:
        for index in range(512):
            piece = index.to_bytes(8, "big") + block[8:]
            expected.update(piece)
            writer.write(piece)
    got = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        reader = DecryptingReader(file, load_identities([key]), mode=mode)
        while chunk := reader.read(1 << 20):
            got.update(chunk)
        reader.close()
    assert got.digest() == expected.digest()
    print(base, peak_kib())
    """
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", MODES)
def test_streaming_512_mib_keeps_memory_flat(keys, mode, tmp_path):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _STREAM_512_MIB,
            mode,
            keys[0].recipient,
            str(keys[0].path),
            str(tmp_path / "big.age"),
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    base_kib, peak_kib = map(int, result.stdout.split())
    # 512 MiB went through; the pipe (1 MiB), age's 64 KiB blocks and a few 1 MiB pieces
    # are all that should be held at once.
    assert peak_kib - base_kib < 24 * 1024, (base_kib, peak_kib)


def test_big_or_unknown_streams_run_in_a_process_small_ones_in_a_thread():
    assert stream_mode(None) == PROCESS
    assert stream_mode(1 << 30) == PROCESS
    assert stream_mode(100_000) == THREAD


def test_a_truncated_small_object_says_truncated(keys):
    blob = encrypt_bytes(os.urandom(200_000), [keys[0].recipient])
    identities = load_identities([keys[0].path])
    with pytest.raises(TruncatedArchiveError, match=r"^The manifest M is truncated"):
        decrypt_bytes(blob[:-1000], identities, what="The manifest M")
    damaged = bytearray(blob)
    damaged[-1000] ^= 0x01
    with pytest.raises(AlteredArchiveError, match=r"^The manifest M was altered"):
        decrypt_bytes(bytes(damaged), identities, what="The manifest M", size=len(blob))


def test_identity_paths_split_the_setting_and_skip_empty_parts(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    assert identity_paths(f"{first}{os.pathsep}{os.pathsep}{second}") == [first, second]
    assert identity_paths(first) == [first]
    assert identity_paths("") == [] and identity_paths(None) == []
