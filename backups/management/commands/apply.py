"""`apply FILE [--dry-run] [--prune] [--prune-with-backups] [--json]`: fleet as code."""

from __future__ import annotations

import sys

from backups.cli import CliCommand, usage_error
from backups.services.fleet import (
    FleetRefused,
    fleet_apply,
    fleet_load,
    fleet_plan,
    fleet_sha256,
)


class Command(CliCommand):
    help = (
        "Make the catalog's storages, policies and sources match a YAML fleet file, in one "
        "transaction; print one line per object changed. See `export` for the format."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="the fleet file ('-': standard input)")
        parser.add_argument(
            "--dry-run", action="store_true", help="print the plan and change nothing"
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="remove what the file no longer lists (never a source or storage with backups)",
        )
        parser.add_argument(
            "--prune-with-backups",
            action="store_true",
            help="--prune, and retire (disable, keeping its backups) a source that has backups",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):
        path = options["file"]
        name = "<stdin>" if path == "-" else path
        try:
            if path == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
        except OSError as error:
            raise usage_error(f"Cannot read {name}: {error.strerror}.") from None
        try:
            fleet = fleet_load(data, name)
            plan = fleet_plan(
                fleet,
                sha256=fleet_sha256(data),
                prune=options["prune"],
                prune_with_backups=options["prune_with_backups"],
            )
            if plan.changes and not options["dry_run"]:
                fleet_apply(plan)
        except FleetRefused as error:
            raise usage_error(str(error)) from None
        self.report(plan, name, options)

    def report(self, plan, name, options):
        dry_run = options["dry_run"]
        if options["json"]:
            self.print_json(
                {
                    "file": name,
                    "sha256": plan.sha256,
                    "dry_run": dry_run,
                    "changed": bool(plan.changes) and not dry_run,
                    "counts": plan.counts,
                    "changes": [change.to_dict() for change in plan.changes],
                    "notes": plan.notes,
                }
            )
            return
        for change in plan.changes:
            self.stdout.write(change.describe())
        for note in plan.notes:
            self.stdout.write(f"! {note}")
        if not plan.changes:
            self.stdout.write(f"No changes: the catalog already matches {name}.")
            return
        counts = plan.counts
        summary = ", ".join(
            f"{sum(counts[op].values())} {op}"
            for op in ("created", "changed", "removed", "retired")
            if sum(counts[op].values()) or op != "retired"
        )
        if dry_run:
            self.stdout.write(f"Dry run: {summary}; nothing was changed.")
        else:
            self.stdout.write(f"Applied {name}: {summary}.")
