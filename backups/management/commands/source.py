"""`source add …` and `source list`: manage what is backed up."""

from __future__ import annotations

from backups.audit import audit_record, field_changes, field_values
from backups.cli import CliCommand, usage_error
from backups.models import Policy, Source
from backups.services.catalog import source_create, source_to_dict


class Command(CliCommand):
    help = "Manage backup sources."

    def add_arguments(self, parser):
        actions = self.subcommands(parser)
        add = actions.add_parser("add", help="Create a source.")
        add.add_argument("name")
        add.add_argument("--kind", required=True, choices=Source.Kind.values)
        add.add_argument("--location", required=True)
        add.add_argument("--policy")
        add.add_argument("--exclude", action="append", default=[], metavar="GLOB")
        add.add_argument("--owner", default="")
        add.add_argument("--notes", default="")
        add.add_argument("--disabled", action="store_true")
        add.add_argument(
            "--notify",
            action="append",
            default=[],
            metavar="TAG",
            help="tag of the APPRISE_CONFIG targets its alerts go to (repeatable)",
        )
        add.add_argument("--json", action="store_true")
        listing = actions.add_parser("list", help="List sources.")
        listing.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        if options["action"] == "add":
            self.add(options)
        else:
            self.list(options)

    def add(self, options):
        name = options["name"]
        if Source.objects.filter(name=name).exists():
            raise usage_error(f"A source named {name!r} already exists.")
        policy = None
        if options["policy"]:
            policy = Policy.objects.filter(name=options["policy"]).first()
            if policy is None:
                known = ", ".join(Policy.objects.values_list("name", flat=True)) or "none yet"
                raise usage_error(
                    f"Unknown policy {options['policy']!r} (known: {known}); "
                    "create it with `policy add`."
                )
        source = source_create(
            name=name,
            kind=options["kind"],
            location=options["location"],
            policy=policy,
            excludes=options["exclude"],
            owner=options["owner"],
            notes=options["notes"],
            enabled=not options["disabled"],
            notify=",".join(options["notify"]),
        )
        # As the admin does for its changes: who created it, with every value it started with.
        audit_record(
            actor=None,
            action="source.create",
            outcome="succeeded",
            obj=source,
            detail={"changes": field_changes(None, field_values(source))},
        )
        if options["json"]:
            self.print_json(source_to_dict(source))
        else:
            self.stdout.write(f"Created source {source.name!r} ({source.kind}).")

    def list(self, options):
        sources = list(Source.objects.select_related("policy").order_by("name"))
        if options["json"]:
            self.print_json({"sources": [source_to_dict(source) for source in sources]})
            return
        if not sources:
            self.stdout.write("No sources. Add one with `source add`.")
            return
        rows = [("NAME", "KIND", "POLICY", "ENABLED", "LOCATION")] + [
            (
                s.name,
                s.kind,
                s.policy.name if s.policy_id else "-",
                "yes" if s.enabled else "no",
                s.location,
            )
            for s in sources
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[4]]))
