"""Forms of the dashboard: list filters and the guarded restore."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from django import forms
from django.conf import settings
from django.utils import timezone

from backups.models import Run, Source
from backups.services.compliance import Health
from backups.services.restore import restore_target_problem

HEALTH_CHOICES = [("", "any status"), *Health.choices]
# A SQLite file or a PostgreSQL dump is one piece: there are no paths to pick inside it.
WHOLE_ONLY = {Source.Kind.SQLITE, Source.Kind.POSTGRES}


class OverviewFilterForm(forms.Form):
    """Narrow the overview to a status, a kind or an owner."""

    status = forms.ChoiceField(choices=HEALTH_CHOICES, required=False)
    kind = forms.ChoiceField(
        choices=[("", "any kind"), *Source.Kind.choices], required=False, label="Kind"
    )
    owner = forms.ChoiceField(required=False, label="Owner")

    def __init__(self, *args, owners: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["owner"].choices = [("", "any owner"), *((o, o) for o in owners)]


class RunFilterForm(forms.Form):
    """Narrow a source's runs to a kind and a status."""

    kind = forms.ChoiceField(choices=[("", "any kind"), *Run.Kind.choices], required=False)
    status = forms.ChoiceField(choices=[("", "any status"), *Run.Status.choices], required=False)


class RestorePointRangeForm(forms.Form):
    """Narrow a source's restore points to those taken within a range of days."""

    taken_from = forms.DateField(
        required=False, label="Taken from", widget=forms.DateInput(attrs={"type": "date"})
    )
    taken_until = forms.DateField(
        required=False, label="until", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self):
        data = super().clean()
        start, end = data.get("taken_from"), data.get("taken_until")
        if start and end and start > end:
            raise forms.ValidationError("The range ends before it starts: swap the two dates.")
        return data


class ActivityFilterForm(forms.Form):
    """Search the audit log by who, what and which source."""

    actor = forms.CharField(required=False, max_length=150, label="Actor")
    action = forms.CharField(
        required=False,
        max_length=50,
        label="Action",
        widget=forms.TextInput(attrs={"placeholder": "restore, permission, source…"}),
    )
    source = forms.CharField(required=False, max_length=100, label="Source")


def suggested_target(source: Source, backup: Run | None) -> str:
    """Return a new location named after the backup, where a restore may go.

    A folder or database file goes in the first of RESTORE_ROOTS; a pod path beside the
    source's in the same pod; a PostgreSQL database is a new one on the source's server.
    """
    suffix = f"restored-{backup.pk}" if backup else "restored"
    location = source.location
    if source.kind in (Source.Kind.DIRECTORY, Source.Kind.SQLITE):
        if not settings.RESTORE_ROOTS:
            return ""
        ext = os.path.splitext(location)[1] if source.kind == Source.Kind.SQLITE else ""
        return str(Path(settings.RESTORE_ROOTS[0]) / f"{source.slug}-{suffix}{ext}")
    if source.kind == Source.Kind.KUBERNETES and ":" in location:
        pod, path = location.split(":", 1)
        return f"{pod}:{path.rstrip('/')}-{suffix}"
    if source.kind == Source.Kind.POSTGRES:
        parts = urlsplit(location)
        if parts.path.strip("/"):
            dbname = f"{parts.path.strip('/')}_{suffix.replace('-', '_')}"
            return urlunsplit(parts._replace(path=f"/{dbname}"))
    return ""


class RestoreForm(forms.Form):
    """Choose a restore point, where it goes, and optionally which paths."""

    backup = forms.TypedChoiceField(coerce=int, label="Restore point")
    mode = forms.ChoiceField(
        label="Restore to",
        choices=[
            ("new", "A new location (nothing existing is touched)"),
            ("in_place", "In place, over the source's live data"),
        ],
        initial="new",
        widget=forms.RadioSelect,
    )
    target = forms.CharField(
        required=False,
        max_length=1000,
        label="New location",
        help_text=(
            "Same form as the source's location: a folder or file must be new (or an empty "
            "folder) inside the restore folders, a database new or empty."
        ),
    )
    paths = forms.CharField(
        required=False,
        label="Only these paths",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One path per line, relative to the source root; empty restores everything.",
    )

    def __init__(self, *args, source: Source, backups: list[Run], **kwargs):
        super().__init__(*args, **kwargs)
        self.source = source
        self.backups = {run.pk: run for run in backups}
        for run in backups:
            run.source = source  # they are its backups: no query per look-up
        self.fields["backup"].choices = [(run.pk, _backup_label(run)) for run in backups]
        if source.kind in WHOLE_ONLY:
            del self.fields["paths"]
        if source.kind == Source.Kind.KUBERNETES:
            # tar in a pod writes over files of the same name: say so from the start.
            self.fields["mode"].choices = [
                ("new", "A new location (files of the same name there are replaced)"),
                *self.fields["mode"].choices[1:],
            ]

    @property
    def chosen(self) -> Run | None:
        """Return the chosen backup once the form is valid."""
        return self.backups.get(self.cleaned_data.get("backup"))

    @property
    def in_place(self) -> bool:
        return self.cleaned_data.get("mode") == "in_place"

    def clean_paths(self) -> list[str]:
        seen: list[str] = []
        for line in self.cleaned_data.get("paths", "").splitlines():
            path = line.strip().strip("/")
            if path and path not in seen:
                if ".." in PurePosixPath(path).parts:
                    raise forms.ValidationError(f"{line.strip()!r} leaves the source root.")
                seen.append(path)
        return seen

    def clean(self):
        data = super().clean()
        backup = self.chosen
        if backup is None:
            return data
        in_place = data.get("mode") == "in_place"
        target = (data.get("target") or "").strip()
        if not in_place:
            if not target:
                self.add_error("target", "Give the new location, or restore in place.")
                return data
            if target.rstrip("/") == self.source.location.rstrip("/"):
                self.add_error(
                    "target", "That is the source's own location: choose “in place” instead."
                )
                return data
        data["target"] = self.source.location if in_place else target
        # The same check the restore itself starts with: refuse a bad target now, before
        # anyone types the confirmation, rather than after.
        problem = restore_target_problem(
            backup=backup, target=data["target"], in_place=in_place, paths=data.get("paths") or []
        )
        if problem:
            self.add_error(None, problem)
        return data


class RestoreConfirmForm(RestoreForm):
    """The restore form once more, plus the source's name typed by hand."""

    confirm_name = forms.CharField(label="Type the source's name to confirm", max_length=100)

    def clean_confirm_name(self) -> str:
        typed = self.cleaned_data["confirm_name"].strip()
        if typed != self.source.name:
            raise forms.ValidationError(
                f"That is not the source's name; type {self.source.name} exactly."
            )
        return typed


def _backup_label(run: Run) -> str:
    when = timezone.localtime(run.started_at or run.queued_at)
    verified = {True: "verified", False: "FAILED verification", None: "not verified"}
    return f"#{run.pk} — {when:%Y-%m-%d %H:%M %Z} — {verified[run.verified]}"
