"""Admin pages for policies and sources (with their validation), and read-only history."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from backups.audit import audit_record, field_changes, field_values
from backups.models import AuditEvent, Copy, Manifest, Policy, Run, Source, Storage
from backups.services.schedules import schedule_sync, schedule_sync_all, schedule_sync_policy


class AuditedAdmin(admin.ModelAdmin):
    """Record every change made through the admin in the audit log, old and new values."""

    def save_model(self, request, obj, form, change):
        before = None
        if change:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = field_values(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        action = f"{obj._meta.model_name}.{'change' if change else 'create'}"
        audit_record(
            actor=request.user,
            action=action,
            outcome="succeeded",
            obj=obj,
            detail={"changes": field_changes(before, field_values(obj))},
        )

    def delete_model(self, request, obj):
        audit_record(
            actor=request.user,
            action=f"{obj._meta.model_name}.delete",
            outcome="succeeded",
            obj=obj,
        )
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class PolicyForm(forms.ModelForm):
    def clean(self):
        data = super().clean()
        storage, copies = data.get("storage"), data.get("copy_to") or ()
        try:
            Policy.check_copy_to(storage.pk if storage else None, [copy.pk for copy in copies])
        except ValidationError as error:
            self.add_error(None, error)
        return data


@admin.register(Policy)
class PolicyAdmin(AuditedAdmin):
    form = PolicyForm
    list_display = [
        "name",
        "schedule",
        "rpo_s",
        "rto_s",
        "compression",
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
    ]
    list_filter = ["compression", "verify_after_backup"]
    search_fields = ["name", "schedule"]
    fieldsets = [
        (None, {"fields": ["name", "schedule", "rpo_s", "rto_s", "notify"]}),
        (
            "Retention",
            {
                "fields": [
                    "keep_last",
                    "keep_hourly",
                    "keep_daily",
                    "keep_weekly",
                    "keep_monthly",
                    "keep_yearly",
                ]
            },
        ),
        (
            "Archives and checks",
            {
                "fields": [
                    "compression",
                    "compression_level",
                    "full_every_s",
                    "differential_every_s",
                    "verify_after_backup",
                    "drill_every_s",
                    "run_timeout_s",
                    "check_queries",
                ]
            },
        ),
        (
            "Storages",
            {"fields": ["storage", "copy_to", "archive_to", "archive_after_s"]},
        ),
        ("Encryption at rest", {"fields": ["recipients"]}),
    ]
    filter_horizontal = ["copy_to"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # A new cron expression must reach django-q2's scheduler now, not at the next
        # housekeeping pass.
        schedule_sync_policy(obj)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        schedule_sync_all()


@admin.register(Source)
class SourceAdmin(AuditedAdmin):
    list_display = ["name", "kind", "location", "policy", "owner", "enabled"]
    list_filter = ["kind", "enabled", "policy", "owner"]
    search_fields = ["name", "location", "owner", "notes"]
    list_select_related = ["policy"]
    prepopulated_fields = {"slug": ["name"]}
    fields = [
        "name",
        "slug",
        "kind",
        "location",
        "excludes",
        "policy",
        "owner",
        "notify",
        "enabled",
        "notes",
    ]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        schedule_sync(obj)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        # The deleted source no longer has an id to look its schedule up by.
        schedule_sync_all()


@admin.register(Storage)
class StorageAdmin(AuditedAdmin):
    """Where archives live; credentials stay in the workers' environment, never here."""

    list_display = ["name", "kind", "location", "checked_at", "check_error"]
    list_filter = ["kind"]
    search_fields = ["name", "path", "bucket", "prefix", "endpoint"]
    fields = [
        "name", "kind", "path", "bucket", "prefix", "endpoint", "region", "credentials_env",
        # Its own rules for the copies it holds (all 0: copies go with their backups).
        "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
    ]  # fmt: skip


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "source", "status", "trigger", "queued_at", "size", "keep"]
    list_filter = ["kind", "status", "trigger", "source__kind", "storage"]
    search_fields = ["=id", "source__name", "sha256", "archive"]
    list_select_related = ["source"]
    date_hierarchy = "queued_at"
    raw_id_fields = ["backup", "requested_by"]
    # History is written by the workers; the admin may only pin a backup ("keep").
    readonly_fields = [
        *(field.name for field in Run._meta.concrete_fields if field.name not in ("keep",)),
        "copies_held",
    ]

    @admin.display(description="copies")
    def copies_held(self, run: Run) -> str:
        """List the backup's copies in other storages: storage, status, sha256, error."""
        copies = Copy.objects.filter(backup=run).select_related("storage").order_by("storage")
        return (
            format_html_join(
                mark_safe("<br>"),
                "{}: {} {} {}",
                (
                    (copy.storage.name, copy.status, copy.sha256 or "", copy.error or "")
                    for copy in copies
                ),
            )
            or "—"
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if "keep" in form.changed_data:
            # A pinned backup outlives every retention rule; unpinning lets prune remove it.
            audit_record(
                actor=request.user,
                action="backup.pin" if obj.keep else "backup.unpin",
                outcome="succeeded",
                obj=obj,
                source=obj.source,
                detail={"keep": obj.keep},
            )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Manifest)
class ManifestAdmin(admin.ModelAdmin):
    list_display = ["run", "files", "bytes", "entries", "path"]
    search_fields = ["=run__id", "path"]
    list_select_related = ["run__source"]
    readonly_fields = ["run", "path", "files", "bytes", "entries"]

    def has_add_permission(self, request):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["at", "actor_name", "action", "object_repr", "outcome"]
    list_filter = ["outcome", "action"]
    search_fields = ["actor_name", "action", "object_repr", "source__name"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
