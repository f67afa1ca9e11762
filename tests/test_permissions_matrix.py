"""Who may open or do what: every URL against anonymous, no role, viewer, operator, admin.

Anonymous users are sent to the login page everywhere but /healthz and /metrics. A
signed-in account in no group sees nothing (403). Viewers see the sources, runs, files and
reports and change nothing: the backup, verify and drill actions need `backups.add_run`,
the restore pages `backups.run_restore`, the activity log `backups.view_auditevent`
(operators have it, viewers do not), and each refusal is a 403 and an audit record.
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from backups.models import Alert, AuditEvent, Silence
from tests.pages_helpers import make_manifest, make_policy, make_run, make_source

pytestmark = pytest.mark.django_db

LOGIN = "login"  # a redirect to the login page

# (name, method, expected status for anonymous, nobody, viewer, operator, admin)
MATRIX = [
    ("overview", "get", LOGIN, 403, 200, 200, 200),
    ("source-detail", "get", LOGIN, 403, 200, 200, 200),
    ("source-backup", "post", LOGIN, 403, 403, 302, 302),
    ("source-verify", "post", LOGIN, 403, 403, 302, 302),
    ("source-drill", "post", LOGIN, 403, 403, 302, 302),
    ("source-backup", "get", LOGIN, 403, 403, 405, 405),
    ("run-detail", "get", LOGIN, 403, 200, 200, 200),
    ("run-live", "get", LOGIN, 403, 200, 200, 200),
    ("run-cancel", "post", LOGIN, 403, 403, 302, 302),
    ("run-cancel", "get", LOGIN, 403, 403, 405, 405),
    ("manifest-browse", "get", LOGIN, 403, 200, 200, 200),
    ("manifest-diff", "get", LOGIN, 403, 200, 200, 200),
    ("restore-start", "get", LOGIN, 403, 403, 200, 200),
    ("restore-confirm", "post", LOGIN, 403, 403, 200, 200),
    ("restore-confirm", "get", LOGIN, 403, 403, 405, 405),
    ("compliance-report", "get", LOGIN, 403, 200, 200, 200),
    ("compliance-report-csv", "get", LOGIN, 403, 200, 200, 200),
    ("activity", "get", LOGIN, 403, 403, 200, 200),
    ("alert-list", "get", LOGIN, 403, 200, 200, 200),
    ("alert-detail", "get", LOGIN, 403, 200, 200, 200),
    ("alert-ack", "post", LOGIN, 403, 403, 302, 302),
    ("alert-ack", "get", LOGIN, 403, 403, 405, 405),
    ("silence-add", "post", LOGIN, 403, 403, 302, 302),
    ("silence-end", "post", LOGIN, 403, 403, 302, 302),
    ("source-runbook", "get", LOGIN, 403, 200, 200, 200),
    ("healthz", "get", 200, 200, 200, 200, 200),
    ("metrics", "get", 200, 200, 200, 200, 200),
    ("admin:index", "get", LOGIN, LOGIN, 200, 200, 200),
]
ROLES = ["anonymous", "nobody", "viewer", "operator", "admin_user"]


@pytest.fixture
def world(tmp_path, settings):
    """A source with two catalogued backups whose archive exists, for every URL to work."""
    live = tmp_path / "live"
    live.mkdir()
    source = make_source("web", policy=make_policy(), location=str(live))
    old = make_run(source, ago_s=7200)
    backup = make_run(source, ago_s=600)
    archive = settings.ARCHIVE_ROOT / f"{backup.pk}.tar.zst"
    archive.write_bytes(b"x")
    backup.archive = str(archive)
    backup.save(update_fields=["archive"])
    make_manifest(old, {"a.txt": "1"})
    make_manifest(backup, {"a.txt": "2"})
    now = timezone.now()
    alert = Alert.objects.create(
        source=source, condition="backup_failed", state="firing", since=now, fired_at=now,
        summary="[FIRING] Backup failed: web",
    )  # fmt: skip
    silence = Silence.objects.create(source=source, until=now + timedelta(hours=1))
    return {
        "source": source,
        "backup": backup,
        "target": str(tmp_path / "restored"),
        "alert": alert,
        "silence": silence,
    }


def send(client, world, name, method):
    source, backup = world["source"], world["backup"]
    args = {
        "source-detail": [source.slug],
        "source-backup": [source.slug],
        "source-verify": [source.slug],
        "source-drill": [source.slug],
        "run-detail": [backup.pk],
        "run-live": [backup.pk],
        "run-cancel": [backup.pk],
        "manifest-browse": [backup.pk],
        "manifest-diff": [backup.pk],
        "source-runbook": [source.slug],
        "alert-detail": [world["alert"].pk],
        "alert-ack": [world["alert"].pk],
        "silence-end": [world["silence"].pk],
    }.get(name, [])
    url = reverse(name, args=args)
    if name == "restore-start":
        url += f"?backup={backup.pk}"
    data = {}
    if name == "silence-add":
        data = {"source": source.slug, "duration": "1h"}
    if name == "restore-confirm" and method == "post":
        data = {
            "source": source.slug,
            "backup": backup.pk,
            "mode": "new",
            "target": world["target"],
        }
    return getattr(client, method)(url, data)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", MATRIX, ids=[f"{row[1]} {row[0]}" for row in MATRIX])
def test_each_role_gets_the_expected_answer_from_each_url(client, world, role, row, request):
    name, method = row[0], row[1]
    if role != "anonymous":
        client.force_login(request.getfixturevalue(role))
    response = send(client, world, name, method)
    expected = row[2 + ROLES.index(role)]
    if expected == LOGIN:
        assert response.status_code == 302
        # Ours, or the admin's own login page for /admin/.
        assert response["Location"].split("?")[0] in (reverse("login"), reverse("admin:login"))
    else:
        assert response.status_code == expected, response.content[:300]
    if expected == 403:
        assert AuditEvent.objects.filter(action="permission.denied").count() == 1


# The pages that need no permission at all: the way in and out, and the two endpoints.
OPEN = {"login", "logout", "healthz", "metrics"}
SAMPLE_ARGS = {"slug": "web", "int": 1, "str": "x", "path": "x"}


def dashboard_patterns():
    """Every URL pattern of the dashboard (the admin, mounted under /admin/, has its own)."""
    from django.urls import URLPattern, get_resolver

    for pattern in get_resolver().url_patterns:
        if isinstance(pattern, URLPattern):
            yield pattern


def sample_url(pattern) -> str:
    from django.urls import reverse

    converters = pattern.pattern.converters
    kwargs = {name: SAMPLE_ARGS[type(conv).__name__.removesuffix("Converter").lower()]
              for name, conv in converters.items()}  # fmt: skip
    return reverse(pattern.name, kwargs=kwargs)


def test_every_page_refuses_an_account_without_permissions(client, nobody, world):
    client.force_login(nobody)
    checked = []
    for pattern in dashboard_patterns():
        if pattern.name in OPEN:
            continue
        url = sample_url(pattern)
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 403, f"{method.upper()} {url}: {response.status_code}"
        checked.append(pattern.name)
    assert len(checked) == len(list(dashboard_patterns())) - len(OPEN)
    assert AuditEvent.objects.filter(action="permission.denied").count() == 2 * len(checked)


def test_the_admin_sends_an_account_without_staff_rights_to_its_login(client, nobody):
    client.force_login(nobody)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
