"""`runs [RUN] [--source NAME] [--kind KIND] [--status STATUS] [--limit N] [--json]`."""

from __future__ import annotations

from backups.cli import CliCommand, usage_error
from backups.management.runner import report
from backups.models import Run
from backups.services.formats import format_bytes
from backups.services.reporting import run_to_dict


class Command(CliCommand):
    help = "List runs, newest first, or show one run."

    def add_arguments(self, parser):
        parser.add_argument("run", nargs="?", type=int)
        parser.add_argument("--source")
        parser.add_argument("--kind", choices=Run.Kind.values)
        parser.add_argument("--status", choices=Run.Status.values)
        parser.add_argument("--limit", type=int, default=20)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        runs = Run.objects.select_related("source", "storage").defer("log")
        if options["run"] is not None:
            run = runs.filter(pk=options["run"]).first()
            if run is None:
                raise usage_error(f"There is no run #{options['run']}.")
            return report(self, run, options["json"])
        if options["limit"] < 1:
            raise usage_error("--limit must be at least 1.")
        if options["source"]:
            runs = runs.filter(source__name=options["source"])
        if options["kind"]:
            runs = runs.filter(kind=options["kind"])
        if options["status"]:
            runs = runs.filter(status=options["status"])
        runs = list(runs.order_by("-queued_at", "-pk")[: options["limit"]])
        if options["json"]:
            return self.print_json({"runs": [run_to_dict(run) for run in runs]})
        if not runs:
            return self.stdout.write("No runs.")
        self.stdout.write(
            f"{'ID':>6}  {'KIND':7}  {'STATUS':9}  {'STARTED':19}  {'SIZE':>10}  SOURCE"
        )
        for run in runs:
            started = f"{run.started_at:%Y-%m-%d %H:%M:%S}" if run.started_at else "-"
            size = format_bytes(run.size) if run.size is not None else "-"
            self.stdout.write(
                f"{run.pk:>6}  {run.kind:7}  {run.status:9}  {started:19}  {size:>10}  "
                f"{run.source.name}"
            )
