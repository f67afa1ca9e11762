"""Backing up a pod path through kubectl exec (a stand-in kubectl plays the cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from backups.engine.backup import (
    BackupRequest,
    parse_kubernetes_location,
    plan_backup,
    run_backup,
)
from backups.engine.errors import Cancelled, SourceError
from backups.engine.hooks import RecordingHooks
from backups.engine.manifest import load_manifest

from .conftest import LONG_FILE, NON_UTF8, make_tree, sha256_of

FAKE_KUBECTL = Path(__file__).parent / "fake_kubectl"
STEM = "20260101T000000Z-3"


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """A fake cluster: pod prod/api-0 whose /var/lib/data holds the awkward tree."""
    root = tmp_path / "cluster"
    make_tree(root / "prod" / "api-0" / "var" / "lib" / "data")
    monkeypatch.setenv("PATH", f"{FAKE_KUBECTL}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_ROOT", str(root))
    return root


def backup(location: str, dest: Path, **kwargs):
    hooks = RecordingHooks()
    request = BackupRequest(
        kind="kubernetes", location=location, dest_dir=dest, stem=STEM, **kwargs
    )
    return run_backup(request, hooks)


def test_locations_are_parsed_with_an_optional_container():
    assert parse_kubernetes_location("prod/api-0:/var/lib/data") == (
        "prod",
        "api-0",
        None,
        "/var/lib/data",
    )
    assert parse_kubernetes_location("prod/api-0/app:/data") == ("prod", "api-0", "app", "/data")


@pytest.mark.parametrize(
    "location",
    ["api-0:/data", "prod/api-0:data", "prod/api-0", "Prod/api-0:/data", "a/b/c/d:/x", ""],
)
def test_malformed_locations_are_refused_with_the_expected_form(location):
    with pytest.raises(SourceError, match="NAMESPACE/POD"):
        parse_kubernetes_location(location)


def test_a_pod_path_is_archived_with_hashes_of_its_files(cluster, tmp_path):
    pod_data = cluster / "prod" / "api-0" / "var" / "lib" / "data"
    dest = tmp_path / "dest"
    result = backup("prod/api-0/app:/var/lib/data", dest)

    assert result.status == "succeeded"
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(f"zstd -d < '{result.archive}' | tar -xf - -C '{out}'", shell=True, check=True)
    assert (out / LONG_FILE).read_bytes() == b"deep\n"
    assert os.readlink(out / "link") == "small.txt"
    entries = {e.path: e for e in load_manifest(result.manifest).entries}
    assert "." not in entries
    files = [e for e in entries.values() if e.type == "file"]
    assert files and all(e.sha256 == sha256_of(pod_data / e.path) for e in files)
    assert NON_UTF8 in entries
    hard = [e for e in entries.values() if e.type == "hardlink"]
    assert len(hard) == 1 and {hard[0].path, hard[0].target} == {"hard", "small.txt"}
    assert subprocess.run("sha256sum -c *.sha256", shell=True, cwd=dest).returncode == 0


def test_excludes_and_special_files_are_left_out_of_the_archive(cluster, tmp_path):
    pod_data = cluster / "prod" / "api-0" / "var" / "lib" / "data"
    os.mkfifo(pod_data / "pipe")
    result = backup("prod/api-0:/var/lib/data", tmp_path / "dest", excludes=["sub", "*.key"])

    paths = {e.path for e in load_manifest(result.manifest).entries}
    assert not any(p == "sub" or p.startswith("sub/") for p in paths)
    assert "private.key" not in paths and "pipe" not in paths and "small.txt" in paths
    assert result.status == "warning"
    assert result.warnings == ["pipe: skipped, a fifo special file cannot be backed up"]
    listing = subprocess.run(
        f"zstd -d < '{result.archive}' | tar -tf -", shell=True, capture_output=True, check=True
    ).stdout.decode()
    assert "./sub/" not in listing and "./private.key" not in listing and "./pipe" not in listing


def test_a_missing_pod_fails_with_kubectls_message_and_publishes_nothing(cluster, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(
        SourceError, match=r'Error from server \(NotFound\): pods "web-1" not found'
    ):
        backup("prod/web-1:/var/lib/data", dest)
    assert list(dest.iterdir()) == []


def test_a_missing_path_fails_with_tars_message(cluster, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(
        SourceError, match=r"(?s)tar: /nowhere: Cannot open.*command terminated with exit code 2"
    ):
        backup("prod/api-0:/nowhere", dest)
    assert list(dest.iterdir()) == []


def test_a_command_failing_mid_stream_publishes_nothing(cluster, tmp_path, monkeypatch):
    big = cluster / "prod" / "api-0" / "var" / "lib" / "data" / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    monkeypatch.setenv("FAKE_KUBECTL_FAIL_AFTER", str(3 << 20))
    dest = tmp_path / "dest"
    with pytest.raises(SourceError, match="command terminated with exit code 2"):
        backup("prod/api-0:/var/lib/data", dest)
    assert list(dest.iterdir()) == []


def test_a_cancel_stops_a_stalled_pod_at_once(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_STALL", "30")

    class CancelSoon(RecordingHooks):
        def __init__(self):
            super().__init__()
            self.deadline = time.monotonic() + 0.5

        def check(self):
            if time.monotonic() > self.deadline:
                raise Cancelled("Cancelled by a user.")

    dest = tmp_path / "dest"
    request = BackupRequest(
        kind="kubernetes", location="prod/api-0:/var/lib/data", dest_dir=dest, stem=STEM
    )
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_backup(request, CancelSoon())
    assert time.monotonic() - started < 5
    assert list(dest.iterdir()) == []


def test_a_missing_kubectl_is_a_clear_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tar", "zstd"):
        if found := shutil.which(tool):
            os.symlink(found, bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SourceError, match="kubectl was not found on this worker's PATH"):
        backup("prod/api-0:/data", tmp_path / "dest")


def test_the_plan_counts_what_the_pod_holds(cluster):
    plan = plan_backup(kind="kubernetes", location="prod/api-0:/var/lib/data", excludes=["sub"])
    assert plan.excluded == ["sub"] and plan.excluded_count == 1
    pod_data = cluster / "prod" / "api-0" / "var" / "lib" / "data"
    files = [
        p
        for p in pod_data.rglob("*")
        if p.is_file() and not p.is_symlink() and "sub" not in p.relative_to(pod_data).parts
    ]
    assert plan.files == len(files) - 1  # one of them is stored as a hard link
