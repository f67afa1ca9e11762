"""Hostile archives: nothing is ever written outside the target or through a symlink."""

from __future__ import annotations

import os
import tarfile

import pytest

from backups.engine.errors import ArchiveError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import Entry
from backups.engine.restore import RestoreRequest, restore_archive
from backups.engine.safety import MemberPolicy, Selection, normalise_request_path
from tests.engine.restore_helpers import hostile_tar, leftovers, write_archive
from tests.engine.restore_helpers import tar_member as member


def restore(archive, target, **options):
    hooks = RecordingHooks()
    result = restore_archive(
        RestoreRequest(
            archive=archive.archive,
            manifest=archive.manifest,
            kind="directory",
            target=str(target),
            **options,
        ),
        hooks,
    )
    return result, hooks


def everything_under(folder):
    found = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), folder))
    return found


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def test_policy_keeps_ordinary_members():
    policy = MemberPolicy()

    assert policy.review(member("./", "dir")) == ""
    assert policy.review(member("./a", "dir")) == "a"
    assert policy.review(member("./a/file.txt")) == "a/file.txt"
    assert policy.review(member("./a/link", "symlink", "/etc/passwd")) == "a/link"
    assert policy.review(member("./a/hard", "hardlink", "./a/file.txt")) == "a/hard"
    assert policy.rejected == []


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([member("/etc/cron.d/evil")], "absolute path"),
        ([member("../../evil")], "'..'"),
        ([member("a/../../evil")], "'..'"),
        ([member("link", "symlink", "/etc"), member("link/evil")], "through the symlink"),
        ([member("up", "symlink", ".."), member("up/evil")], "through the symlink"),
        ([member("f"), member("f/child")], "not a folder"),
        ([member("a/b"), member("a", "symlink", "/etc")], "replace a folder"),
        ([member("dup"), member("dup")], "more than once"),
        ([member("h", "hardlink", "/etc/passwd")], "absolute path"),
        ([member("h", "hardlink", "../outside")], "'..'"),
        ([member("h", "hardlink", "later"), member("later")], "not an earlier file"),
        ([member("d", "dir"), member("h", "hardlink", "d")], "not an earlier file"),
        ([member("fifo", "fifo")], "FIFO"),
        ([member("tty", "char")], "character device"),
        ([member("sda", "block")], "block device"),
        ([member("./", "file")], "target folder itself"),
    ],
)
def test_policy_refuses_unsafe_members(members, reason):
    policy = MemberPolicy()

    for item in members:
        policy.review(item)

    assert len(policy.rejected) == 1
    assert reason in policy.rejected[0].reason
    assert policy.rejected[0].name in str(policy.rejected[0]) or "\\" in str(policy.rejected[0])


def test_policy_names_only_the_first_rejections_then_counts():
    policy = MemberPolicy()
    for number in range(60):
        policy.review(member(f"/abs/{number}"))

    lines = policy.warnings()

    assert len(lines) == 51
    assert "10 more" in lines[-1]


def test_selection_includes_paths_below_and_knows_their_parents():
    selection = Selection(["a/b", "a/b/c", "x"])

    assert selection.paths == ("a/b", "x")
    assert selection.includes("a/b") and selection.includes("a/b/c/d") and selection.includes("x")
    assert not selection.includes("a") and not selection.includes("a/bc")
    assert selection.is_ancestor("a") and selection.is_ancestor("")
    assert selection.unmatched(["a/b/file"]) == ["x"]


def test_request_paths_are_made_relative_and_checked():
    assert normalise_request_path("./a/b/") == "a/b"
    assert normalise_request_path("/srv/data/a", "/srv/data") == "a"
    with pytest.raises(ValueError, match="absolute"):
        normalise_request_path("/elsewhere/a", "/srv/data")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        normalise_request_path("a/../../b")


def test_restore_of_a_hostile_archive_writes_nothing_outside_the_target(tmp_path, outside):
    evil_abs = str(outside / "absolute.txt")

    def build(add):
        add("./", tarfile.DIRTYPE, mode=0o755)
        add("./ok.txt", data=b"fine\n")
        add(evil_abs, data=b"absolute\n")
        add("../outside/dotdot.txt", data=b"dotdot\n")
        add("./sub/../../outside/sneaky.txt", data=b"sneaky\n")
        add("./" + "x" * 150 + "/../../outside/long.txt", data=b"long pax name\n")
        add("./escape", tarfile.SYMTYPE, linkname=str(outside))
        add("./escape/through-symlink.txt", data=b"through\n")
        add("./up", tarfile.SYMTYPE, linkname="..")
        add("./up/outside/through-up.txt", data=b"up\n")
        add("./hard-abs", tarfile.LNKTYPE, linkname="/etc/passwd")
        add("./hard-out", tarfile.LNKTYPE, linkname="../outside/x")
        add("./hard-early", tarfile.LNKTYPE, linkname="./later.txt")
        add("./later.txt", data=b"later\n")
        add("./ok.txt", data=b"second copy\n")
        add("./fifo", tarfile.FIFOTYPE)
        add("./null", tarfile.CHRTYPE)
        add("./disk", tarfile.BLKTYPE)
        add("./file", data=b"a file\n")
        add("./file/child.txt", data=b"child\n")
        add("./hard-good", tarfile.LNKTYPE, linkname="./later.txt")

    archive = write_archive(tmp_path / "archives", hostile_tar(build))
    target = tmp_path / "restored"

    result, hooks = restore(archive, target)

    assert os.listdir(outside) == []
    assert not os.path.lexists(evil_abs)
    assert everything_under(target) == {
        "ok.txt",
        "escape",
        "up",
        "later.txt",
        "file",
        "hard-good",
    }
    assert (target / "ok.txt").read_bytes() == b"fine\n"
    assert os.readlink(target / "escape") == str(outside)
    assert os.readlink(target / "up") == ".."
    assert os.stat(target / "hard-good").st_ino == os.stat(target / "later.txt").st_ino
    text = "\n".join(result.warnings)
    for name in (
        evil_abs,
        "../outside/dotdot.txt",
        "sneaky.txt",
        "long.txt",
        "through-symlink.txt",
        "through-up.txt",
        "hard-abs",
        "hard-out",
        "hard-early",
        "./fifo",
        "./null",
        "./disk",
        "child.txt",
    ):
        assert name in text, name
    assert "appears more than once" in text
    assert hooks.warnings == result.warnings
    assert leftovers(tmp_path) == []


def test_restore_of_a_gnu_longname_climbing_out_is_refused(tmp_path, outside):
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("../outside/" + "g" * 120 + ".txt")
        data = b"gnu long name\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = write_archive(tmp_path / "archives", buffer.getvalue())

    result, _ = restore(archive, tmp_path / "restored")

    assert os.listdir(outside) == []
    assert os.listdir(tmp_path / "restored") == []
    assert "'..'" in result.warnings[0]


def test_restore_in_place_never_writes_through_a_symlink_the_archive_planted(tmp_path, outside):
    def build(add):
        add("./data", tarfile.SYMTYPE, linkname=str(outside))
        add("./data/payload.txt", data=b"would land outside\n")

    archive = write_archive(tmp_path / "archives", hostile_tar(build))
    target = tmp_path / "live"
    target.mkdir()
    (target / "keep.txt").write_text("old")

    result, _ = restore(archive, target, in_place=True)

    assert os.listdir(outside) == []
    assert os.readlink(target / "data") == str(outside)
    assert not (target / "keep.txt").exists()
    assert "through the symlink" in result.warnings[0]


def _header(name, kind=tarfile.REGTYPE, size=0, linkname="", size_field=None):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime = kind, size, linkname, 1_600_000_000
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    if size_field is not None:
        block[124:136] = b"%011o\0" % size_field
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_a_header_some_tars_read_differently_stops_the_restore(tmp_path, outside):
    # A symlink whose size field is not zero: some tars skip that many bytes as its data,
    # which would turn the next file's data into a header the checks never saw.
    smuggled = _header("escape/pwned.txt", size=6) + b"pwned\n".ljust(512, b"\0")
    stream = (
        _header("escape", tarfile.SYMTYPE, linkname=str(outside), size_field=512)
        + _header("innocent.bin", size=1024)
        + smuggled
        + bytes(1024)
    )
    # The manifest lists what a lying writer would claim: the link and the innocent file.
    entries = [
        Entry("escape", "symlink", 0, 0o777, 1_600_000_000, None, str(outside)),
        Entry("innocent.bin", "file", 1024, 0o644, 1_600_000_000, "0" * 64),
    ]
    archive = write_archive(tmp_path / "archives", stream, entries=entries)

    with pytest.raises(ArchiveError, match="'escape'.* claims 512 bytes"):
        restore(archive, tmp_path / "restored")

    assert os.listdir(outside) == []
    assert not (tmp_path / "restored").exists()
    assert leftovers(tmp_path) == []
