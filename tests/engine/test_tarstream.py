"""The streaming tar scanner against archives written by GNU tar and Python's tarfile."""

from __future__ import annotations

import io
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from backups.engine.errors import ArchiveError
from backups.engine.tarstream import Member, TarScanner, normalise

from .conftest import LONG_FILE, MTIME, NEWLINE, NON_UTF8, sha256_of

TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}


def gnu_tar(tree: Path, fmt: str = "pax") -> bytes:
    return subprocess.run(
        ["tar", f"--format={fmt}", "-cf", "-", "-C", str(tree), "."],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout


def python_tar(tree: Path, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, errors="surrogateescape") as tar:
        tar.add(tree, arcname=".")
    return buffer.getvalue()


MAKERS = {
    "gnu-pax": lambda tree: gnu_tar(tree, "pax"),
    "gnu-gnu": lambda tree: gnu_tar(tree, "gnu"),
    "python-pax": lambda tree: python_tar(tree, tarfile.PAX_FORMAT),
    "python-gnu": lambda tree: python_tar(tree, tarfile.GNU_FORMAT),
}


def scan(data: bytes, chunk: int = 1 << 20, **kwargs) -> tuple[list[Member], TarScanner]:
    members: list[Member] = []
    scanner = TarScanner(on_member=members.append, **kwargs)
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        scanner.feed(view[start : start + chunk])
    scanner.close()
    return members, scanner


def reference(data: bytes) -> list[tuple]:
    """What tarfile reads from the same archive, in the scanner's terms."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        for info in tar:
            kind = TYPES[info.type]
            out.append(
                (
                    normalise(info.name),
                    kind,
                    info.size if kind == "file" else 0,
                    info.mode,
                    int(info.mtime),
                    info.linkname if kind in ("symlink", "hardlink") else None,
                    info.uid,
                    info.gid,
                )
            )
    return out


def described(members: list[Member]) -> list[tuple]:
    return [(m.path, m.type, m.size, m.mode, int(m.mtime), m.target, m.uid, m.gid) for m in members]


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize("chunk", [511, 512, 513, 4097, 1 << 20])
def test_members_match_tarfile_and_the_real_files(tree, maker, chunk):
    data = MAKERS[maker](tree)
    members, scanner = scan(data, chunk)

    assert described(members) == reference(data)
    assert scanner.members_seen == len(members)
    assert scanner.bytes_in == len(data)
    files = [m for m in members if m.type == "file"]
    assert scanner.payload_bytes == sum(m.size for m in files)
    for member in files:
        assert member.sha256 == sha256_of(tree / member.path), member.path
    assert all(m.sha256 is None for m in members if m.type != "file")


def test_a_stream_fed_one_byte_at_a_time_reads_the_same(tree):
    data = gnu_tar(tree)
    assert described(scan(data, 1)[0]) == reference(data)


@pytest.mark.parametrize("maker", MAKERS)
def test_awkward_names_and_links_come_out_exactly(tree, maker):
    members = {m.path: m for m in scan(MAKERS[maker](tree))[0]}

    assert len(LONG_FILE.encode()) > 255
    assert members[LONG_FILE].sha256 == sha256_of(tree / LONG_FILE)
    assert members[NON_UTF8].path.encode("utf-8", "surrogateescape") == b"caf\xe9-latin1.txt"
    assert members[NEWLINE].size == len(b"a newline in the name\n")
    assert members["link"].type == "symlink" and members["link"].target == "small.txt"
    assert members["dangling"].target == "does/not/exist"
    assert members["absolute"].target == "/etc/hostname"
    hardlinks = [m for m in members.values() if m.type == "hardlink"]
    assert len(hardlinks) == 1
    assert {normalise(hardlinks[0].target), hardlinks[0].path} == {"small.txt", "hard"}
    assert members["empty"].type == "dir"
    assert members["private.key"].mode == 0o600
    assert members["run.sh"].mode == 0o755
    assert members["locked"].mode == 0o750
    assert members["small.txt"].mtime == MTIME
    assert members["."].type == "dir"
    assert members["small.txt"].raw_name == "./small.txt"


def test_binary_pax_names_are_read(tree):
    data = python_tar(tree)
    assert b"hdrcharset=BINARY" in data
    names = [m.path for m in scan(data)[0]]
    assert NON_UTF8 in names


def test_forwarding_everything_reproduces_the_input_byte_for_byte(tree):
    data = gnu_tar(tree)
    for chunk in (100, 512, 1000, 1 << 16):
        out: list[bytes] = []
        scan(data, chunk, sink=out.append)
        assert b"".join(out) == data, chunk


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize("chunk", [300, 512, 1 << 20])
def test_a_filtered_stream_is_a_tar_that_gnu_tar_reads(tree, tmp_path, maker, chunk):
    data = MAKERS[maker](tree)
    dropped = {"sub", "sub/random.bin", "sub/text.txt", "sub/nested-empty", LONG_FILE, NEWLINE}
    out: list[bytes] = []
    members, _ = scan(data, chunk, sink=out.append, decide=lambda m: m.path not in dropped)
    filtered = b"".join(out)

    kept = [m.path for m in members]
    assert not set(kept) & dropped
    with tarfile.open(fileobj=io.BytesIO(filtered)) as tar:
        assert [normalise(name) for name in tar.getnames()] == kept
    listing = subprocess.run(["tar", "-tf", "-"], input=filtered, capture_output=True)
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == len(kept)
    assert LONG_FILE.encode()[-60:] not in filtered
    target = tmp_path / "out"
    target.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(target)], input=filtered, check=True)
    assert (target / "small.txt").read_bytes() == b"hello, world\n"
    assert not (target / "sub").exists()
    assert (target / (LONG_FILE.split("/")[0])).is_dir()  # its parent directories were kept


def test_a_global_header_is_kept_when_the_first_member_is_dropped():
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "kept"}
    ) as tar:
        for name in ("first", "second"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    out: list[bytes] = []
    members, _ = scan(buffer.getvalue(), 700, sink=out.append, decide=lambda m: m.path != "first")

    assert [m.path for m in members] == ["second"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(out))) as tar:
        assert tar.pax_headers == {"comment": "kept"}
        assert tar.getnames() == ["second"]


def test_global_headers_apply_to_later_members():
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uname": "everyone"}
    ) as tar:
        info = tarfile.TarInfo("file")
        info.uname = "me"
        tar.addfile(info, io.BytesIO())
    assert scan(buffer.getvalue())[0][0].uname == "everyone"


def test_base_256_numbers_are_read():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("big-ids")
        info.uid = info.gid = 3_000_000_000
        info.mtime = -1_000
        info.size = 5
        tar.addfile(info, io.BytesIO(b"12345"))
    data = buffer.getvalue()
    assert data[108] == 0x80  # the uid field really is base-256

    member = scan(data)[0][0]
    assert (member.uid, member.gid, member.mtime, member.size) == (3e9, 3e9, -1_000, 5)


def test_ustar_names_split_over_the_prefix_field():
    name = "p" * 90 + "/" + "n" * 90
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        tar.addfile(info, io.BytesIO())
    assert scan(buffer.getvalue())[0][0].path == name


def test_pax_fractional_mtimes_are_kept():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("frac")
        info.mtime = 1_600_000_000.25
        tar.addfile(info, io.BytesIO())
    assert scan(buffer.getvalue())[0][0].mtime == 1_600_000_000.25


def small_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index, size in enumerate((0, 1, 700, 512, 1500)):
            info = tarfile.TarInfo(f"file-{index}-" + "x" * (60 * index))  # some need PAX
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([index + 1]) * size))
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    return buffer.getvalue()


def end_of_archive(data: bytes) -> int:
    """Return the offset just after the two end-of-archive blocks."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.getmembers()
        return tar.offset + 1024


def test_a_stream_cut_anywhere_before_the_end_marker_is_reported_truncated():
    data = small_archive()
    end = end_of_archive(data)
    cuts = set(range(0, end, 97))
    cuts |= {k + d for k in range(0, end, 512) for d in (-1, 0, 1) if 0 <= k + d < end}
    for cut in sorted(cuts):
        scanner = TarScanner()
        scanner.feed(data[:cut])
        with pytest.raises(ArchiveError, match="truncated"):
            scanner.close()
    for cut in (end, len(data)):
        scanner = TarScanner()
        scanner.feed(data[:cut])
        scanner.close()


def test_a_truncated_gnu_tar_archive_names_the_member(tree):
    data = gnu_tar(tree)
    members, _ = scan(data)
    scanner = TarScanner()
    scanner.feed(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=r"truncated.*inside the data of '\./sub/random\.bin'"):
        scanner.close()
    assert members


def test_a_corrupt_header_names_its_byte_offset():
    data = bytearray(small_archive())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        offset = tar.getmembers()[2].offset
    data[offset + 10] ^= 0x55
    with pytest.raises(ArchiveError, match=f"checksum at byte offset {offset}"):
        scan(bytes(data), 1000)


def test_garbage_is_not_a_tar():
    with pytest.raises(ArchiveError, match="checksum at byte offset 0"):
        scan(random.Random(3).randbytes(4096))


def test_a_lone_zero_block_before_more_headers_is_damage():
    data = small_archive()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        second = tar.getmembers()[1].offset
    damaged = data[:second] + bytes(512) + data[second:]
    with pytest.raises(ArchiveError, match=f"lone zero block at byte offset {second}"):
        scan(damaged)


def test_dropped_members_are_neither_hashed_nor_reported(tree):
    decided: list[str] = []

    def decide(member: Member) -> bool:
        decided.append(member.path)
        return member.type != "file"

    members, scanner = scan(gnu_tar(tree), decide=decide)
    assert members and all(m.type != "file" for m in members)
    assert len(decided) == scanner.members_seen > len(members)


def _with_size(header_type: bytes, size: int) -> bytes:
    """A one-member ustar archive whose member of `header_type` claims `size` data bytes."""
    info = tarfile.TarInfo("odd")
    info.type = header_type
    info.linkname = "target" if header_type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + bytes(-(-size // 512) * 512) + bytes(1024)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_a_link_or_special_member_that_claims_data_is_refused(kind):
    # GNU tar would skip the claimed bytes and tarfile would not: refuse, never guess.
    with pytest.raises(ArchiveError, match="claims 1024 bytes"):
        scan(_with_size(kind, 1024))


def test_a_gnu_sparse_member_is_refused_with_a_clear_message():
    info = tarfile.TarInfo("data.bin")
    info.size = 0
    info.pax_headers = {"GNU.sparse.name": "data.bin", "GNU.sparse.realsize": "4096"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="sparse"):
        scan(buffer.getvalue())
