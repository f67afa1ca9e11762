"""The page benchmarks seed runs with raw SQL: their column list must follow the model."""

from backups.models import Run
from bench.pages import RUN_COLUMNS, later_run_columns


def test_the_seeded_run_columns_are_exactly_the_run_tables():
    # A new Run field the seeders do not know makes their INSERT fail (NOT NULL) or leaves
    # the field to its database default: both would stop or skew `make bench`.
    assert sorted(RUN_COLUMNS) == sorted(field.column for field in Run._meta.concrete_fields)
    assert set(later_run_columns(bool)) <= set(RUN_COLUMNS)
