#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import gc
import os
import sys


def main() -> None:
    """Run administrative tasks."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    # Start-up makes some 70,000 objects that live as long as the process (modules,
    # classes, models) and next to no garbage, yet the collector walks them again and
    # again while they are made: tens of milliseconds of every command. So nothing is
    # collected until Django is set up; then what set-up made is frozen, and collections
    # walk only the objects the command itself creates.
    gc.disable()
    import django
    from django.core.management import execute_from_command_line

    setup = django.setup

    def setup_then_collect(*args, **kwargs):
        try:
            setup(*args, **kwargs)
        finally:
            gc.freeze()
            gc.enable()

    django.setup = setup_then_collect
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
