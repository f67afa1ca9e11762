"""The file browser: folders of a backup, a path search, and the diff of two backups."""

import pytest
from django.db import IntegrityError, connection
from django.urls import reverse

from backups.models import ManifestEntry
from backups.services import manifests
from backups.services.manifests import index_failed_warning
from dashboard.views import manifests as manifest_pages
from tests.pages_helpers import make_manifest, make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return make_source("web", policy=make_policy())


@pytest.fixture
def backup(web):
    run = make_run(web, ago_s=600)
    make_manifest(
        run,
        {
            "README.txt": "hello",
            "config/app.toml": "port = 80",
            "config/nested/deep.txt": "deep",
            "photos/a.jpg": "jpeg-a",
            "photos/b.jpg": "jpeg-b",
            "empty": None,
        },
    )
    return run


def browse(client, run, **params):
    return client.get(reverse("manifest-browse", args=[run.pk]), params)


def names(response):
    return [row.name for row in response.context["entries"]]


def test_the_top_folder_lists_entries_by_name_with_sizes_and_hashes(client, viewer, backup):
    client.force_login(viewer)
    response = browse(client, backup)
    assert response.status_code == 200
    assert names(response) == ["README.txt", "config", "empty", "photos"]
    text = response.text
    assert "5 B" in text and "0644" in text
    readme = response.context["entries"][0]
    assert f'title="{readme.sha256_hex}"' in text
    assert '<a href="?path=config">config/</a>' in text


def test_a_subfolder_has_crumbs_and_a_way_up(client, viewer, backup):
    client.force_login(viewer)
    response = browse(client, backup, path="config/nested")
    assert names(response) == ["deep.txt"]
    assert response.context["crumbs"] == [("config", "config"), ("nested", "config/nested")]
    assert "Up to config" in response.text


def test_a_folder_is_paginated_by_name_without_offsets(client, viewer, web, monkeypatch):
    monkeypatch.setattr(manifest_pages, "ENTRIES_PER_PAGE", 2)
    run = make_run(web, ago_s=60)
    make_manifest(run, {f"f{i}.txt": str(i) for i in range(5)})
    client.force_login(viewer)
    first = browse(client, run)
    assert names(first) == ["f0.txt", "f1.txt"] and first.context["next_after"] == "f1.txt"
    second = browse(client, run, after="f1.txt")
    assert names(second) == ["f2.txt", "f3.txt"]
    last = browse(client, run, after="f3.txt")
    assert names(last) == ["f4.txt"] and last.context["next_after"] is None


def test_an_unknown_folder_is_404(client, viewer, backup):
    client.force_login(viewer)
    assert browse(client, backup, path="nope").status_code == 404
    assert browse(client, backup, path="../etc").status_code == 404


def test_a_backup_without_a_catalogued_manifest_says_so(client, viewer, web):
    run = make_run(web, ago_s=60)
    client.force_login(viewer)
    response = browse(client, run)
    assert response.status_code == 404
    assert "import_archives" in response.text


def test_a_backup_whose_catalog_indexing_failed_says_why_and_what_to_do(client, viewer, web):
    warning = index_failed_warning(IntegrityError("UNIQUE constraint failed: entry.name"))
    run = make_run(web, ago_s=60, status="warning", warnings=["skipped a socket", warning])
    client.force_login(viewer)
    for page in ("manifest-browse", "manifest-diff"):
        text = client.get(reverse(page, args=[run.pk])).text
        assert warning in text and "UNIQUE constraint failed" in text
        assert "The catalog holds no file list" not in text


def found(response):
    return [row.path for row in response.context["results"]]


def test_search_finds_a_substring_of_the_name_or_of_the_folder(client, viewer, backup):
    client.force_login(viewer)
    assert found(browse(client, backup, q=".JPG")) == ["photos/a.jpg", "photos/b.jpg"]
    # "fig" is in the folder name: the folder's entries and the folder itself match.
    assert found(browse(client, backup, q="fig")) == [
        "config",
        "config/app.toml",
        "config/nested",
        "config/nested/deep.txt",
    ]


def test_search_across_a_slash_joins_the_end_of_a_folder_and_the_start_of_a_name(
    client, viewer, backup
):
    client.force_login(viewer)
    assert found(browse(client, backup, q="ig/app")) == ["config/app.toml"]
    assert found(browse(client, backup, q="nested/")) == ["config/nested/deep.txt"]
    assert found(browse(client, backup, q="/b.j")) == ["photos/b.jpg"]
    assert found(browse(client, backup, q="/README")) == []


def test_search_results_are_bounded(client, viewer, web, monkeypatch):
    monkeypatch.setattr(manifest_pages, "SEARCH_LIMIT", 3)
    run = make_run(web, ago_s=60)
    make_manifest(run, {f"log-{i}.txt": str(i) for i in range(10)})
    client.force_login(viewer)
    response = browse(client, run, q="log-")
    assert len(found(response)) == 3 and response.context["truncated"]
    assert "The first 3 entries" in response.text


def test_operators_can_pick_paths_to_restore(client, operator, viewer, backup):
    client.force_login(operator)
    text = browse(client, backup, path="photos").text
    assert f'action="{reverse("restore-start")}"' in text
    assert (
        'name="path" value="photos/a.jpg"' in text and 'aria-label="Restore photos/a.jpg"' in text
    )
    client.force_login(viewer)
    assert 'name="path"' not in browse(client, backup, path="photos").text


@pytest.fixture
def two_backups(web):
    old = make_run(web, ago_s=7200)
    make_manifest(old, {"keep.txt": "same", "edit.txt": "v1", "gone.txt": "bye", "d/x": "1"})
    new = make_run(web, ago_s=600)
    make_manifest(new, {"keep.txt": "same", "edit.txt": "v2", "new.txt": "hi", "d/x": "1"})
    return old, new


def changes(response):
    return [(change.kind, change.row.path) for change in response.context["changes"]]


def test_the_diff_lists_added_removed_and_changed_files(client, viewer, two_backups):
    old, new = two_backups
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[new.pk]))
    assert response.context["old"] == old and response.context["new"] == new
    assert changes(response) == [
        ("changed", "edit.txt"),
        ("removed", "gone.txt"),
        ("added", "new.txt"),
    ]
    assert response.context["next"] is None
    assert response.context["changes"][0].what == "content"  # same size, new bytes
    assert "+ added" in response.text and "− removed" in response.text


def test_the_diff_reads_old_to_new_whichever_side_is_asked(client, viewer, two_backups):
    old, new = two_backups
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[old.pk]), {"against": new.pk})
    assert ("added", "new.txt") in changes(response)


def test_the_diff_pages_through_many_differences(client, viewer, web, monkeypatch):
    monkeypatch.setattr(manifests, "DIFF_LIMIT", 3)
    monkeypatch.setattr(manifests, "DIFF_FIRST_SLICE", 2)
    old = make_run(web, ago_s=7200)
    make_manifest(old, {f"a/{i:02d}": "old" for i in range(8)})
    new = make_run(web, ago_s=600)
    make_manifest(new, {f"a/{i:02d}": "old" if i % 2 else "new" for i in range(8)} | {"b": "x"})
    client.force_login(viewer)
    seen, params = [], {}
    for _ in range(10):
        response = client.get(reverse("manifest-diff", args=[new.pk]), params)
        seen += changes(response)
        if response.context["next"] is None:
            break
        folder, name = response.context["next"]
        params = {"after_dir": folder, "after_name": name}
    # Folder by folder: the top folder's own entries come before those of "a".
    assert seen == [
        ("added", "b"),
        ("changed", "a/00"),
        ("changed", "a/02"),
        ("changed", "a/04"),
        ("changed", "a/06"),
    ]


def test_the_diff_of_identical_backups_is_empty(client, viewer, web):
    files = {f"d{i}/f{j}": f"{i}{j}" for i in range(3) for j in range(4)}
    make_manifest(make_run(web, ago_s=7200), files)
    new = make_run(web, ago_s=600)
    make_manifest(new, files)
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[new.pk]))
    assert changes(response) == [] and response.context["next"] is None
    assert "No differences" in response.text


def test_the_diff_can_be_limited_to_a_folder(client, viewer, web):
    make_manifest(make_run(web, ago_s=7200), {"top.txt": "v1", "d/x": "1", "d/y": "1"})
    new = make_run(web, ago_s=600)
    make_manifest(new, {"top.txt": "v2", "d/x": "2", "d/y": "1"})
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[new.pk]), {"path": "d"})
    # Only the change inside "d", not the one at the top.
    assert changes(response) == [("changed", "d/x")]


def test_a_backup_with_nothing_before_it_has_nothing_to_compare(client, viewer, backup):
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[backup.pk]))
    assert response.status_code == 200
    assert "no other backup" in response.text


@pytest.mark.parametrize("count", [2, 20])
def test_query_counts_do_not_grow_with_the_entries_shown(
    client, viewer, web, count, django_assert_num_queries
):
    old = make_run(web, ago_s=7200)
    make_manifest(old, {f"d/f{i:03d}": "x" for i in range(count)})
    new = make_run(web, ago_s=600)
    make_manifest(new, {f"d/f{i:03d}": "y" for i in range(count)})
    client.force_login(viewer)
    # A folder: 2 (session, user) + 1 (the run with its source and manifest) + 1 (the
    # folder by (manifest, path)) + 1 (a page of its entries) + 2 (the viewer's
    # permissions, for the restore checkboxes).
    with django_assert_num_queries(7):
        response = browse(client, new, path="d")
    assert len(response.context["entries"]) == count
    # A search: 2 + 1 (the run) + 2 (permissions) + 1 (entries of folders whose path
    # matches) + 1 (entries whose name matches); on SQLite, + 1 to count the trigram
    # index's matches (up to a cap) and choose between it and a scan.
    manifests._sqlite_name_index()  # checked once per process, not per request
    with django_assert_num_queries(7 if connection.vendor == "postgresql" else 8):
        response = browse(client, new, q="f00")
    assert len(response.context["results"]) == min(count, 10)
    # A diff: 2 + 2 (permissions: the page needs view_run) + 1 (the run) + 1 (the backup
    # before it) + 1 (the list to choose from) + 2 (one slice of each backup: fewer
    # entries than the first slice holds).
    with django_assert_num_queries(9):
        response = client.get(reverse("manifest-diff", args=[new.pk]))
    assert len(response.context["changes"]) == count


def test_search_gives_the_same_answer_through_the_name_index_or_a_scan(
    client, viewer, backup, monkeypatch
):
    client.force_login(viewer)
    indexed = found(browse(client, backup, q="jpg"))
    # A term matched more often than the cap is searched by scanning the one backup.
    monkeypatch.setattr(manifests, "FTS_CAP", 1)
    assert found(browse(client, backup, q="jpg")) == indexed == ["photos/a.jpg", "photos/b.jpg"]


def test_search_forgets_the_entries_of_a_deleted_manifest(client, viewer, web, backup):
    backup.manifest.delete()
    other = make_run(web, ago_s=60)
    make_manifest(other, {"photos/c.jpg": "c"})
    client.force_login(viewer)
    assert found(browse(client, other, q="jpg")) == ["photos/c.jpg"]


def test_a_date_no_calendar_holds_is_shown_as_a_number_not_a_server_error(client, viewer, backup):
    # Manifests are checked for sane dates now; a catalog filled before may hold any.
    ManifestEntry.objects.filter(name="README.txt").update(mtime=10**12)
    client.force_login(viewer)
    listing = browse(client, backup)
    assert listing.status_code == 200 and "1000000000000 (out of range)" in listing.text
    found = browse(client, backup, q="README")
    assert found.status_code == 200 and "1000000000000 (out of range)" in found.text
