"""`recompute_standing [--source NAME]...`: derive the stored standings from the run table."""

from __future__ import annotations

import time

from backups.cli import CliCommand, usage_error
from backups.models import Source
from backups.services.standing import standing_recompute


class Command(CliCommand):
    help = (
        "Derive each source's stored standing (newest runs, 30-day counts, RPO gaps) again "
        "from its run history. Housekeeping does this a few sources at a time by itself."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--source", action="append", default=[], metavar="NAME", help="only these sources"
        )

    def handle(self, *args, **options):
        names = options["source"]
        ids = None
        if names:
            found = dict(Source.objects.filter(name__in=names).values_list("name", "pk"))
            unknown = sorted(set(names) - set(found))
            if unknown:
                raise usage_error(
                    f"There is no source named {unknown[0]!r}; `source list` shows them."
                )
            ids = list(found.values())
        started = time.monotonic()
        count = standing_recompute(source_ids=ids)
        self.stdout.write(
            f"Derived the standing of {count} source(s) in {time.monotonic() - started:.1f} s."
        )
