"""The overview: the fleet's standing at a glance, worst first, refreshing itself."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from backups.models import Alert, Copy, Run, Silence, Storage
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


def fleet(count: int):
    """`count` sources: one breached, one whose last backup failed, one never backed up."""
    policy = make_policy()
    sources = []
    for index in range(count):
        source = make_source(f"src-{index:02d}", policy=policy, owner=f"team-{index % 3}")
        sources.append(source)
        if index == 2:
            continue  # never backed up
        age = 5 * 3600 if index == 0 else 600  # the first is past its 2 h RPO
        make_run(source, ago_s=age)
        if index == 1:
            make_run(source, status="failed", ago_s=300, error="Disk full.")
    return sources


def rows_of(response) -> list[str]:
    return [row.standing.source.name for row in response.context["pager"].items]


def test_breaches_and_failures_come_first(client, viewer):
    fleet(6)
    client.force_login(viewer)
    response = client.get(reverse("overview"))
    assert response.status_code == 200
    names = rows_of(response)
    assert names[:3] == ["src-00", "src-01", "src-02"]
    assert [row.health for row in response.context["pager"].items[:3]] == [
        "breached",
        "at_risk",
        "never",
    ]
    assert response.context["counts"] == {"breached": 1, "at_risk": 1, "never": 1, "ok": 3}
    assert response.context["activity"] == {"running": 0, "failed_24h": 1}


def test_status_is_written_in_words_not_only_in_colour(client, viewer):
    fleet(3)
    client.force_login(viewer)
    text = client.get(reverse("overview")).text
    assert "breached</span>" in text and "never backed up" in text
    assert "<caption>3 of 3 sources, breaches and failures first</caption>" in text
    assert '<th scope="col"' in text and '<th scope="row"' in text


def test_filters_by_status_kind_and_owner(client, viewer):
    sources = fleet(6)
    make_source("db", policy=sources[0].policy, kind="sqlite", location="/srv/db.sqlite3")
    client.force_login(viewer)
    assert rows_of(client.get(reverse("overview"), {"status": "ok"})) == [
        "src-03",
        "src-04",
        "src-05",
    ]
    assert rows_of(client.get(reverse("overview"), {"kind": "sqlite"})) == ["db"]
    assert rows_of(client.get(reverse("overview"), {"owner": "team-1"})) == ["src-01", "src-04"]


def test_sorts_by_a_column_both_ways(client, viewer):
    fleet(4)
    client.force_login(viewer)
    assert rows_of(client.get(reverse("overview"), {"sort": "name"})) == [
        "src-00",
        "src-01",
        "src-02",
        "src-03",
    ]
    # Descending by RPO age: the never-backed-up source has no age and stays last.
    assert rows_of(client.get(reverse("overview"), {"sort": "-age"})) == [
        "src-00",
        "src-01",
        "src-03",
        "src-02",
    ]


def test_the_htmx_refresh_gets_the_table_partial_only(client, viewer):
    fleet(2)
    client.force_login(viewer)
    response = client.get(reverse("overview"), {"status": "ok"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "dashboard/_sources_table.html"
    assert "<html" not in response.text
    # The partial polls itself with the same filters.
    assert 'hx-trigger="every 10s"' in response.text
    assert 'hx-get="/?status=ok"' in response.text


def test_a_running_backup_is_counted_and_linked(client, viewer):
    (source,) = fleet(1)
    run = make_run(source, status="running", ago_s=20)
    client.force_login(viewer)
    response = client.get(reverse("overview"))
    assert response.context["activity"]["running"] == 1
    assert reverse("run-detail", args=[run.pk]) in response.text


@pytest.mark.parametrize("count", [2, 20])
def test_query_count_does_not_grow_with_the_fleet(
    client, viewer, count, django_assert_num_queries, tmp_path
):
    sources = fleet(count)
    # Every backup copied offsite: the Offsite column is read with the sources.
    nas = Storage.objects.create(name="nas", kind="local", path=str(tmp_path / "nas"))
    sources[0].policy.copy_to.add(nas)
    for source in sources:
        for hours in range(2, 2 + count):
            backup = make_run(source, ago_s=hours * 3600)
            Copy.objects.create(backup=backup, storage=nas, status="succeeded")
    Run.objects.filter(source=sources[-1]).update(verified=True)
    # Every sort of run the standing looks up: a drill, a verification, one running.
    backup = Run.objects.filter(source=sources[0], status="succeeded").first()
    make_run(sources[0], kind="verify", ago_s=60, backup=backup, exclusive=False, drill=True,
             restore_seconds=12.0)  # fmt: skip
    make_run(sources[0], status="running", ago_s=5)
    # As many firing alerts as sources, one acknowledged and one silenced source.
    now = timezone.now()
    for source in sources:
        Alert.objects.create(source=source, condition="rpo_breached", state="firing", since=now,
                             fired_at=now, summary=f"[FIRING] RPO breached: {source.name}",
                             acknowledged_by_name="olivia", acknowledged_at=now)  # fmt: skip
    Silence.objects.create(source=sources[1], until=now + timedelta(hours=1))
    client.force_login(viewer)
    # 2 (session, user) + 2 (the viewer's permissions: the page needs view_source) + 3
    # (compliance: the sources joined to their stored standing and its two runs, the runs
    # in progress, the schedules; the 30-day figures are not shown here) + 1 (runs in
    # progress and failures of the last 24 h) + 2 (the firing alerts shown first, with
    # their sources, and the silences in force).
    with django_assert_num_queries(10):
        response = client.get(reverse("overview"))
    assert len(response.context["pager"].items) == count


def test_a_column_declared_once_heads_the_table_and_fills_every_row(client, viewer, monkeypatch):
    import importlib

    # The package re-exports the view under the module's name: fetch the module itself.
    overview = importlib.import_module("dashboard.views.overview")
    fleet(3)
    added = overview.Column("slug", "Slug", lambda row, now: f"slug:{row.source.slug}")
    monkeypatch.setattr(overview, "COLUMNS", (*overview.COLUMNS, added))
    client.force_login(viewer)
    text = client.get(reverse("overview")).text
    assert '<th scope="col">Slug</th>' in text
    for name in ("src-00", "src-01", "src-02"):
        assert f'<td data-label="Slug">slug:{name}</td>' in text
    # Sortable columns get a sort link; the new one, declared without a sort, none.
    assert 'title="Sort by rpo"' in text and 'title="Sort by slug"' not in text


def offsite_fleet(tmp_path):
    """Three sources: one with a copy older than its 2 h RPO, one whose policy copies but
    has no copy yet, one whose policy copies nowhere."""
    nas = Storage.objects.create(name="nas", kind="local", path=str(tmp_path / "nas"))
    copied = make_policy("copied")
    copied.copy_to.add(nas)
    stale = make_source("stale", policy=copied)
    old = make_run(stale, ago_s=3 * 3600)
    Copy.objects.create(backup=old, storage=nas, status="succeeded", copied_at=timezone.now())
    make_run(stale, ago_s=600)  # its newest backup is not copied yet
    make_run(make_source("uncopied", policy=copied), ago_s=600)
    make_run(make_source("local-only", policy=make_policy("plain")), ago_s=600)


def offsite_cells(text: str) -> dict[str, str]:
    """Return each row's Offsite cell, by the source named in the row."""
    cells = {}
    for row in re.findall(r"<tr class=\"health-.*?</tr>", text, re.S):
        name = re.search(r'<a href="/sources/([^/]+)/">', row).group(1)
        cells[name] = re.search(r'<td data-label="Offsite">(.*?)</td>', row, re.S).group(1)
    return cells


def test_the_offsite_column_marks_a_stale_copy_and_a_missing_one_against_the_rpo(
    client, viewer, tmp_path
):
    offsite_fleet(tmp_path)
    client.force_login(viewer)
    text = client.get(reverse("overview")).text
    assert 'title="Sort by offsite"' in text
    cells = offsite_cells(text)
    # The newest copied backup started 3 h ago: later than the 2 h RPO allows.
    assert 'data-status="at_risk"' in cells["stale"]
    assert "3h old / target 2h" in cells["stale"]
    # Copies asked for, none made: at risk, and said so.
    assert 'data-status="at_risk"' in cells["uncopied"]
    assert "none / target 2h" in cells["uncopied"]
    # No copy asked for: nothing to judge.
    assert cells["local-only"] == "—"


def test_a_fresh_copy_shows_ok_in_the_offsite_column(client, viewer, tmp_path):
    nas = Storage.objects.create(name="nas", kind="local", path=str(tmp_path / "nas"))
    policy = make_policy("copied")
    policy.copy_to.add(nas)
    source = make_source("fresh", policy=policy)
    backup = make_run(source, ago_s=1200)
    Copy.objects.create(backup=backup, storage=nas, status="succeeded", copied_at=timezone.now())
    client.force_login(viewer)
    cell = offsite_cells(client.get(reverse("overview")).text)["fresh"]
    assert 'data-status="ok"' in cell and "20m old / target 2h" in cell


def test_sorting_by_offsite_puts_the_missing_copy_first_and_no_copy_target_last(
    client, viewer, tmp_path
):
    offsite_fleet(tmp_path)
    client.force_login(viewer)
    assert rows_of(client.get(reverse("overview"), {"sort": "-offsite"})) == [
        "uncopied",
        "stale",
        "local-only",
    ]
    assert rows_of(client.get(reverse("overview"), {"sort": "offsite"})) == [
        "stale",
        "uncopied",
        "local-only",
    ]
