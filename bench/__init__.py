"""Benchmarks: `python -m bench` runs them all (see __main__).

Commands are timed as an installed copy runs them: with Python's compiled bytecode. A
machine that sets PYTHONDONTWRITEBYTECODE would otherwise make every timed `manage.py`
compile the project's modules again, a cost no user's installation pays.
"""

import os

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
