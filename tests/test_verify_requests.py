"""A backup is verified, and drilled, once at a time: a second request gets the first."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from backups.models import AuditEvent, Run
from backups.services.verify import verify_request
from tests.pages_helpers import make_policy, make_run, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def web():
    return make_source("web", policy=make_policy())


@pytest.mark.parametrize("name, drill", [("source-drill", True), ("source-verify", False)])
def test_a_second_request_from_the_dashboard_leads_to_the_queued_one(
    client, operator, web, name, drill
):
    backup = make_run(web)
    client.force_login(operator)
    first = client.post(reverse(name, args=["web"]))
    second = client.post(reverse(name, args=["web"]), follow=True)
    run = Run.objects.get(kind="verify")
    assert (run.backup_id, run.drill) == (backup.pk, drill)
    assert first["Location"] == reverse("run-detail", args=[run.pk])
    assert second.redirect_chain[-1][0] == reverse("run-detail", args=[run.pk])
    what = "drill" if drill else "verification"
    assert f"A {what} of backup #{backup.pk} is already queued as run #{run.pk}" in second.text
    audited = AuditEvent.objects.filter(action__endswith=".request").order_by("pk")
    assert [event.detail.get("already_active", False) for event in audited] == [False, True]


def test_a_verification_and_a_drill_of_one_backup_may_wait_side_by_side(web):
    backup = make_run(web)
    check = verify_request(backup=backup, trigger="manual", enqueue=False)
    drill = verify_request(backup=backup, trigger="manual", drill=True, enqueue=False)
    assert check.pk != drill.pk and not check.already_active and not drill.already_active


def test_a_new_request_is_queued_once_the_previous_one_ended(web):
    backup = make_run(web)
    first = verify_request(backup=backup, trigger="schedule", drill=True, enqueue=False)
    Run.objects.filter(pk=first.pk).update(status="succeeded")
    second = verify_request(backup=backup, trigger="schedule", drill=True, enqueue=False)
    assert second.pk != first.pk and not second.already_active


def test_the_command_line_gets_the_queued_verification_back(web):
    backup = make_run(web)
    ids = []
    for _ in range(2):
        out, err = StringIO(), StringIO()
        call_command("verify", str(backup.pk), stdout=out, stderr=err)
        ids.append(out.getvalue().strip())
    assert ids[0] == ids[1]
    assert f"is already queued as run #{ids[0]}; no second one was queued" in err.getvalue()
    assert Run.objects.filter(kind="verify").count() == 1


def test_the_database_refuses_a_second_active_verification_of_a_backup(web):
    # What keeps two requests racing each other (housekeeping's drill and a person's)
    # from both being queued.
    backup = make_run(web)
    fields = {"source": web, "kind": "verify", "backup": backup, "drill": True, "exclusive": False}
    Run.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(**fields, status="running")
