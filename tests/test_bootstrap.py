"""`bootstrap` (run by `make run`): admin account once, demo seed once, roles always."""

from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import RequestFactory

from backups.models import Run, Source

pytestmark = pytest.mark.django_db


def bootstrap(**options) -> str:
    out = StringIO()
    call_command("bootstrap", stdout=out, **options)
    return out.getvalue()


def printed_password(output: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in output.splitlines() if "password:" in line
    )


def test_first_run_creates_an_admin_with_a_random_password_that_works(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = printed_password(bootstrap())
    # Login throttling reads the client's address: a login always comes with a request.
    login = RequestFactory().post("/login/")
    assert authenticate(login, username="admin", password=first) is not None
    get_user_model().objects.all().delete()
    second = printed_password(bootstrap())
    assert first != second


def test_second_run_creates_no_user_and_prints_no_password(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    bootstrap()
    output = bootstrap()
    assert "password" not in output
    assert get_user_model().objects.count() == 1


def test_demo_is_seeded_on_an_empty_catalog_and_only_then(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    output = bootstrap()
    assert "demo" in output
    demo = {source.name: source for source in Source.objects.select_related("policy")}
    assert set(demo) == {"demo-files", "demo-db"}
    assert (tmp_path / "demo" / "files" / "README.txt").is_file()
    assert demo["demo-db"].policy.rpo_s == 3600
    queued = Run.objects.filter(kind="backup", status="queued")
    assert sorted(queued.values_list("source__name", flat=True)) == ["demo-db", "demo-files"]
    assert "Seeded" not in bootstrap()
    assert Source.objects.count() == 2


def test_roles_let_operators_restore_and_viewers_only_look(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    bootstrap(no_demo=True)
    operators = set(
        Group.objects.get(name="operators").permissions.values_list("codename", flat=True)
    )
    viewers = set(Group.objects.get(name="viewers").permissions.values_list("codename", flat=True))
    assert "run_restore" in operators
    assert "run_restore" not in viewers and "view_run" in viewers
