"""`bootstrap`: first-run set-up for `make run`: roles, an admin account, a demo fleet."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand

from backups.demo import seed_demo
from backups.models import Run, Source
from backups.services.backup import backup_request

# Viewers see the sources, their runs, their files, alerts and the compliance report, and
# change nothing. Operators also back up, verify, drill, cancel and restore, acknowledge and
# silence alerts, and read the audit
# log: it names people, the addresses of failed logins and every refusal, which is for
# those who answer for the fleet, not for everyone who may look at it.
ROLES = {
    "operators": [
        "run_restore",
        "add_run",
        "view_run",
        "view_source",
        "view_policy",
        "view_auditevent",
        "view_alert",
        "acknowledge_alert",
    ],
    "viewers": ["view_run", "view_source", "view_policy", "view_alert"],
}


class Command(BaseCommand):
    help = "Create roles, an admin account on an empty database, and a demo fleet."

    def add_arguments(self, parser):
        parser.add_argument("--no-demo", action="store_true", help="do not seed demo sources")

    def handle(self, *args, **options):
        for role, codenames in ROLES.items():
            group, _ = Group.objects.get_or_create(name=role)
            group.permissions.set(
                Permission.objects.filter(content_type__app_label="backups", codename__in=codenames)
            )
        settings.ARCHIVE_ROOT.mkdir(parents=True, exist_ok=True)
        users = get_user_model().objects
        if not users.exists():
            # A fresh random password every time: never a fixed default credential.
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "", password)
            self.stdout.write(
                self.style.SUCCESS(
                    "Created the admin account. Log in at http://127.0.0.1:8000/ with\n"
                    f"    user: admin\n    password: {password}\n"
                    "This password is shown once; change it with "
                    "`python manage.py changepassword admin`."
                )
            )
        if not options["no_demo"] and not Source.objects.exists():
            sources = seed_demo(settings.VAR_DIR / "demo")
            # A first backup right away, so the overview shows real standing within
            # seconds of the workers starting instead of "never backed up" for 15 minutes.
            for source in sources:
                backup_request(source=source, trigger=Run.Trigger.MANUAL)
            names = ", ".join(source.name for source in sources)
            self.stdout.write(
                f"Seeded a demo: sources {names} (under {settings.VAR_DIR / 'demo'}) "
                "with a policy backing them up every 15 minutes; their first backups are "
                "queued and start with the workers."
            )
