"""`policy add`: valid policies are created; every bad value exits 2 and creates nothing."""

import pytest
from django.core.management import CommandError, call_command

from backups.models import Policy

pytestmark = pytest.mark.django_db


def test_policy_add_stores_durations_in_seconds_and_keep_rules():
    call_command(
        "policy", "add", "nightly", "--schedule", "0 3 * * *", "--rpo", "26h", "--rto", "30m",
        "--keep-daily", "7", "--keep-weekly", "4", "--drill-every", "7d", "--compression", "gzip",
    )  # fmt: skip
    policy = Policy.objects.get(name="nightly")
    assert (policy.rpo_s, policy.rto_s, policy.drill_every_s) == (26 * 3600, 1800, 7 * 86400)
    assert policy.keep_rules == {
        "last": 0, "hourly": 0, "daily": 7, "weekly": 4, "monthly": 0, "yearly": 0,
    }  # fmt: skip
    assert policy.compression == "gzip"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--schedule", "61 * * * *"], "cron"),
        (["--schedule", "* * *"], "five fields"),
        (["--rpo", "5x"], "not a duration"),
        (["--rto", "0m"], "longer than zero"),
        (["--keep-last", "-1"], "negative"),
        (["--keep-daily", "many"], "whole number"),
        (["--compression", "lz4"], "invalid choice"),
        (["--compression", "gzip", "--level", "15"], "1 to 9"),
        (["--run-timeout", "10s"], "below one minute"),
    ],
)
def test_policy_add_refuses_bad_input_with_exit_2(args, fragment):
    with pytest.raises(CommandError) as caught:
        call_command("policy", "add", "bad", *args)
    assert caught.value.returncode == 2
    assert fragment in str(caught.value)
    assert not Policy.objects.exists()


def test_policy_add_refuses_a_duplicate_name():
    call_command("policy", "add", "p")
    with pytest.raises(CommandError) as caught:
        call_command("policy", "add", "p")
    assert caught.value.returncode == 2
    assert "already exists" in str(caught.value)
    assert Policy.objects.count() == 1


def test_policy_timeout_must_stay_below_the_queue_timeout(settings):
    settings.Q_TIMEOUT_S = 7200
    with pytest.raises(CommandError) as caught:
        call_command("policy", "add", "long", "--run-timeout", "3h")
    assert caught.value.returncode == 2 and "Q_TIMEOUT_S" in str(caught.value)
    assert not Policy.objects.exists()
