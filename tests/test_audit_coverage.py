"""What the audit log records beyond restores: pins, accounts and roles, run requests,
the operating-system account behind a command, and old and new values of every edit."""

import pwd
from io import StringIO

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.urls import reverse

from backups.models import AuditEvent, Policy, Run
from tests.pages_helpers import make_run

pytestmark = pytest.mark.django_db


class QuickPBKDF2Hasher(PBKDF2PasswordHasher):
    """The default hasher, with one iteration: fast tests."""

    algorithm = "quick_pbkdf2"
    iterations = 1


ME = pwd.getpwuid(__import__("os").geteuid()).pw_name


def user_form(user, **changes):
    """The admin's change form of `user`, as the browser posts it back."""
    form = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "initial-date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "initial-date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "groups": [],
        "user_permissions": [],
    }
    if user.is_staff:
        form["is_staff"] = "on"
    form.update(changes)
    return {key: value for key, value in form.items() if value is not None}


def test_pinning_and_unpinning_a_backup_in_the_admin_is_audited(client, admin_user, source):
    backup = make_run(source)
    client.force_login(admin_user)
    url = reverse("admin:backups_run_change", args=[backup.pk])
    assert client.post(url, {"keep": "on"}).status_code == 302
    assert client.post(url, {}).status_code == 302
    events = AuditEvent.objects.filter(action__startswith="backup.").order_by("pk")
    assert [(e.action, e.actor, e.object_id, e.source) for e in events] == [
        ("backup.pin", admin_user, str(backup.pk), source),
        ("backup.unpin", admin_user, str(backup.pk), source),
    ]


def test_adding_a_user_to_a_group_and_making_them_superuser_in_the_admin_is_audited(
    client, admin_user, viewer
):
    operators = Group.objects.create(name="operators")
    client.force_login(admin_user)
    url = reverse("admin:auth_user_change", args=[viewer.pk])
    form = user_form(viewer, groups=[operators.pk], is_superuser="on")
    assert client.post(url, form).status_code == 302
    groups = AuditEvent.objects.get(action="user.groups")
    assert (groups.actor, groups.object_repr, groups.detail) == (
        admin_user,
        "victor",
        {"added": ["operators"]},
    )
    # The viewer's own permissions were left out of the form: the admin removed them.
    removed = AuditEvent.objects.filter(action="user.permissions").latest("pk")
    assert removed.detail == {
        "removed": [
            "backups.view_alert",
            "backups.view_policy",
            "backups.view_run",
            "backups.view_source",
        ]
    }
    change = AuditEvent.objects.get(action="user.change")
    assert change.actor == admin_user
    assert change.detail == {"changes": {"is_superuser": [False, True]}}


def test_a_group_permission_change_in_the_admin_is_audited(client, admin_user):
    group = Group.objects.create(name="viewers")
    view_run = Permission.objects.get(codename="view_run")
    client.force_login(admin_user)
    url = reverse("admin:auth_group_change", args=[group.pk])
    assert client.post(url, {"name": "viewers", "permissions": [view_run.pk]}).status_code == 302
    assert client.post(url, {"name": "viewers", "permissions": []}).status_code == 302
    events = AuditEvent.objects.filter(action="group.permissions").order_by("pk")
    assert [(e.actor, e.object_repr, e.detail) for e in events] == [
        (admin_user, "viewers", {"added": ["backups.view_run"]}),
        (admin_user, "viewers", {"removed": ["backups.view_run"]}),
    ]


def test_creating_and_deleting_a_user_in_the_admin_is_audited(client, admin_user):
    client.force_login(admin_user)
    form = {"username": "eve", "password1": "a-long-pass-phrase", "password2": "a-long-pass-phrase"}
    form["usable_password"] = "true"
    assert client.post(reverse("admin:auth_user_add"), form).status_code == 302
    created = AuditEvent.objects.get(action="user.create", object_repr="eve")
    assert created.actor == admin_user and created.object_repr == "eve"
    assert created.detail == {
        "username": "eve",
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
    }
    eve = created.object_id
    response = client.post(reverse("admin:auth_user_delete", args=[eve]), {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="user.delete")
    assert (deleted.actor, deleted.object_id) == (admin_user, eve)


def test_a_role_change_from_a_shell_is_recorded_under_the_os_account(viewer):
    group = Group.objects.create(name="operators")
    group.user_set.add(viewer)
    viewer.groups.clear()
    events = AuditEvent.objects.filter(action="user.groups").order_by("pk")
    assert [(e.actor_name, e.object_repr, e.detail) for e in events] == [
        (f"cli:{ME}", "victor", {"added": ["operators"], "os_user": ME}),
        (f"cli:{ME}", "victor", {"removed": ["operators"], "os_user": ME}),
    ]
    assert events[0].actor is None


def test_backup_verify_and_drill_requests_from_the_dashboard_are_audited(client, operator, source):
    make_run(source)
    client.force_login(operator)
    for name in ("source-backup", "source-verify", "source-drill"):
        assert client.post(reverse(name, args=[source.slug])).status_code == 302
    events = AuditEvent.objects.filter(action__endswith=".request").order_by("pk")
    assert [(e.action, e.outcome, e.actor, e.source) for e in events] == [
        ("backup.request", "requested", operator, source),
        ("verify.request", "requested", operator, source),
        ("drill.request", "requested", operator, source),
    ]
    # Refused because a backup is already queued: audited as failed.
    client.post(reverse("source-backup", args=[source.slug]))
    refused = AuditEvent.objects.filter(action="backup.request").latest("pk")
    assert refused.outcome == "failed" and "busy" in refused.detail["error"]


# Inline runs close their database connections as workers do: a real transaction, not a
# test one wrapped around them.
@pytest.mark.django_db(transaction=True)
def test_a_command_line_restore_names_the_os_account_and_the_sudo_caller(
    source, tmp_path, monkeypatch
):
    out = StringIO()
    with pytest.raises(SystemExit):
        call_command("backup", source.name, "--inline", stdout=out, stderr=StringIO())
    backup = Run.objects.get(kind="backup")
    monkeypatch.setenv("SUDO_USER", "alice")
    with pytest.raises(SystemExit):
        call_command(
            "restore", str(backup.pk), "--to", str(tmp_path / "out"), "--inline",
            stdout=out, stderr=StringIO(),
        )  # fmt: skip
    request = AuditEvent.objects.get(action="restore.request")
    assert request.actor_name == "cli:alice"
    assert request.detail["os_user"] == ME and request.detail["sudo_user"] == "alice"
    backed_up = AuditEvent.objects.get(action="backup.request")
    assert backed_up.actor_name == f"cli:{ME}" and "sudo_user" not in backed_up.detail


def test_a_policy_edit_in_the_admin_records_old_and_new_values(client, admin_user, policy):
    client.force_login(admin_user)
    form = {
        "name": policy.name,
        "schedule": "30 * * * *",
        "rpo_s": "3h",
        "rto_s": "30m",
        "keep_last": "3",
        "keep_hourly": "0",
        "keep_daily": "0",
        "keep_weekly": "0",
        "keep_monthly": "0",
        "keep_yearly": "0",
        "compression": "zstd",
        "compression_level": "",
        "verify_after_backup": "on",
        "drill_every_s": "",
        "run_timeout_s": "1h",
        "check_queries": "[]",
    }
    response = client.post(reverse("admin:backups_policy_change", args=[policy.pk]), form)
    assert response.status_code == 302, response.content[:500]
    event = AuditEvent.objects.get(action="policy.change")
    assert event.detail == {
        "changes": {"schedule": ["0 * * * *", "30 * * * *"], "rpo_s": [7200, 10800]}
    }


def test_policy_and_source_added_on_the_command_line_are_audited_with_their_values(data_dir):
    call_command("policy", "add", "nightly", "--schedule", "0 3 * * *", "--keep-daily", "7")
    call_command(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "nightly",
    )  # fmt: skip
    policy = AuditEvent.objects.get(action="policy.create")
    assert policy.actor_name == f"cli:{ME}" and policy.object_id == str(Policy.objects.get().pk)
    assert policy.detail["changes"]["schedule"] == [None, "0 3 * * *"]
    assert policy.detail["changes"]["keep_daily"] == [None, 7]
    source = AuditEvent.objects.get(action="source.create")
    assert source.detail["changes"]["location"] == [None, str(data_dir)]
    assert source.detail["changes"]["policy"] == [None, "nightly"]
    assert source.source.name == "files"


def test_a_password_change_is_audited_without_the_password(client, admin_user, viewer):
    client.force_login(admin_user)
    url = reverse("admin:auth_user_password_change", args=[viewer.pk])
    form = {"password1": "another-long-phrase", "password2": "another-long-phrase"}
    assert client.post(url, form).status_code == 302
    event = AuditEvent.objects.get(action="user.password")
    assert (event.actor, event.object_repr, event.detail) == (admin_user, "victor", {})


def test_a_login_records_no_account_change(client, viewer):
    client.force_login(viewer)
    assert not AuditEvent.objects.filter(action__in=["user.change", "user.password"]).exists()


def test_a_password_rehashed_at_login_is_no_password_change(client, viewer, settings):
    # Django re-hashes a password whose hasher is outdated when its owner logs in.
    viewer.set_password("a-long-pass-phrase")
    viewer.save()
    AuditEvent.objects.all().delete()
    settings.PASSWORD_HASHERS = [
        "tests.test_audit_coverage.QuickPBKDF2Hasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    form = {"username": "victor", "password": "a-long-pass-phrase"}
    assert client.post(reverse("login"), form).status_code == 302
    viewer.refresh_from_db()
    assert viewer.password.startswith("quick_pbkdf2$")
    assert not AuditEvent.objects.filter(action="user.password").exists()
