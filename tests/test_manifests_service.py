"""Indexing a manifest.json into the catalog: folders, entries, paths listed twice."""

import hashlib

import pytest

from backups.engine.manifest import Entry, EntrySpool, write_manifest
from backups.models import Manifest, ManifestEntry, Run
from backups.services import manifests
from backups.services.manifests import manifest_store

pytestmark = pytest.mark.django_db


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write(path, entries) -> None:
    spool = EntrySpool()
    for entry in entries:
        spool.add(entry)
    write_manifest(path, {"run": 1, "archive": {"name": "x.tar", "sha256": "0" * 64}}, spool)
    spool.close()


def stored(manifest, folder, name) -> ManifestEntry:
    entries = ManifestEntry.objects.filter(directory__manifest=manifest)
    return entries.get(directory__path=folder, name=name)


@pytest.fixture
def run(source):
    return Run.objects.create(source=source, status=Run.Status.SUCCEEDED)


@pytest.fixture
def listed_twice(tmp_path):
    """A manifest as a tar made in a pod can have it: two paths appear twice."""
    path = tmp_path / "twice.manifest.json"
    write(
        path,
        [
            Entry(".", "dir", mode=0o755),
            Entry("a.txt", "file", size=5, mode=0o644, mtime=1, sha256=sha("first")),
            Entry("sub", "dir", mode=0o755),
            Entry("sub/b.txt", "file", size=1, mode=0o644, mtime=1, sha256=sha("b")),
            Entry("sub/", "dir", mode=0o700),
            Entry("a.txt", "file", size=6, mode=0o600, mtime=2, sha256=sha("second")),
        ],
    )
    return path


def test_a_path_listed_twice_is_catalogued_once_with_its_first_copy(run, listed_twice):
    manifest = manifest_store(run, listed_twice)
    assert (manifest.entries, manifest.duplicates) == (3, 2)
    first = stored(manifest, "", "a.txt")
    assert (first.size, first.mode, first.sha256_hex) == (5, 0o644, sha("first"))
    assert stored(manifest, "", "sub").mode == 0o755
    assert ManifestEntry.objects.filter(directory__manifest=manifest).count() == 3
    assert Manifest.objects.get(run=run).entries == 3


def test_the_first_copy_wins_when_the_copies_land_in_different_batches(
    run, listed_twice, monkeypatch
):
    monkeypatch.setattr(manifests, "BATCH", 2)
    manifest = manifest_store(run, listed_twice)
    assert manifest.duplicates == 2
    assert stored(manifest, "", "a.txt").sha256_hex == sha("first")


def test_indexing_again_replaces_the_catalog_copy(run, listed_twice, tmp_path):
    manifest_store(run, listed_twice)
    # Twice in one transaction: PostgreSQL's scratch table for duplicates is gone after use.
    again = manifest_store(run, listed_twice)
    assert (again.entries, again.duplicates) == (3, 2)
    clean = tmp_path / "clean.manifest.json"
    write(clean, [Entry("only.txt", "file", size=1, sha256=sha("x"))])
    last = manifest_store(run, clean)
    assert (last.entries, last.duplicates) == (1, 0)
    entries = ManifestEntry.objects.filter(directory__manifest__run=run)
    assert list(entries.values_list("name", flat=True)) == ["only.txt"]


def test_a_search_finds_a_path_spanning_folder_and_name_without_a_page():
    from tests.pages_helpers import make_manifest, make_run, make_source

    run = make_run(make_source("web"), ago_s=60)
    manifest = make_manifest(run, {"photos/2024/a.jpg": "a", "notes/photos.txt": "n", "b": "b"})
    found = manifests.manifest_search(manifest, "2024/a", 10)
    assert [row.path for row in found] == ["photos/2024/a.jpg"]
    # Every path holding the text, folders too, by (folder, name).
    assert [row.path for row in manifests.manifest_search(manifest, "PHOTOS", 10)] == [
        "photos",
        "notes/photos.txt",
        "photos/2024",
        "photos/2024/a.jpg",
    ]


def test_a_folder_that_climbs_out_of_the_backup_is_refused():
    with pytest.raises(ValueError):
        manifests.clean_folder("a/../../etc")
    assert manifests.clean_folder("/a//./b/") == "a/b"


def test_the_diff_of_two_backups_names_each_change_and_where_to_go_on(monkeypatch):
    from tests.pages_helpers import make_manifest, make_run, make_source

    web = make_source("web")
    old = make_run(web, ago_s=7200)
    make_manifest(old, {"same": "x", "edited": "1", "gone": "g"})
    new = make_run(web, ago_s=600)
    make_manifest(new, {"same": "x", "edited": "2", "added": "a"})
    assert manifests.diff_partner(new, None) == old
    assert manifests.older_first(old, new) == manifests.older_first(new, old) == (old, new)
    page = manifests.diff_page(old.pk, new.pk)
    changes = [(change.kind, change.row.path, change.what) for change in page["changes"]]
    assert changes == [
        ("added", "added", ""),
        ("changed", "edited", "content"),
        ("removed", "gone", ""),
    ]
    assert page["next"] is None
    monkeypatch.setattr(manifests, "DIFF_LIMIT", 1)
    first = manifests.diff_page(old.pk, new.pk)
    assert [change.row.path for change in first["changes"]] == ["added"]
    rest = manifests.diff_page(old.pk, new.pk, after=first["next"])
    assert [change.row.path for change in rest["changes"]] == ["edited"]


def test_a_stored_manifest_is_searchable_by_any_part_of_a_name(run, tmp_path):
    # On SQLite the names reach the trigram index in one statement after the rows: a
    # search of three letters or more reads only that index.
    path = tmp_path / "m.manifest.json"
    write(
        path,
        [
            Entry("reports", "dir", mode=0o755),
            Entry("reports/quarterly-sales.csv", "file", size=1, sha256=sha("q")),
            Entry("reports/notes.txt", "file", size=1, sha256=sha("n")),
        ],
    )
    manifest = manifest_store(run, path)
    found = manifests.manifest_search(manifest, "SALES", 10)
    assert [row.path for row in found] == ["reports/quarterly-sales.csv"]
    # Stored again, the old rows leave the index with their backup: one match, not two.
    manifest = manifest_store(run, path)
    assert len(manifests.manifest_search(manifest, "sales", 10)) == 1
