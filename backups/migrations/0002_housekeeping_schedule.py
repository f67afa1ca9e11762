"""Create the every-minute housekeeping schedule (reaper, interrupted prunes, drills, sync).

Housekeeping also reconciles every source's backup schedule with the catalog, so after this
migration the schedules of existing sources appear within a minute of a worker starting.
"""

from django.db import migrations
from django.utils import timezone

TASK = "backups.tasks.housekeeping"


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    if not Schedule.objects.filter(func=TASK).exists():
        Schedule.objects.create(
            name="housekeeping",
            func=TASK,
            schedule_type="C",
            cron="* * * * *",
            repeats=-1,
            next_run=timezone.now(),
        )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(func=TASK).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backups", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create, remove)]
