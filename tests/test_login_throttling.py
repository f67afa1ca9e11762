"""Failed logins are counted per user name and address; past the limit, even the right
password is refused for the cool-off, on our login page and on the admin's; successes,
failures and lockouts land in the audit log."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.urls import reverse
from django.utils import timezone

from backups.models import AuditEvent

pytestmark = pytest.mark.django_db

PAGES = ["login", "admin:login"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(
        "alice", password="right-horse", is_staff=True, is_superuser=True
    )


def log_in(client, page, password, *, address="198.51.100.7", **headers):
    return client.post(
        reverse(page),
        {"username": "alice", "password": password},
        REMOTE_ADDR=address,
        **headers,
    )


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("page", PAGES)
def test_thirty_wrong_passwords_then_the_right_one_is_refused(client, alice, settings, page):
    for _ in range(30):
        assert log_in(client, page, "guess").status_code in (200, 429)
    response = log_in(client, page, "right-horse")
    assert response.status_code == 429
    assert "Too many failed logins" in response.text
    assert not signed_in(client)
    failed = AuditEvent.objects.filter(action="login.failed")
    assert failed.count() == 31
    # The failure that reaches the limit locks the pair out, and every one after it.
    locked = 31 - (settings.AXES_FAILURE_LIMIT - 1)
    assert failed.filter(detail__locked_out=True).count() == locked
    lockout = AuditEvent.objects.get(action="login.lockout")
    assert lockout.detail["username"] == "alice" and lockout.detail["ip"] == "198.51.100.7"
    assert lockout.detail["cooloff_s"] == settings.AXES_COOLOFF_TIME.total_seconds()
    assert not AuditEvent.objects.filter(action="login").exists()


def test_the_limit_comes_from_the_settings(client, alice, settings):
    settings.AXES_FAILURE_LIMIT = 2
    log_in(client, "login", "guess")
    assert log_in(client, "login", "right-horse").status_code == 302
    client.logout()
    log_in(client, "login", "guess")
    log_in(client, "login", "guess")
    assert log_in(client, "login", "right-horse").status_code == 429


def test_a_success_before_the_limit_is_audited_and_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "login", "guess")
    response = log_in(client, "login", "right-horse")
    assert response.status_code == 302 and signed_in(client)
    event = AuditEvent.objects.get(action="login")
    assert event.actor == alice and event.detail == {"ip": "198.51.100.7", "path": "/login/"}
    client.logout()
    # The count started again: as many failures as before still leave the door open.
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "login", "guess")
    assert log_in(client, "login", "right-horse").status_code == 302


def test_a_lockout_holds_one_address_not_the_account_everywhere(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "login", "guess", address="198.51.100.7")
    assert log_in(client, "login", "right-horse", address="198.51.100.7").status_code == 429
    assert log_in(client, "login", "right-horse", address="203.0.113.20").status_code == 302


def test_the_right_password_works_again_after_the_cool_off(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "login", "guess")
    assert log_in(client, "login", "right-horse").status_code == 429
    long_ago = timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    AccessAttempt.objects.update(attempt_time=long_ago)
    assert log_in(client, "login", "right-horse").status_code == 302


def test_a_forged_forwarded_for_header_does_not_escape_the_lockout(client, alice, settings):
    # Without trusted proxies the header is ignored: a new value per try changes nothing.
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "login", "guess", HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}")
    response = log_in(client, "login", "right-horse", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert response.status_code == 429


def test_behind_a_proxy_the_client_is_the_address_the_proxy_saw(client, alice, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    # The client may put anything on the left; only the last entry was written by our proxy.
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        log_in(
            client,
            "login",
            "guess",
            address=proxy,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}, 198.51.100.7",
        )
    lockout = AuditEvent.objects.get(action="login.lockout")
    assert lockout.detail["ip"] == "198.51.100.7"
    forged = log_in(
        client, "login", "right-horse", address=proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7"
    )
    assert forged.status_code == 429
    # Another client behind the same proxy is not held by that lockout.
    other = log_in(
        client, "login", "right-horse", address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.5"
    )
    assert other.status_code == 302
