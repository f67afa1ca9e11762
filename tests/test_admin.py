"""Admin CRUD for policies and sources: validation messages, and an audit record per change."""

import pytest
from django.urls import reverse

from backups.models import AuditEvent, Policy, Source

pytestmark = pytest.mark.django_db

POLICY_FORM = {
    "name": "p1",
    "schedule": "0 * * * *",
    "rpo_s": "2h",
    "rto_s": "30m",
    "keep_last": "3",
    "keep_hourly": "0",
    "keep_daily": "7",
    "keep_weekly": "0",
    "keep_monthly": "0",
    "keep_yearly": "0",
    "compression": "zstd",
    "compression_level": "",
    "verify_after_backup": "on",
    "drill_every_s": "7d",
    "run_timeout_s": "1h",
    "check_queries": "[]",
}


def test_admin_creates_a_policy_from_human_durations_and_audits_it(client, admin_user):
    client.force_login(admin_user)
    response = client.post(reverse("admin:backups_policy_add"), POLICY_FORM)
    assert response.status_code == 302, response.content
    policy = Policy.objects.get(name="p1")
    assert (policy.rpo_s, policy.drill_every_s, policy.run_timeout_s) == (7200, 604800, 3600)
    event = AuditEvent.objects.get(action="policy.create")
    assert event.actor == admin_user and event.object_repr == "p1"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("schedule", "every hour", "not a cron expression"),
        ("rpo_s", "2 hours", "not a duration"),
        ("keep_daily", "-1", "greater than or equal to 0"),
        ("compression_level", "30", "less than or equal to 22"),
        ("check_queries", '[{"query": 1}]', "list of"),
    ],
)
def test_admin_shows_a_clear_error_for_a_bad_policy_value(
    client, admin_user, field, value, message
):
    client.force_login(admin_user)
    response = client.post(reverse("admin:backups_policy_add"), {**POLICY_FORM, field: value})
    assert response.status_code == 200
    assert message in response.text
    assert not Policy.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="policy.").exists()


def test_admin_edit_form_shows_stored_durations_with_units(client, admin_user, policy):
    client.force_login(admin_user)
    response = client.get(reverse("admin:backups_policy_change", args=[policy.pk]))
    assert 'value="2h"' in response.text and 'value="30m"' in response.text


def test_admin_refuses_a_source_with_a_missing_directory(client, admin_user, policy):
    client.force_login(admin_user)
    form = {
        "name": "s",
        "slug": "s",
        "kind": "directory",
        "location": "/no/such/dir",
        "excludes": "[]",
        "policy": policy.pk,
        "owner": "",
        "enabled": "on",
        "notes": "",
    }
    response = client.post(reverse("admin:backups_source_add"), form)
    assert response.status_code == 200
    assert "does not exist" in response.text
    assert not Source.objects.exists()


def test_admin_source_change_is_audited_with_changed_fields(client, admin_user, source):
    client.force_login(admin_user)
    form = {
        "name": source.name,
        "slug": source.slug,
        "kind": source.kind,
        "location": source.location,
        "excludes": '["*.log"]',
        "policy": source.policy_id,
        "owner": "team-a",
        "enabled": "on",
        "notes": "",
    }
    response = client.post(reverse("admin:backups_source_change", args=[source.pk]), form)
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="source.change")
    assert event.source == source
    assert event.detail == {"changes": {"excludes": [[], ["*.log"]], "owner": ["", "team-a"]}}


@pytest.mark.parametrize(
    "location",
    [
        "postgresql://app:secret@db/app",
        "postgresql://app@db/app?pass%77ord=secret",
        "postgresql://db/app?dbname=postgresql%3A%2F%2Fapp%3Asecret%40db%2Fapp",
    ],
)
def test_admin_refuses_a_postgres_location_with_a_password_however_spelled(
    client, admin_user, location
):
    client.force_login(admin_user)
    form = {
        "name": "pg",
        "slug": "pg",
        "kind": "postgres",
        "location": location,
        "excludes": "[]",
        "policy": "",
        "owner": "",
        "enabled": "on",
        "notes": "",
    }
    response = client.post(reverse("admin:backups_source_add"), form)
    assert response.status_code == 200
    assert "contains a password" in response.text
    assert not Source.objects.exists()
