"""Retention never breaks a chain: every backup a kept one builds on is kept, and says why."""

from datetime import UTC, datetime, timedelta

import pytest

from backups.models import Run
from backups.services.catalog import policy_create, source_create
from backups.services.prune import _claim, prune_execute
from tests.prune_helpers import make_backups, paths_of

pytestmark = pytest.mark.django_db

START = datetime(2026, 9, 1, 0, 0, tzinfo=UTC)


def chained_history(source, hours: int) -> list[Run]:
    """Hourly backups: a full every week, a differential every day, incrementals between."""
    runs = make_backups(source, [START + timedelta(hours=h) for h in range(hours)])
    runs.sort(key=lambda run: run.started_at)
    full = previous = None
    for hour, run in enumerate(runs):
        if hour % (7 * 24) == 0:
            run.level, run.base, run.full = Run.Level.FULL, None, None
            full = run
        elif hour % 24 == 0:
            run.level, run.base, run.full = Run.Level.DIFFERENTIAL, full, full
        else:
            run.level, run.base, run.full = Run.Level.INCREMENTAL, previous, full
        previous = run
    Run.objects.bulk_update(runs, ["level", "base", "full"])
    return runs


@pytest.fixture
def chains(data_dir):
    policy = policy_create(
        name="gfs",
        keep_hourly=24,
        keep_daily=7,
        keep_weekly=4,
        keep_monthly=6,
        full_every_s=7 * 86400,
        differential_every_s=86400,
    )
    return source_create(name="web", kind="directory", location=str(data_dir), policy=policy)


def test_prune_on_sixty_days_of_chains_keeps_every_chain_whole(chains):
    runs = chained_history(chains, 60 * 24)

    report = prune_execute(source=chains)

    kept = set(Run.objects.filter(source=chains, status="succeeded").values_list("pk", flat=True))
    assert report["remove"] and len(kept) < len(runs)
    for run in Run.objects.filter(pk__in=kept):
        for member in run.chain():
            assert member.pk in kept, f"#{run.pk} kept without #{member.pk} of its chain"
            assert all(path.exists() for path in paths_of(member))
    # Without chains the GFS rules keep at most 40 of these; the chains add their bases.
    assert len(kept) > 40


def test_a_dry_run_says_which_kept_backup_each_base_is_kept_for(chains):
    runs = chained_history(chains, 3 * 24)

    report = prune_execute(source=chains, dry_run=True)

    reasons = {entry["id"]: entry["reasons"] for entry in report["keep"]}
    newest = runs[-1]
    assert f"base of #{newest.pk}" in reasons[newest.base_id]
    removed = {entry["id"] for entry in report["remove"]}
    for entry_id in reasons:
        run = Run.objects.get(pk=entry_id)
        assert run.base_id is None or run.base_id not in removed


def test_a_full_whose_every_dependant_is_removed_is_removed(chains):
    chains.policy.keep_weekly = chains.policy.keep_monthly = 0
    chains.policy.save()
    runs = chained_history(chains, 21 * 24)
    first_full = runs[0]

    prune_execute(source=chains)

    dependants = Run.objects.filter(full=first_full)
    assert not dependants.filter(status="succeeded").exists()
    first_full.refresh_from_db()
    assert first_full.status == "pruned"


def test_a_backup_built_on_one_after_the_plan_keeps_it(chains):
    runs = chained_history(chains, 3)
    base = runs[1]
    Run.objects.create(
        source=chains, kind=Run.Kind.BACKUP, status=Run.Status.RUNNING, base=base, full=runs[0]
    )

    claimed, kept = _claim([base], "me", datetime.now(UTC))

    assert claimed == [] and kept[base.pk].startswith("base of #")
