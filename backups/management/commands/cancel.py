"""`cancel RUN`: stop a queued or running run; its partial output is removed."""

from __future__ import annotations

from backups.cli import CliCommand, usage_error
from backups.models import Run
from backups.services.runs import run_cancel


class Command(CliCommand):
    help = "Cancel a queued or running backup, restore or verification."

    def add_arguments(self, parser):
        parser.add_argument("run", type=int)

    def handle(self, *args, **options):
        run = Run.objects.select_related("source").filter(pk=options["run"]).first()
        if run is None:
            raise usage_error(f"There is no run #{options['run']}.")
        if not run_cancel(run=run):
            raise usage_error(f"Run #{run.pk} has already ended ({run.status}).")
        run.refresh_from_db()
        state = "cancelled" if run.status == Run.Status.CANCELLED else "asked to stop"
        if run.status == Run.Status.RUNNING and run.publishing_at:
            state += (
                ", but it is already publishing its result: it stops if it still safely can, "
                "otherwise it finishes"
            )
        self.stdout.write(f"{run.kind} #{run.pk} of {run.source.name}: {state}.")
