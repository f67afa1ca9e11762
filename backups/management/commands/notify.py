"""`notify test TAG`: send a test message to every target with that tag, and say how each did."""

from __future__ import annotations

from backups.cli import CliCommand, failed_error, usage_error
from backups.services.notify import NotifyConfigError, notify_test


class Command(CliCommand):
    help = "Check the notification targets of APPRISE_CONFIG."

    def add_arguments(self, parser):
        actions = self.subcommands(parser)
        test = actions.add_parser("test", help="Send a test message to the targets of a tag.")
        test.add_argument("tag", metavar="TAG")

    def handle(self, *args, **options):
        try:
            results = notify_test(options["tag"])
        except NotifyConfigError as error:
            raise usage_error(str(error)) from None
        refused = 0
        for target, error in results:
            if error is None:
                self.stdout.write(f"ok      {target.label}")
            else:
                refused += 1
                self.stdout.write(f"FAILED  {target.label}: {error}")
        if refused:
            raise failed_error(f"{refused} of {len(results)} target(s) refused the test message.")
