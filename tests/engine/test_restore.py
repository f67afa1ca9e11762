"""Restoring a directory backup: faithful, verified while read, staged, then swapped."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from backups.engine.errors import (
    ArchiveError,
    Cancelled,
    FencedError,
    TargetError,
    UnsafeArchiveError,
)
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest
from backups.engine.restore import RestoreRequest, check_target, restore_archive
from backups.engine.restore import directory as directory_module
from backups.engine.restore import extract as extract_module
from tests.engine.restore_helpers import (
    NON_UTF8,
    CancelAfter,
    archive_of,
    gnu_tar,
    leftovers,
    make_tree,
    snapshot,
    stamp_tree,
    write_archive,
)


@pytest.fixture(params=["inline", "thread", "process"])
def reading(request, monkeypatch):
    """Every way an archive is decompressed: inline, in a thread, in the zstd program."""
    # The extraction looks the mode up in its own module.
    monkeypatch.setattr(extract_module, "reading_mode", lambda manifest: request.param)
    return request.param


@pytest.fixture
def source_tree(tmp_path):
    return make_tree(tmp_path / "source")


@pytest.fixture
def backup(source_tree, tmp_path):
    return archive_of(source_tree, tmp_path / "archives")


def request_for(backup, target, **options):
    return RestoreRequest(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="directory",
        target=str(target),
        **options,
    )


def test_restore_into_a_new_folder_is_faithful(reading, source_tree, backup, tmp_path):
    target = tmp_path / "restored"
    hooks = RecordingHooks()

    result = restore_archive(request_for(backup, target), hooks)

    assert snapshot(target) == snapshot(source_tree)
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(source_tree).st_mode)
    assert os.stat(target).st_mtime == os.stat(source_tree).st_mtime
    assert os.readlink(target / "link-absolute") == "/etc/hostname"
    assert os.readlink(target / "link-dangling") == "does/not/exist"
    assert (
        os.stat(target / "hardlink-to-readme").st_ino == os.stat(target / "docs/readme.txt").st_ino
    )
    assert (target / NON_UTF8).read_bytes() == b"latin-1 name\n"
    assert result.files == load_manifest(backup.manifest).total_files
    assert result.bytes == load_manifest(backup.manifest).total_bytes
    assert result.target == str(target)
    assert [check["name"] for check in result.checks] == ["checksum", "contents"]
    assert all(check["ok"] for check in result.checks)
    assert result.warnings == []
    assert leftovers(tmp_path) == []


def test_restore_output_matches_what_gnu_tar_extracts(backup, tmp_path):
    by_cli = tmp_path / "by-cli"
    by_cli.mkdir()
    subprocess.run(
        f"zstd -d < '{backup.archive}' | tar -xpf - -C '{by_cli}'", shell=True, check=True
    )

    restore_archive(request_for(backup, tmp_path / "ours"), RecordingHooks())

    assert snapshot(tmp_path / "ours") == snapshot(by_cli)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_restore_reads_gzip_and_uncompressed_archives(source_tree, tmp_path, compression):
    backup = archive_of(source_tree, tmp_path / "archives", compression=compression)

    restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert snapshot(tmp_path / "restored") == snapshot(source_tree)


def test_restore_into_an_existing_empty_folder(source_tree, backup, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()

    restore_archive(request_for(backup, target), RecordingHooks())

    assert snapshot(target) == snapshot(source_tree)
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_non_empty_folder_without_in_place(backup, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")

    with pytest.raises(TargetError, match="not empty"):
        check_target(request_for(backup, target))
    with pytest.raises(TargetError, match="not empty"):
        restore_archive(request_for(backup, target), RecordingHooks())

    assert os.listdir(target) == ["precious.txt"]
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_target_whose_parent_is_missing(backup, tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        check_target(request_for(backup, tmp_path / "missing" / "restored"))


def test_restore_refuses_a_relative_target(backup):
    with pytest.raises(TargetError, match="relative"):
        check_target(request_for(backup, "relative/folder"))


def test_restore_in_place_replaces_the_data_and_leaves_nothing_behind(
    source_tree, backup, tmp_path
):
    expected = snapshot(source_tree)
    (source_tree / "docs" / "readme.txt").unlink()
    (source_tree / "added-later.txt").write_text("not in the backup")
    (source_tree / "docs" / "big.bin").write_bytes(b"changed")

    restore_archive(request_for(backup, source_tree, in_place=True), RecordingHooks())

    assert snapshot(source_tree) == expected
    assert leftovers(tmp_path) == []


def test_restore_in_place_recreates_a_deleted_source(source_tree, backup, tmp_path):
    expected = snapshot(source_tree)
    subprocess.run(["rm", "-rf", str(tmp_path / "source")], check=True)

    restore_archive(request_for(backup, source_tree, in_place=True), RecordingHooks())

    assert snapshot(source_tree) == expected


def test_restore_refuses_a_damaged_archive_and_changes_nothing(
    reading, source_tree, backup, tmp_path
):
    data = bytearray(backup.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup.archive.write_bytes(bytes(data))
    before = snapshot(source_tree)

    with pytest.raises(ArchiveError, match="damaged"):
        restore_archive(request_for(backup, source_tree, in_place=True), RecordingHooks())

    assert snapshot(source_tree) == before
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_truncated_archive(reading, backup, tmp_path):
    data = backup.archive.read_bytes()
    backup.archive.write_bytes(data[: len(data) // 2])

    with pytest.raises(ArchiveError, match="truncated"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert not (tmp_path / "restored").exists()
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_file_that_does_not_match_the_manifest(source_tree, tmp_path):
    backup = archive_of(source_tree, tmp_path / "archives")
    data = json.loads(backup.manifest.read_text())
    for entry in data["entries"]:
        if entry["path"] == "script.sh":
            entry["sha256"] = "0" * 64
    backup.manifest.write_text(json.dumps(data))

    with pytest.raises(ArchiveError, match="script.sh"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert not (tmp_path / "restored").exists()
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_file_whose_size_differs_from_the_manifest(source_tree, tmp_path):
    backup = archive_of(source_tree, tmp_path / "archives")
    data = json.loads(backup.manifest.read_text())
    for entry in data["entries"]:
        if entry["path"] == "docs/big.bin":
            entry["size"] = 10
    backup.manifest.write_text(json.dumps(data))

    with pytest.raises(ArchiveError, match=r"docs/big.bin.*300000 bytes"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())


def test_restore_names_manifest_entries_the_archive_lacks(source_tree, tmp_path):
    backup = archive_of(source_tree, tmp_path / "archives")
    data = json.loads(backup.manifest.read_text())
    data["entries"].append({"path": "ghost.txt", "type": "file", "size": 1, "sha256": "0" * 64})
    backup.manifest.write_text(json.dumps(data))

    with pytest.raises(ArchiveError, match="lacks 1 of the entries.*ghost.txt"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())


def test_restore_refuses_when_the_checksum_file_disagrees(backup, tmp_path):
    backup.sidecar.write_text(f"{'ab' * 32}  {backup.archive.name}\n")

    with pytest.raises(ArchiveError, match="checksum file"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())


def test_restore_refuses_when_the_checksum_file_is_missing(backup, tmp_path):
    backup.sidecar.unlink()

    with pytest.raises(ArchiveError, match="missing"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())


def test_restore_stops_a_decompression_bomb_and_removes_staging(reading, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("a")
    tar_bytes = gnu_tar(small)
    # Zeros after the end-of-archive blocks are legal tar, and compress to almost nothing.
    bomb = tar_bytes + bytes(64 << 20)
    backup = write_archive(tmp_path / "archives", bomb)
    assert backup.archive.stat().st_size < 100_000

    with pytest.raises(UnsafeArchiveError, match="more than"):
        restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert not (tmp_path / "restored").exists()
    assert leftovers(tmp_path) == []


def test_restore_reports_progress_from_the_start(source_tree, backup, tmp_path):
    hooks = CancelAfter(10_000)

    restore_archive(request_for(backup, tmp_path / "restored"), hooks)

    manifest = load_manifest(backup.manifest)
    assert hooks.progress_seen[0] == (0, manifest.total_bytes, 0, manifest.total_files)
    assert hooks.progress_seen[-1] == (
        manifest.total_bytes,
        manifest.total_bytes,
        manifest.total_files,
        manifest.total_files,
    )


def test_cancelling_a_restore_rolls_back_and_removes_staging(reading, source_tree, tmp_path):
    (source_tree / "large.bin").write_bytes(os.urandom(5 << 20))
    backup = archive_of(source_tree, tmp_path / "archives")
    before = snapshot(source_tree)

    with pytest.raises(Cancelled):
        restore_archive(request_for(backup, source_tree, in_place=True), CancelAfter(2))

    assert snapshot(source_tree) == before
    assert leftovers(tmp_path) == []


def test_a_hung_restore_times_out_and_rolls_back(source_tree, tmp_path, monkeypatch):
    (source_tree / "large.bin").write_bytes(os.urandom(8 << 20))
    backup = archive_of(source_tree, tmp_path / "archives")
    before = snapshot(source_tree)
    # A tar that never reads its input: writes to it block, as with a stuck disk.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    with pytest.raises(Cancelled, match="timed out"):
        restore_archive(
            request_for(backup, source_tree, in_place=True, timeout_s=1.0), RecordingHooks()
        )

    assert snapshot(source_tree) == before
    assert leftovers(tmp_path) == []


def test_restore_of_some_paths_restores_only_those(source_tree, backup, tmp_path):
    target = tmp_path / "restored"
    full = snapshot(source_tree)

    result = restore_archive(
        request_for(backup, target, paths=["docs/nested", "script.sh", "hardlink-to-readme"]),
        RecordingHooks(),
    )

    got = snapshot(target)
    assert set(got) == {
        "docs",
        "docs/nested",
        "docs/nested/deeper",
        "docs/nested/deeper/leaf.txt",
        "script.sh",
        "hardlink-to-readme",
    }
    for path in ("docs/nested/deeper/leaf.txt", "script.sh", "docs/nested"):
        assert got[path] == full[path]
    # A hardlink whose target was not asked for still gets its contents.
    assert got["hardlink-to-readme"][:4] == full["docs/readme.txt"][:4]
    assert result.files == 3


def test_restore_accepts_absolute_paths_under_the_source(source_tree, backup, tmp_path):
    target = tmp_path / "restored"

    restore_archive(
        request_for(backup, target, paths=[f"{source_tree}/script.sh"]), RecordingHooks()
    )

    assert (target / "script.sh").read_text() == "#!/bin/sh\necho hi\n"


def test_restore_refuses_paths_the_backup_does_not_hold(backup, tmp_path):
    with pytest.raises(TargetError, match="nothing at 'nope'"):
        check_target(request_for(backup, tmp_path / "restored", paths=["nope"]))


def test_restore_in_place_of_some_paths_leaves_the_rest_alone(source_tree, backup, tmp_path):
    full = snapshot(source_tree)
    (source_tree / "docs" / "nested" / "deeper" / "leaf.txt").write_text("changed")
    (source_tree / "docs" / "nested" / "new.txt").write_text("new since the backup")
    (source_tree / "script.sh").write_text("changed too, not restored")

    restore_archive(
        request_for(backup, source_tree, in_place=True, paths=["docs/nested"]), RecordingHooks()
    )

    got = snapshot(source_tree)
    assert got["docs/nested/deeper/leaf.txt"] == full["docs/nested/deeper/leaf.txt"]
    assert "docs/nested/new.txt" not in got
    assert (source_tree / "script.sh").read_text() == "changed too, not restored"
    assert leftovers(tmp_path) == []


def test_restore_in_place_of_a_path_refuses_a_symlinked_parent(source_tree, backup, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    subprocess.run(["rm", "-rf", str(source_tree / "docs")], check=True)
    os.symlink(outside, source_tree / "docs")

    with pytest.raises(TargetError, match="symlink"):
        restore_archive(
            request_for(backup, source_tree, in_place=True, paths=["docs/nested"]), RecordingHooks()
        )

    assert os.listdir(outside) == []


def test_restore_in_place_over_a_mount_point_swaps_its_contents(
    source_tree, backup, tmp_path, monkeypatch
):
    expected = snapshot(source_tree)
    (source_tree / "added-later.txt").write_text("not in the backup")
    (source_tree / "docs" / "readme.txt").write_text("changed")
    # A mount point cannot be renamed; pretend the source is one.
    monkeypatch.setattr(
        directory_module.os.path, "ismount", lambda path: str(path) == str(source_tree)
    )

    restore_archive(request_for(backup, source_tree, in_place=True), RecordingHooks())

    assert snapshot(source_tree) == expected
    assert leftovers(source_tree) == []
    assert leftovers(tmp_path) == []


def test_restore_keeps_long_odd_and_undecodable_names(tree, tmp_path):
    backup = archive_of(tree, tmp_path / "archives")

    restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert snapshot(tmp_path / "restored") == snapshot(tree)


def test_restore_writes_big_files_as_faithfully_as_small_ones(tmp_path):
    source = tmp_path / "source"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "deep" / "er" / "big.bin").chmod(0o640)
    (source / "exactly-1mib.bin").write_bytes(os.urandom(1 << 20))
    os.link(source / "deep" / "er" / "big.bin", source / "big-hardlink")
    (source / "locked").mkdir()
    (source / "locked" / "big-inside.bin").write_bytes(os.urandom(2 << 20))
    (source / "locked").chmod(0o500)
    stamp_tree(source)
    backup = archive_of(source, tmp_path / "archives")

    restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    assert snapshot(tmp_path / "restored") == snapshot(source)


def test_restore_reads_what_the_engine_backed_up(source_tree, tmp_path):
    from backups.engine.backup import BackupRequest, run_backup

    backed_up = run_backup(
        BackupRequest(
            kind="directory",
            location=str(source_tree),
            dest_dir=tmp_path / "archives",
            stem="20250101T000000Z-7",
        ),
        RecordingHooks(),
    )

    result = restore_archive(
        RestoreRequest(
            archive=backed_up.archive,
            manifest=backed_up.manifest,
            kind="directory",
            target=str(tmp_path / "restored"),
        ),
        RecordingHooks(),
    )

    assert snapshot(tmp_path / "restored") == snapshot(source_tree)
    assert (result.files, result.bytes) == (backed_up.files, backed_up.bytes)


class Fenced(RecordingHooks):
    def publish(self, action):
        raise FencedError("This worker no longer owns the run.")


def test_a_fenced_restore_publishes_nothing(source_tree, backup, tmp_path):
    before = snapshot(source_tree)

    with pytest.raises(FencedError):
        restore_archive(request_for(backup, source_tree, in_place=True), Fenced())

    assert snapshot(source_tree) == before
    assert leftovers(tmp_path) == []


LONG = "setuid-" + "x" * 150  # a name only a PAX header can hold


def owned_tree(root):
    """Small and big files (through tar and written directly), owned by others, set-id."""
    root.mkdir()
    (root / "small.txt").write_text("small")
    (root / "big.bin").write_bytes(os.urandom(2 << 20))
    (root / "suid").write_text("#!/bin/sh\n")
    (root / "shared").mkdir()
    (root / LONG).write_text("behind an extended header\n")
    owners = {"small.txt": (4321, 1234), "big.bin": (4322, 1235), "suid": (0, 0), LONG: (7, 7)}
    modes = {"small.txt": 0o6755, "big.bin": 0o4755, "suid": 0o4755, "shared": 0o3775}
    modes[LONG] = 0o4755
    for name, (uid, gid) in owners.items():
        os.chown(root / name, uid, gid)
    for name, mode in modes.items():
        os.chmod(root / name, mode)
    return owners, modes


def owners_and_modes(root, names):
    infos = {name: os.stat(root / name) for name in names}
    return {
        name: (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) for name, info in infos.items()
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_restore_in_place_as_root_keeps_owners_and_set_id_bits(tmp_path):
    owners, modes = owned_tree(tmp_path / "source")
    backup = archive_of(tmp_path / "source", tmp_path / "archives")
    for name in owners:  # changed since the backup: the restore must bring them back
        os.chown(tmp_path / "source" / name, 99, 99)
        os.chmod(tmp_path / "source" / name, 0o644)

    restore_archive(request_for(backup, tmp_path / "source", in_place=True), RecordingHooks())

    assert owners_and_modes(tmp_path / "source", owners) == {
        name: (*owner, modes[name]) for name, owner in owners.items()
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_restore_to_a_new_location_gives_files_to_this_user_without_set_id_bits(tmp_path):
    owners, modes = owned_tree(tmp_path / "source")
    backup = archive_of(tmp_path / "source", tmp_path / "archives")

    restore_archive(request_for(backup, tmp_path / "restored"), RecordingHooks())

    me = (os.geteuid(), os.getegid())
    restored = tmp_path / "restored"
    assert owners_and_modes(restored, owners) == {
        "small.txt": (*me, 0o755),
        "big.bin": (*me, 0o755),
        "suid": (*me, 0o755),
        LONG: (*me, 0o755),
    }
    # The sticky bit (no privilege) stays; the set-gid bit of a folder goes too.
    assert stat.S_IMODE(os.stat(restored / "shared").st_mode) == 0o1775
    assert (restored / "big.bin").read_bytes() == (tmp_path / "source" / "big.bin").read_bytes()


class _Collect:
    """Stands in for the tar process: keeps the bytes, runs the file operations at once."""

    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, data) -> None:
        self.data += data

    def operation(self, action) -> None:
        action()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_set_id_bits_come_off_wherever_the_stream_is_cut(tree, tmp_path, seed):
    import random

    from backups.engine.restore.splitter import Splitter
    from backups.engine.safety import MemberPolicy
    from backups.engine.tarstream import TarScanner

    for name in ("suid", LONG):
        (tree / name).write_text("#!/bin/sh\n")
        os.chmod(tree / name, 0o6755)
    stream = gnu_tar(tree)
    out = _Collect()
    splitter = Splitter(out, root=None, direct_min=None, keep_owners=False)
    policy = MemberPolicy()

    def decide(member):
        splitter.approve(member, policy.review(member))
        return True

    scanner = TarScanner(decide=decide, sink=splitter)
    rng = random.Random(seed)
    position = 0
    while position < len(stream):
        step = rng.choice([1, 7, 511, 512, 513, 4096])
        scanner.feed(stream[position : position + step])
        position += step
    scanner.close()
    splitter.finish()
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["tar", "-xpf", "-", "-C", str(staging)], input=bytes(out.data), check=True)

    for name in ("suid", LONG):
        assert stat.S_IMODE(os.stat(staging / name).st_mode) == 0o755
    for path in tree.rglob("*"):
        if path.name not in ("suid", LONG):
            restored = staging / path.relative_to(tree)
            assert os.lstat(restored).st_mode == os.lstat(path).st_mode, path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_second_reading_agrees_with_tar_wherever_the_stream_is_cut(tree, tmp_path, seed):
    import random

    from backups.engine.restore.splitter import Splitter
    from backups.engine.safety import MemberPolicy
    from backups.engine.tarstream import TarScanner

    (tree / "sub" / "big.bin").write_bytes(os.urandom(1 << 20))
    stream = gnu_tar(tree)
    staging = tmp_path / "staging"
    staging.mkdir()
    out = _Collect()
    splitter = Splitter(out, root=staging, direct_min=1 << 20)
    policy = MemberPolicy()

    def decide(member):
        path = policy.review(member)
        splitter.approve(member, path)
        return True

    scanner = TarScanner(decide=decide, sink=splitter)
    rng = random.Random(seed)
    position = 0
    while position < len(stream):
        step = rng.choice([1, 7, 511, 512, 513, 4096, 100_000])
        scanner.feed(stream[position : position + step])
        position += step
    scanner.close()
    splitter.finish()
    splitter.close()
    subprocess.run(["tar", "-xpf", "-", "-C", str(staging)], input=bytes(out.data), check=True)

    assert snapshot(staging) == snapshot(tree)
    assert len(out.data) < len(stream) - (1 << 20)  # the big file did not go through tar


def test_a_restore_refuses_an_archive_the_catalog_does_not_know_and_writes_nothing(tmp_path):
    source = make_tree(tmp_path / "source")
    backup = archive_of(source, tmp_path / "archives")
    target = tmp_path / "target"
    request = RestoreRequest(
        archive=backup.archive,
        manifest=backup.manifest,
        kind="directory",
        target=str(target),
        catalog_sha256="e" * 64,
    )
    with pytest.raises(ArchiveError, match=f"but the catalog recorded {'e' * 64}"):
        restore_archive(request, RecordingHooks())
    assert not target.exists()
