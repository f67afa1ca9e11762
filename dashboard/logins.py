"""Audit records for logins: each success, each failure, each lockout.

django-axes counts failures and refuses a user name from an address once it reaches
AXES_FAILURE_LIMIT; these receivers put the same facts in the audit log, beside the
restores and the changes, where an auditor reads them.
"""

from __future__ import annotations

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed

from backups.audit import audit_record
from backups.models import AuditEvent
from dashboard.middleware import client_address

# The user name of a failed login is whatever was typed: keep it bounded.
NAME_LIMIT = 150


def _where(request) -> dict:
    if request is None:
        return {}
    return {"ip": client_address(request), "path": request.path}


def _logged_in(sender, request, user, **kwargs) -> None:
    audit_record(
        actor=user, action="login", outcome=AuditEvent.Outcome.SUCCEEDED, detail=_where(request)
    )


def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django hides the password in `credentials`; the user name stays readable.
    typed = str(credentials.get("username", ""))[:NAME_LIMIT]
    detail = {"username": typed, **_where(request)}
    if getattr(request, "axes_locked_out", False):
        detail["locked_out"] = True
    audit_record(
        actor=None, action="login.failed", outcome=AuditEvent.Outcome.FAILED, detail=detail
    )


def _locked_out(sender, request, username, ip_address, **kwargs) -> None:
    # Every failure past the limit signals again; the lockout itself is recorded once,
    # when the failure that reached the limit locks the pair out.
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is not None and failures != settings.AXES_FAILURE_LIMIT:
        return
    audit_record(
        actor=None,
        action="login.lockout",
        outcome=AuditEvent.Outcome.DENIED,
        detail={
            "username": str(username or "")[:NAME_LIMIT],
            "ip": ip_address,
            "failures": failures,
            "cooloff_s": int(settings.AXES_COOLOFF_TIME.total_seconds()),
        },
    )


def connect() -> None:
    """Connect the receivers (once, from the app's ready(), after django-axes' own)."""
    user_logged_in.connect(_logged_in, dispatch_uid="audit-login")
    user_login_failed.connect(_login_failed, dispatch_uid="audit-login-failed")
    user_locked_out.connect(_locked_out, dispatch_uid="audit-login-lockout")
