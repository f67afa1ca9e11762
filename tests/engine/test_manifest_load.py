"""load_manifest: the fast reader and the standard one agree, and nothing is dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from backups.engine.errors import ArchiveError, UnsupportedFormatError
from backups.engine.manifest import (
    MTIME_MAX,
    MTIME_MIN,
    Entry,
    build_spool,
    clamp_mtime,
    iter_manifest,
    load_manifest,
    write_manifest,
)

HEADER = {
    "run": 7,
    "source": {"name": "files", "kind": "directory", "location": "/srv/files"},
    "started_at": "2026-11-22T00:00:00+00:00",
    "finished_at": "2026-11-22T00:00:05+00:00",
    "trigger": "schedule",
    "archive": {"name": "a.tar.zst", "size": 10, "sha256": "ab" * 32, "compression": "zstd"},
}
ENTRIES = [
    Entry("docs", "dir", mode=0o755, mtime=1_700_000_000),
    Entry("docs/a.txt", "file", 3, 0o644, 1_700_000_000.25, "cd" * 32),
    Entry("docs/link", "symlink", mtime=1_700_000_001, target="/etc/passwd"),
]


def written(tmp_path, entries=ENTRIES, header=HEADER):
    path = tmp_path / "m.manifest.json"
    write_manifest(path, dict(header), build_spool(entries))
    return path


def test_a_manifest_reads_back_exactly(tmp_path):
    loaded = load_manifest(written(tmp_path))
    assert loaded.entries == ENTRIES
    # Dates are validated as they are decoded, and come back as datetimes.
    expected = {
        **HEADER,
        "started_at": datetime(2026, 11, 22, tzinfo=UTC),
        "finished_at": datetime(2026, 11, 22, 0, 0, 5, tzinfo=UTC),
    }
    assert {key: loaded.header[key] for key in HEADER} == expected
    assert loaded.total_files == 1 and loaded.total_bytes == 3


def test_names_that_are_not_utf8_survive(tmp_path):
    # The fast reader refuses JSON surrogate escapes; the standard one must take over.
    odd = Entry("caf\udce9.txt", "file", 3, 0o644, 1, "ef" * 32)
    loaded = load_manifest(written(tmp_path, [*ENTRIES, odd]))
    assert loaded.entries[-1] == odd
    assert loaded.entries[-1].path.encode("utf-8", "surrogateescape") == b"caf\xe9.txt"


def test_header_fields_beyond_the_contract_are_kept(tmp_path):
    path = written(tmp_path, header={**HEADER, "labels": {"team": "db"}})
    assert load_manifest(path).header["labels"] == {"team": "db"}


def test_a_null_size_is_refused_naming_the_field(tmp_path):
    # No version ever wrote one; the schema says a size is a whole number.
    path = written(tmp_path)
    data = json.loads(path.read_text())
    data["entries"][0]["size"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(ArchiveError, match=r"not valid at entries\[0\]\.size: expected `int`"):
        load_manifest(path)


def test_a_newer_format_and_a_damaged_file_are_refused_clearly(tmp_path):
    path = written(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(UnsupportedFormatError, match="format 99, newer than"):
        load_manifest(path)
    path.write_text(json.dumps(data)[:-40])
    with pytest.raises(ArchiveError, match="damaged and cannot be read"):
        load_manifest(path)
    del data["archive"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArchiveError, match="missing required field `archive`"):
        load_manifest(path)


def test_a_manifest_that_cannot_be_read_is_a_sentence_not_a_stack_trace(tmp_path):
    folder = tmp_path / "20250101T000000Z-1.manifest.json"
    folder.mkdir()  # reading it fails with an OSError other than "missing"
    with pytest.raises(ArchiveError, match="cannot be read: Is a directory"):
        load_manifest(folder)


def with_entry(tmp_path, **fields):
    """Write a valid manifest, then set `fields` of its second entry, keeping the layout."""
    path = written(tmp_path)
    lines = path.read_text().split("\n")
    at = lines.index(' "entries": [') + 2
    entry = json.loads(lines[at].rstrip(","))
    lines[at] = json.dumps({**entry, **fields}, separators=(",", ":")) + ","
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize(
    ("fields", "where", "what"),
    [
        ({"mtime": "2026-11-22T00:00:00+00:00"}, "mtime", "expected `int | float`, got `str`"),
        ({"mode": "0644"}, "mode", "expected `int`, got `str`"),
        ({"mode": 0o10000}, "mode", "expected `int` <= 4095"),
        ({"size": -1}, "size", "expected `int` >= 0"),
        ({"mtime": 1e12}, "mtime", "expected `float` <= 253402214399.0"),
        ({"type": "socket"}, "type", "invalid enum value 'socket'"),
        ({"sha256": "not a hash"}, "sha256", "expected `str` matching regex"),
        ({"path": 7}, "path", "expected `str`, got `int`"),
    ],
)
def test_a_field_of_the_wrong_type_or_out_of_bounds_is_named(tmp_path, fields, where, what):
    path = with_entry(tmp_path, **fields)
    with pytest.raises(ArchiveError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert f"{path} is not valid at entries[1].{where}: {what}" in message
    # The streaming reader the catalog and the import use says the same.
    header, entries = iter_manifest(path)
    with pytest.raises(ArchiveError) as streamed:
        list(entries)
    assert f"not valid at entries[1].{where}: {what}" in str(streamed.value)


def test_a_bad_field_is_found_in_a_manifest_with_names_that_are_not_utf8(tmp_path):
    # Such names make msgspec's JSON reader step aside; the schema still applies.
    odd = Entry("caf\udce9.txt", "file", 3, 0o644, 1, "ef" * 32)
    path = written(tmp_path, [*ENTRIES, odd])
    data = path.read_text().replace('"mode":420', '"mode":"rw-r--r--"', 1)
    path.write_text(data)
    with pytest.raises(ArchiveError, match=r"not valid at entries\[1\]\.mode: expected `int`"):
        load_manifest(path)
    with pytest.raises(ArchiveError, match=r"not valid at entries\[1\]\.mode: expected `int`"):
        list(iter_manifest(path)[1])


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"run": "7"}, r"not valid at run: expected `int`"),
        ({"started_at": "yesterday"}, r"not valid at started_at: invalid RFC3339"),
        ({"started_at": "2026-11-22T00:00:00"}, r"started_at: expected `datetime` with a time"),
        ({"source": {"name": "x", "kind": "ftp"}}, r"source\.kind: invalid enum value 'ftp'"),
        ({"totals": -1}, r"not valid at totals\.files: expected `int` >= 0"),
        ({"format": "1"}, r"not valid at format: expected `int`"),
    ],
)
def test_a_header_field_of_the_wrong_type_is_named(tmp_path, change, what):
    path = written(tmp_path, header={**HEADER, **change})
    # Writing sets the format and the totals itself: those two are altered afterwards.
    text = path.read_text()
    text = text.replace('"format": 2', '"format": "2"') if "format" in change else text
    text = text.replace('"files": 1', '"files": -1') if "totals" in change else text
    path.write_text(text)
    with pytest.raises(ArchiveError, match=what):
        load_manifest(path)
    with pytest.raises(ArchiveError, match=what):
        iter_manifest(path)


def test_a_nul_character_or_a_surrogate_that_is_no_byte_is_refused(tmp_path):
    path = with_entry(tmp_path, path="docs/a\u0000.txt")
    with pytest.raises(ArchiveError, match="holds a NUL character"):
        load_manifest(path)
    with pytest.raises(ArchiveError, match="holds a NUL character"):
        list(iter_manifest(path)[1])
    path = with_entry(tmp_path, path="docs/\ud800.txt")
    with pytest.raises(ArchiveError, match=r"at entries\[1\]\.path: it holds a Unicode surrogate"):
        load_manifest(path)
    with pytest.raises(ArchiveError, match=r"at entries\[1\]\.path: it holds a Unicode surrogate"):
        list(iter_manifest(path)[1])


def test_a_name_that_spells_a_nul_escape_is_a_name_like_any_other(tmp_path):
    path = with_entry(tmp_path, path="docs/\\u0000.txt")
    assert load_manifest(path).entries[1].path == "docs/\\u0000.txt"


def test_an_out_of_range_mtime_is_written_clamped_so_the_manifest_reads_back(tmp_path):
    entries = [Entry("far.txt", "file", 0, 0o644, clamp_mtime(1e12), None)]
    assert load_manifest(written(tmp_path, entries)).entries[0].mtime == MTIME_MAX
    assert clamp_mtime(-1e12) == MTIME_MIN and clamp_mtime(1_700_000_000.5) == 1_700_000_000.5


def test_a_spool_reads_back_what_it_was_given_whatever_the_names():
    # Plain names decode on the fast path; a name that is not UTF-8, or one spelling a
    # NUL escape, makes its chunk go through the checked reader: all must come back.
    odd = [
        Entry("caf\udce9.txt", "file", 3, 0o644, 1, "ef" * 32),
        Entry("docs/\\u0000.txt", "file", 1, 0o600, 2, "01" * 32),
    ]
    spool = build_spool([*ENTRIES, *odd])
    assert list(spool.entries()) == [*ENTRIES, *odd]
    assert list(build_spool(ENTRIES).entries()) == ENTRIES
    spool.close()


def test_a_spool_refuses_a_nul_character_and_a_surrogate_that_is_no_byte():
    for name, what in (("a\u0000.txt", "holds a NUL character"), ("\ud800.txt", "surrogate")):
        spool = build_spool([*ENTRIES, Entry(name, "file", 1, 0o644, 1, None)])
        with pytest.raises(ArchiveError, match=what):
            list(spool.entries())
        spool.close()
