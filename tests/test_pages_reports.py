"""The compliance report (and its CSV) and the activity log."""

import csv
import io

import pytest
from django.urls import reverse
from django.utils.html import escape

from backups.audit import audit_record
from backups.models import AuditEvent
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


def fleet(count: int):
    policy = make_policy()
    for index in range(count):
        source = make_source(f"src-{index:02d}", policy=policy, owner="ops")
        make_run(source, ago_s=(index + 1) * 3000)
        make_run(source, ago_s=(index + 1) * 3000 + 3600, status="failed")


def test_the_report_lists_targets_measures_and_the_last_30_days(client, viewer):
    fleet(3)
    client.force_login(viewer)
    response = client.get(reverse("compliance-report"))
    assert response.status_code == 200
    standings = response.context["pager"].items
    assert [s.source.name for s in standings] == ["src-00", "src-01", "src-02"]
    assert [s.rpo_status for s in standings] == ["ok", "at_risk", "breached"]
    text = response.text
    assert "Within RPO, 30 d" in text and "50.0 %" in text  # one of two backups succeeded
    assert reverse("compliance-report-csv") in text


def test_the_csv_has_one_row_per_source_with_machine_readable_values(client, viewer):
    fleet(2)
    client.force_login(viewer)
    response = client.get(reverse("compliance-report-csv"))
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment; filename=" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["source"] for row in rows] == ["src-00", "src-01"]
    first = rows[0]
    assert first["rpo_target_s"] == "7200" and first["rpo_status"] == "ok"
    assert first["age_s"] == "3000" or abs(float(first["age_s"]) - 3000) < 5
    assert first["success_rate_30d"] == "0.5000"
    assert first["missed_30d"] == "0"


def test_the_csv_cannot_carry_a_spreadsheet_formula(client, viewer):
    policy = make_policy(name="+cmd|' /C calc'!A0")
    make_source('=HYPERLINK("http://evil.example/","x")', policy=policy, owner="@SUM(A1)")
    make_source("\t=1+1", owner="-2+3")
    make_source("plain", owner="-42")
    client.force_login(viewer)
    response = client.get(reverse("compliance-report-csv"))
    rows = {row["source"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}
    hyperlink = rows['\'=HYPERLINK("http://evil.example/","x")']
    assert hyperlink["owner"] == "'@SUM(A1)"
    assert hyperlink["policy"] == "'+cmd|' /C calc'!A0"
    assert rows["'\t=1+1"]["owner"] == "'-2+3"
    # A number is no formula: it stays a number.
    assert rows["plain"]["owner"] == "-42"


@pytest.mark.parametrize("count", [2, 20])
def test_report_query_count_does_not_grow_with_the_fleet(
    client, viewer, count, django_assert_num_queries
):
    fleet(count)
    client.force_login(viewer)
    # 2 (session, user) + 2 (the viewer's permissions: the page needs view_source) + 1 (the
    # page of sources) + 5 (their compliance standing: the sources with their stored
    # standing, the runs in progress, the 30-day counts, the RPO gaps, the schedules).
    with django_assert_num_queries(10):
        client.get(reverse("compliance-report"))
    # The CSV: 2 + 2 (permissions) + the 5 of the standing of the whole fleet.
    with django_assert_num_queries(9):
        client.get(reverse("compliance-report-csv"))


def events(response):
    # The accounts' own records (their creation, their logins) are not what these tests read.
    return [
        (event.actor_name, event.action)
        for event in response.context["pager"].items
        if not event.action.startswith(("user.", "login"))
    ]


@pytest.fixture
def log(admin_user, operator):
    web = make_source("web")
    db = make_source("db")
    audit_record(actor=operator, action="restore.request", outcome="requested", source=web)
    audit_record(actor=admin_user, action="source.change", outcome="succeeded", obj=db)
    audit_record(actor=None, action="restore.finish", outcome="succeeded", source=web)
    return web, db


def test_the_activity_log_is_newest_first(client, operator, log):
    client.force_login(operator)
    response = client.get(reverse("activity"))
    assert events(response) == [
        ("system", "restore.finish"),
        ("root", "source.change"),
        ("olivia", "restore.request"),
    ]
    assert "<caption>Audit log, newest first</caption>" in response.text


def test_the_activity_log_is_searchable_by_actor_action_and_source(client, operator, log):
    client.force_login(operator)
    assert events(client.get(reverse("activity"), {"actor": "oliv"})) == [
        ("olivia", "restore.request")
    ]
    assert events(client.get(reverse("activity"), {"action": "restore"})) == [
        ("system", "restore.finish"),
        ("olivia", "restore.request"),
    ]
    assert events(client.get(reverse("activity"), {"source": "db"})) == [("root", "source.change")]


def test_the_activity_log_is_paginated(client, operator):
    client.force_login(operator)
    AuditEvent.objects.all().delete()  # the operator's creation and login
    AuditEvent.objects.bulk_create(
        AuditEvent(actor_name="bot", action=f"test.{i}", outcome="succeeded") for i in range(60)
    )
    first = client.get(reverse("activity"))
    assert len(first.context["pager"].items) == 50 and first.context["pager"].has_next
    second = client.get(reverse("activity"), {"page": 2})
    assert len(second.context["pager"].items) == 10


@pytest.mark.parametrize("count", [2, 20])
def test_activity_query_count_does_not_grow_with_the_log(
    client, operator, count, django_assert_num_queries
):
    source = make_source("web")
    for index in range(count):
        audit_record(actor=operator, action=f"test.{index}", outcome="succeeded", source=source)
    client.force_login(operator)
    # 2 (session, user) + 2 (the operator's permissions: the log needs view_auditevent)
    # + 1 (a page of events with their sources).
    with django_assert_num_queries(5):
        client.get(reverse("activity"))


def test_an_edit_shows_its_old_and_new_values_in_the_activity_log(client, operator):
    db = make_source("db")
    changes = {"owner": ["", "team-a"], "excludes": [[], ["*.log"]]}
    audit_record(actor=operator, action="source.change", outcome="succeeded", obj=db,
                 detail={"changes": changes})  # fmt: skip
    client.force_login(operator)
    response = client.get(reverse("activity"), {"action": "source."})
    shown = escape('{"owner": ["", "team-a"], "excludes": [[], ["*.log"]]}')
    assert shown in response.text
