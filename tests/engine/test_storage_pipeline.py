"""Backups written to and restored from a local folder or S3 (SeaweedFS), plain or with age.

Every round trip runs four ways: (local folder, S3 bucket) x (plain, encrypted to an age
recipient). Keys are made by the real age-keygen; what is stored is checked with the tools
a person would use without this project: an S3 client, sha256sum, age, zstd and tar.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backups.engine.backup import BackupRequest, run_backup
from backups.engine.crypto import fingerprint, load_identities
from backups.engine.crypto.keys import Identity
from backups.engine.errors import (
    AlteredArchiveError,
    ArchiveError,
    Cancelled,
    EngineError,
    KeyFileError,
    NoMatchingIdentityError,
    StorageError,
    TruncatedArchiveError,
)
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import iter_manifest, load_manifest
from backups.engine.restore import RestoreRequest, restore_archive
from backups.engine.storage import LocalStorage, S3Storage, Storage
from backups.engine.verify import restore_drill, verify_archive
from tests.engine.restore_helpers import count_rows, leftovers, make_database, snapshot
from tests.s3server import BUCKET, SeaweedServer

from .conftest import make_tree

REPO = Path(__file__).resolve().parents[2]
SLUG = "my-source"
STEM = "20260101T000000Z-42"
FAKE_KUBECTL = Path(__file__).parent / "fake_kubectl"
PG_SERVER = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-w"]
PG_BASE = "postgresql://postgres@127.0.0.1:5432"
MiB = 1 << 20


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
    folder = tmp_path_factory.mktemp("age-keys")
    return [Key(folder, name) for name in ("alice", "bob")]


@dataclass
class Place:
    """Where a test's backups go: a storage, and a local scratch folder for the run."""

    storage: Storage
    scratch: Path
    server: SeaweedServer | None = None

    @property
    def is_s3(self) -> bool:
        return self.server is not None

    def fetch(self, dest: Path) -> Path:
        """Return a local folder holding the source folder's files, as a person gets them."""
        if not self.is_s3:
            return self.storage.root / SLUG
        dest.mkdir(parents=True, exist_ok=True)
        client = self.server.client()
        prefix = f"{self.storage.prefix}/{SLUG}/"
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        for item in listed:
            client.download_file(BUCKET, item["Key"], str(dest / item["Key"][len(prefix) :]))
        return dest

    def names(self) -> list[str]:
        """Return the names of the complete files in the source folder."""
        return sorted(entry.name for entry in self.storage.list(SLUG))

    def replace(self, key: str, data: bytes) -> None:
        """Put other bytes under `key`, as damage or an attacker would."""
        if self.is_s3:
            self.storage.put_atomic(key, data)
        else:
            self.storage.path(key).write_bytes(data)


def s3_storage(server: SeaweedServer, prefix_env: str, **settings) -> S3Storage:
    return S3Storage(
        settings.pop("bucket", BUCKET),
        prefix=settings.pop("prefix", f"t-{secrets.token_hex(6)}"),
        endpoint_url=server.endpoint,
        credentials_env=prefix_env,
        **settings,
    )


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> Place:
    """The same tests against a local archive folder and against an S3 bucket."""
    scratch = tmp_path / "scratch"
    if request.param == "local":
        return Place(LocalStorage(tmp_path / "archives"), scratch)
    server = request.getfixturevalue("s3_server")
    return Place(s3_storage(server, request.getfixturevalue("s3_env")), scratch, server)


@dataclass
class Sealing:
    """How archives are written and read: the recipients, and the identities at hand."""

    recipients: list[str] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)

    @property
    def suffix(self) -> str:
        return ".age" if self.recipients else ""


@pytest.fixture(params=["plain", "age"])
def sealing(request, keys) -> Sealing:
    """Plain archives, and archives encrypted to alice (whose identity restores them)."""
    if request.param == "plain":
        return Sealing()
    return Sealing([keys[0].recipient], load_identities([keys[0].path]))


def backup(place: Place, sealing: Sealing, kind: str, location: str, **options):
    hooks = options.pop("hooks", None) or RecordingHooks()
    request = BackupRequest(
        kind=kind,
        location=location,
        stem=STEM,
        storage=place.storage,
        folder=SLUG,
        scratch_dir=place.scratch,
        recipients=sealing.recipients,
        manifest_header={
            "run": 42,
            "source": {"name": "files", "kind": kind, "location": location},
            "started_at": "2026-01-01T00:00:00+00:00",
        },
        **options,
    )
    return run_backup(request, hooks)


def restore_request(place, sealing, result, kind, target, **options) -> RestoreRequest:
    options.setdefault("identities", sealing.identities)
    options.setdefault("recipients", result.recipients)
    return RestoreRequest(
        archive=result.archive_key,
        manifest=result.manifest_key,
        storage=place.storage,
        kind=kind,
        target=str(target),
        **options,
    )


def verify(place, sealing, result, kind, checks=("checksum", "contents"), **options):
    options.setdefault("identities", sealing.identities)
    options.setdefault("recipients", result.recipients)
    return verify_archive(
        archive=result.archive_key,
        manifest=result.manifest_key,
        storage=place.storage,
        kind=kind,
        checks=checks,
        hooks=RecordingHooks(),
        **options,
    )


def one_sentence(text: str) -> bool:
    return "\n" not in text and text.rstrip(")").endswith(".") and "Traceback" not in text


# Round trips, four ways


def test_a_directory_round_trips_whole_and_by_path_and_verifies(place, sealing, tree, tmp_path):
    result = backup(place, sealing, "directory", str(tree))

    archive = f"{STEM}.tar.zst{sealing.suffix}"
    manifest = f"{STEM}.manifest.json{sealing.suffix}"
    assert result.archive_key == f"{SLUG}/{archive}"
    assert result.manifest_key == f"{SLUG}/{manifest}"
    assert result.locator == place.storage.locator(result.archive_key)
    assert place.names() == sorted([archive, f"{archive}.sha256", manifest])
    assert place.storage.pending() == []
    assert result.encrypted == bool(sealing.recipients)

    whole = tmp_path / "whole"
    restored = restore_archive(
        restore_request(place, sealing, result, "directory", whole), RecordingHooks()
    )
    assert snapshot(whole) == snapshot(tree)
    assert [check["ok"] for check in restored.checks] == [True, True]

    some = tmp_path / "some"
    restore_archive(
        restore_request(place, sealing, result, "directory", some, paths=["sub"]), RecordingHooks()
    )
    assert os.listdir(some) == ["sub"]
    assert snapshot(some / "sub") == snapshot(tree / "sub")

    checks = verify(place, sealing, result, "directory")
    assert [(check["name"], check["ok"]) for check in checks] == [
        ("checksum", True),
        ("contents", True),
    ], checks
    assert restore_drill(
        archive=result.archive_key,
        manifest=result.manifest_key,
        storage=place.storage,
        kind="directory",
        scratch_dir=tmp_path / "drills",
        hooks=RecordingHooks(),
        identities=sealing.identities,
        recipients=result.recipients,
    )["ok"]

    # The checksum file checks out with sha256sum alone, wherever the files came from.
    folder = place.fetch(tmp_path / "fetched")
    check = subprocess.run(
        ["sha256sum", "-c", f"{archive}.sha256"], cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout == f"{archive}: OK\n", check.stderr


def test_a_sqlite_database_round_trips(place, sealing, tmp_path):
    database = make_database(tmp_path / "app.db", rows=500)

    result = backup(place, sealing, "sqlite", str(database))

    assert result.archive_key.endswith(f".tar.zst{sealing.suffix}")
    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    restore_archive(restore_request(place, sealing, result, "sqlite", target), RecordingHooks())
    assert count_rows(target) == 500
    checks = verify(place, sealing, result, "sqlite", ("checksum", "contents", "database"))
    assert all(check["ok"] for check in checks), checks
    # The snapshot the run kept while it worked is gone from the scratch folder.
    assert os.listdir(place.scratch) == []


def _postgres_available() -> bool:
    if not shutil.which("pg_dump") or not shutil.which("pg_restore"):
        return False
    probe = subprocess.run(
        ["psql", *PG_SERVER, "-d", "postgres", "-Atc", "SELECT 1"], capture_output=True
    )
    return probe.returncode == 0


def _psql(database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", *PG_SERVER, "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def pg_database():
    """A throw-away database with a table of 5,000 rows, and a name for its restored copy."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"bk_pipeline_{secrets.token_hex(4)}"
    copy = f"{name}_copy"
    subprocess.run(["createdb", *PG_SERVER, name], check=True)
    try:
        _psql(name, "CREATE TABLE items(id int PRIMARY KEY, note text)")
        _psql(name, "INSERT INTO items SELECT g, 'note ' || g FROM generate_series(1, 5000) g")
        yield name, copy
    finally:
        for database in (name, copy):
            subprocess.run(["dropdb", *PG_SERVER, "--if-exists", database], check=False)


def test_a_postgres_database_round_trips(place, sealing, pg_database, tmp_path):
    name, copy = pg_database

    result = backup(place, sealing, "postgres", f"{PG_BASE}/{name}")

    assert result.archive_key.endswith(f".pgdump.zst{sealing.suffix}")
    restore_archive(
        restore_request(place, sealing, result, "postgres", f"{PG_BASE}/{copy}"), RecordingHooks()
    )
    assert _psql(copy, "SELECT count(*), max(note) FROM items") == "5000|note 999"
    checks = verify(place, sealing, result, "postgres")
    assert all(check["ok"] for check in checks), checks


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """A stand-in cluster: pod prod/api-0 whose /var/lib/data holds the awkward tree."""
    root = tmp_path / "cluster"
    make_tree(root / "prod" / "api-0" / "var" / "lib" / "data")
    (root / "prod" / "api-0" / "var" / "restored").mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_KUBECTL}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_ROOT", str(root))
    monkeypatch.delenv("KUBECTL", raising=False)
    return root / "prod" / "api-0" / "var"


def test_a_pod_path_round_trips(place, sealing, cluster):
    result = backup(place, sealing, "kubernetes", "prod/api-0/app:/var/lib/data")

    target = "prod/api-0/app:/var/restored"
    restore_archive(restore_request(place, sealing, result, "kubernetes", target), RecordingHooks())
    assert snapshot(cluster / "restored") == snapshot(cluster / "lib" / "data")


# Failures part-way through


class CancelPastBytes(RecordingHooks):
    """Hooks that cancel the run once `limit` payload bytes were read, or run `action`."""

    def __init__(self, limit: int, action=None) -> None:
        super().__init__()
        self.limit = limit
        self.action = action
        self.done = 0

    def progress(self, progress) -> None:
        super().progress(progress)
        self.done = progress.bytes_done

    def check(self) -> None:
        if self.done < self.limit:
            return
        if self.action is None:
            raise Cancelled("Cancelled by a user.")
        action, self.action, self.limit = self.action, None, float("inf")
        action()


@pytest.fixture
def big_tree(tmp_path) -> Path:
    """Three incompressible files of 24 MiB: several parts of an S3 upload."""
    root = tmp_path / "big"
    root.mkdir()
    for index in range(3):
        (root / f"part{index}.bin").write_bytes(os.urandom(24 * MiB))
    return root


def test_a_backup_cancelled_mid_upload_leaves_no_object_and_no_upload(
    s3_server, s3_env, sealing, big_tree, tmp_path
):
    place = Place(s3_storage(s3_server, s3_env), tmp_path / "scratch", s3_server)

    with pytest.raises(Cancelled):
        backup(place, sealing, "directory", str(big_tree), hooks=CancelPastBytes(40 * MiB))

    assert place.names() == []
    assert place.storage.pending() == []
    assert os.listdir(place.scratch) == []


KILLED_CHILD = r"""
import sys, time
from pathlib import Path
from backups.engine.backup import BackupRequest, run_backup
from backups.engine.hooks import Hooks
from backups.engine.storage import S3Storage

endpoint, prefix, source, scratch, recipient = sys.argv[1:6]


class Slow(Hooks):
    def progress(self, progress):
        if progress.bytes_done >= 40 << 20:
            print("uploading", flush=True)
            time.sleep(600)


storage = S3Storage("backups", prefix=prefix, endpoint_url=endpoint, credentials_env="TEST_S3")
run_backup(
    BackupRequest(
        kind="directory", location=source, stem="20260101T000000Z-42", storage=storage,
        folder="my-source", scratch_dir=Path(scratch), recipients=[recipient] if recipient else [],
    ),
    Slow(),
)
"""


def test_a_backup_killed_mid_upload_leaves_only_an_upload_that_abort_removes(
    s3_server, s3_env, sealing, big_tree, tmp_path
):
    place = Place(s3_storage(s3_server, s3_env), tmp_path / "scratch", s3_server)
    recipient = sealing.recipients[0] if sealing.recipients else ""
    argv = [sys.executable, "-c", KILLED_CHILD, s3_server.endpoint, place.storage.prefix]
    child = subprocess.Popen(
        [*argv, str(big_tree), str(place.scratch), recipient],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        assert child.stdout.readline() == b"uploading\n"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    assert place.names() == []
    pending = place.storage.pending()
    assert [item.key for item in pending] == [f"{SLUG}/{STEM}.tar.zst{sealing.suffix}"]
    place.storage.abort(pending[0])
    assert place.storage.pending() == []


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "age"])
def test_the_s3_server_killed_mid_backup_fails_the_run_with_a_sentence(
    s3_env, sealed, keys, big_tree, tmp_path
):
    server = SeaweedServer(tmp_path / "weed").start()
    try:
        server.create_bucket(BUCKET)
        storage = s3_storage(server, s3_env, prefix="p", max_attempts=2, read_timeout=5)
        place = Place(storage, tmp_path / "scratch", server)
        sealing = Sealing([keys[0].recipient] if sealed else [])
        killed = []

        def kill() -> None:
            server.kill()
            killed.append(time.monotonic())

        with pytest.raises(StorageError) as caught:
            backup(
                place, sealing, "directory", str(big_tree), hooks=CancelPastBytes(30 * MiB, kill)
            )

        assert killed and time.monotonic() - killed[0] < 120
        message = str(caught.value)
        print(f"{time.monotonic() - killed[0]:.1f} s after the kill: {message}")
        assert server.endpoint in message and one_sentence(message), message
        assert "Cannot reach the S3 endpoint" in message or "broke" in message, message

        server.start()
        assert place.names() == []
        pending = storage.pending()
        assert [item.key for item in pending] == [f"{SLUG}/{STEM}.tar.zst{sealing.suffix}"]
        storage.abort(pending[0])
        assert storage.pending() == []
    finally:
        server.stop()


# Encryption: what a person can do with the files, and what a host without the key can


def test_encrypted_files_open_with_age_zstd_and_tar_and_check_with_sha256sum(
    place, keys, tree, tmp_path
):
    # Backing up needs the public key only: no identity is loaded anywhere here.
    result = backup(place, Sealing([keys[0].recipient, keys[1].recipient]), "directory", str(tree))

    folder = place.fetch(tmp_path / "fetched")
    archive = f"{STEM}.tar.zst.age"
    check = subprocess.run("sha256sum -c *.sha256", shell=True, cwd=folder, capture_output=True)
    assert check.returncode == 0 and check.stdout == f"{archive}: OK\n".encode(), check.stderr
    with open(folder / archive, "rb") as stored:
        assert stored.read(22) == b"age-encryption.org/v1\n"

    for key in keys:
        out = tmp_path / f"out-{key.path.stem}"
        out.mkdir()
        subprocess.run(
            f"age -d -i '{key.path}' < '{folder / archive}' | zstd -d | tar -xf - -C '{out}'",
            shell=True,
            check=True,
        )
        assert snapshot(out) == snapshot(tree)
    plain = subprocess.run(
        ["age", "-d", "-i", str(keys[1].path), str(folder / f"{STEM}.manifest.json.age")],
        check=True,
        capture_output=True,
    ).stdout
    manifest = json.loads(plain)
    assert manifest["encryption"] == {
        "format": "age",
        "recipients": [keys[0].recipient, keys[1].recipient],
    }
    assert manifest["archive"]["name"] == archive
    assert manifest["archive"]["sha256"] == result.sha256
    assert manifest["archive"]["size"] == result.size == (folder / archive).stat().st_size


def test_a_host_without_the_identity_checksums_but_neither_reads_nor_restores(
    place, keys, tree, tmp_path
):
    result = backup(place, Sealing([keys[0].recipient]), "directory", str(tree))
    keyless = Sealing()

    checks = verify(place, keyless, result, "directory")
    assert checks[0]["name"] == "checksum" and checks[0]["ok"], checks
    assert checks[1]["name"] == "contents"
    assert not checks[1]["ok"] and checks[1]["skipped"]
    detail = checks[1]["detail"]
    assert "the content checks need the private key (AGE_IDENTITY_FILE)" in detail
    assert fingerprint(keys[0].recipient) in detail and one_sentence(detail), detail

    before = snapshot(tree)
    for target, in_place in ((tmp_path / "new", False), (tree, True)):
        request = restore_request(
            place,
            keyless,
            result,
            "directory",
            target,
            in_place=in_place,
            state_dir=tmp_path / "state",
        )
        with pytest.raises(NoMatchingIdentityError) as caught:
            restore_archive(request, RecordingHooks())
        message = str(caught.value)
        assert fingerprint(keys[0].recipient) in message and "AGE_IDENTITY_FILE" in message
        assert one_sentence(message), message
    assert not (tmp_path / "new").exists()
    assert snapshot(tree) == before
    assert leftovers(tree.parent) == []


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize(
    "damage",
    [
        "wrong identity",
        "recipients unknown, wrong identity",
        "archive truncated",
        "archive byte flipped",
        "manifest truncated",
        "manifest byte flipped",
    ],
)
def test_a_bad_key_or_damaged_age_file_restores_nothing_over_live_data(
    place, keys, tmp_path, damage
):
    tree = make_tree(tmp_path / "live")
    (tree / "big.bin").write_bytes(os.urandom(3 * MiB))
    result = backup(place, Sealing([keys[0].recipient]), "directory", str(tree))
    identities = load_identities([keys[0].path])
    recipients = result.recipients
    manifest = result.manifest_key
    if "wrong identity" in damage:
        identities = load_identities([keys[1].path])
        if "unknown" in damage:
            recipients = []
    elif damage.startswith("archive"):
        data = place.storage.read_bytes(result.archive_key, limit=1 << 30)
        change = _truncated if "truncated" in damage else _flipped
        place.replace(result.archive_key, change(data))
    else:
        data = place.storage.read_bytes(manifest, limit=1 << 30)
        place.replace(manifest, _truncated(data) if "truncated" in damage else _flipped(data))
    (tree / "changed-since.txt").write_text("live data written after the backup\n")
    before = snapshot(tree)

    request = restore_request(
        place,
        Sealing(identities=identities),
        result,
        "directory",
        tree,
        in_place=True,
        recipients=recipients,
        state_dir=tmp_path / "state",
    )
    with pytest.raises(ArchiveError) as caught:
        restore_archive(request, RecordingHooks())

    message = str(caught.value)
    assert one_sentence(message.split(" (")[0] + "."), message
    if "wrong identity" in damage:
        assert isinstance(caught.value, NoMatchingIdentityError)
        assert str(keys[1].path) in message
        if recipients:
            assert fingerprint(keys[0].recipient) in message
    elif damage == "archive truncated":
        assert "truncated" in message
    elif damage == "archive byte flipped":
        assert "altered" in message and "age authentication failed at byte" in message
    elif damage == "manifest truncated":
        assert isinstance(caught.value, TruncatedArchiveError)
        assert message.startswith(f"The manifest {place.storage.locator(manifest)} is truncated")
    else:
        # A manifest is one 64 KiB block of age: damage there cannot be told from a cut.
        assert isinstance(caught.value, AlteredArchiveError | TruncatedArchiveError)
        assert message.startswith(f"The manifest {place.storage.locator(manifest)}")
        assert "altered" in message
    assert snapshot(tree) == before
    assert leftovers(tmp_path) == []


def test_a_bad_recipient_is_refused_before_anything_is_written(place, keys, tree):
    with pytest.raises(KeyFileError, match="private key"):
        backup(place, Sealing([keys[0].path.read_text().splitlines()[-1]]), "directory", str(tree))
    with pytest.raises(KeyFileError, match="not an age X25519 recipient"):
        backup(place, Sealing(["age1notakey"]), "directory", str(tree))

    assert place.names() == []
    assert place.storage.pending() == []


def test_a_local_path_request_still_reads_an_encrypted_backup(keys, tree, tmp_path):
    dest = tmp_path / "archives" / SLUG
    result = run_backup(
        BackupRequest(
            kind="directory",
            location=str(tree),
            dest_dir=dest,
            stem=STEM,
            recipients=[keys[0].recipient],
        ),
        RecordingHooks(),
    )
    assert result.archive == dest / f"{STEM}.tar.zst.age"
    assert result.manifest == dest / f"{STEM}.manifest.json.age"

    out = tmp_path / "out"
    restore_archive(
        RestoreRequest(
            archive=result.archive,
            manifest=result.manifest,
            kind="directory",
            target=str(out),
            identities=load_identities([keys[0].path]),
        ),
        RecordingHooks(),
    )
    assert snapshot(out) == snapshot(tree)


def test_a_database_snapshot_of_an_encrypted_backup_leaves_no_plaintext_behind(
    place, keys, tmp_path
):
    database = make_database(tmp_path / "app.db", rows=50)
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO projects (name) VALUES ('a secret project name')")
    db.close()

    backup(place, Sealing([keys[0].recipient]), "sqlite", str(database))

    folder = place.fetch(tmp_path / "fetched")
    for name in os.listdir(folder):
        assert b"a secret project name" not in (folder / name).read_bytes(), name
    assert os.listdir(place.scratch) == []


def test_an_encrypted_manifest_is_read_whole_or_line_by_line_with_the_identity(place, keys, tree):
    result = backup(place, Sealing([keys[0].recipient]), "directory", str(tree))
    stored = result.stored(result.manifest_key)
    identities = load_identities([keys[1].path, keys[0].path])

    whole = load_manifest(stored, identities=identities, recipients=result.recipients)
    header, entries = iter_manifest(stored, identities=identities, recipients=result.recipients)

    assert [entry.path for entry in entries] == [entry.path for entry in whole.entries]
    assert header["encryption"] == {"format": "age", "recipients": [keys[0].recipient]}
    assert header["archive"]["sha256"] == whole.archive_sha256 == result.sha256
    assert whole.total_files == result.files
    for read in (load_manifest, iter_manifest):
        with pytest.raises(NoMatchingIdentityError, match=fingerprint(keys[0].recipient)):
            read(stored, recipients=result.recipients)


def test_a_backup_to_s3_without_a_scratch_folder_is_refused_with_a_sentence(
    s3_server, s3_env, tree
):
    storage = s3_storage(s3_server, s3_env)
    request = BackupRequest(
        kind="directory", location=str(tree), stem=STEM, storage=storage, folder=SLUG
    )
    with pytest.raises(EngineError, match=r"needs a local scratch folder"):
        run_backup(request, RecordingHooks())
    assert list(storage.list(SLUG)) == []
