"""load_manifest: the fast reader and the standard one agree, and nothing is dropped."""

from __future__ import annotations

import json

import pytest

from backups.engine.errors import ArchiveError, UnsupportedFormatError
from backups.engine.manifest import Entry, build_spool, load_manifest, write_manifest

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
    assert {key: loaded.header[key] for key in HEADER} == HEADER
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


def test_a_null_size_reads_as_zero_as_before(tmp_path):
    path = written(tmp_path)
    data = json.loads(path.read_text())
    data["entries"][0]["size"] = None
    path.write_text(json.dumps(data))
    assert load_manifest(path).entries[0].size == 0


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
    with pytest.raises(ArchiveError, match="missing a required field"):
        load_manifest(path)


def test_a_manifest_that_cannot_be_read_is_a_sentence_not_a_stack_trace(tmp_path):
    folder = tmp_path / "20250101T000000Z-1.manifest.json"
    folder.mkdir()  # reading it fails with an OSError other than "missing"
    with pytest.raises(ArchiveError, match="cannot be read: Is a directory"):
        load_manifest(folder)
