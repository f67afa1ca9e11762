"""File names are bytes: names that are not UTF-8 round-trip through every part.

A tree holds names in Latin-1, invalid UTF-8 sequences, a newline, a backslash that reads
like an escape, and a 4-byte character. Each survives the archive, the manifest, the
catalog, the file browser (escaped, searchable), the diff, restores whole and by path (from
the command line as bytes, from the restore form as the escaped text it shows) and tar.
"""

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.engine.names import catalog_to_name
from backups.models import ManifestEntry, Run, Source
from backups.services.execution import run_execute
from tests.cli_helpers import call_json

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
LATIN1_DIR = b"umlauts-\xc4\xd6\xdc"
LATIN1_FILE = LATIN1_DIR + b"/f\xe9.txt"
NAMES = {
    LATIN1_FILE: b"latin-1\n",
    b"bad-\xff\xfe.bin": b"\xff\xfe invalid utf-8",
    b"cut-\xe2\x82.txt": b"a 3-byte character cut short",
    b"new\nline.txt": b"newline in the name",
    b"back\\x41slash.txt": b"a backslash that reads like an escape",
    "emoji-\U0001f600.txt".encode(): b"4-byte character",
}


def write_tree(root: Path, names: dict[bytes, bytes]) -> None:
    for name, content in names.items():
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)


def tree(root: Path) -> dict[bytes, bytes]:
    """Return every regular file below `root` by its relative name, as bytes, with its content."""
    found = {}
    base = os.fsencode(root)
    for folder, _dirs, files in os.walk(base):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as handle:
                found[os.path.relpath(path, base)] = handle.read()
    return found


@pytest.fixture
def odd_source(tmp_path, policy):
    from backups.services.catalog import source_create

    data = tmp_path / "odd"
    write_tree(data, NAMES)
    os.symlink(b"\xff-target", os.path.join(os.fsencode(data), b"link-\xe9"))
    return source_create(name="odd", kind="directory", location=str(data), policy=policy)


@pytest.fixture
def odd_backup(odd_source):
    made = call_json("backup", odd_source.name, "--inline")
    assert made["status"] == "succeeded", made["error"]
    return Run.objects.get(pk=made["id"])


def catalogued(run: Run) -> dict[str, ManifestEntry]:
    entries = ManifestEntry.objects.filter(directory__manifest__run=run).select_related("directory")
    return {
        (f"{entry.directory.path}/{entry.name}" if entry.directory.path else entry.name): entry
        for entry in entries
    }


def test_names_that_are_not_utf8_back_up_and_every_one_is_catalogued_exactly(odd_backup):
    stored = catalogued(odd_backup)
    wanted = {name.decode("utf-8", "surrogateescape") for name in [*NAMES, LATIN1_DIR]}
    wanted.add("link-\udce9")
    assert {catalog_to_name(path) for path in stored} == wanted
    # Shown as the escapes the browser prints, a literal backslash doubled.
    assert "umlauts-\\xc4\\xd6\\xdc/f\\xe9.txt" in stored
    assert "back\\\\x41slash.txt" in stored and "new\\x0aline.txt" in stored
    assert "emoji-\U0001f600.txt" in stored
    assert catalog_to_name(stored["link-\\xe9"].target) == "\udcff-target"
    # The manifest keeps them as surrogate escapes, as it always has.
    text = odd_backup.manifest_path.read_text()
    assert '"umlauts-\\udcc4\\udcd6\\udcdc/f\\udce9.txt"' in text


def test_plain_tar_lists_and_extracts_the_original_bytes(odd_backup, tmp_path):
    target = tmp_path / "by-tar"
    target.mkdir()
    subprocess.run(
        f"zstd -d < '{odd_backup.archive}' | tar -xf - -C '{target}'", shell=True, check=True
    )
    assert tree(target) == NAMES
    assert os.readlink(os.path.join(os.fsencode(target), b"link-\xe9")) == b"\xff-target"


def test_a_whole_restore_recreates_every_name_byte_for_byte(odd_backup, tmp_path):
    target = tmp_path / "restored"
    run = call_json("restore", str(odd_backup.pk), "--to", str(target), "--inline")
    assert run["status"] == "succeeded", run["error"]
    assert tree(target) == NAMES
    assert os.readlink(os.path.join(os.fsencode(target), b"link-\xe9")) == b"\xff-target"


def test_a_path_given_on_the_command_line_as_bytes_restores_that_folder(odd_backup, tmp_path):
    # Python hands argv's bytes over as a str with surrogate escapes, as here.
    target = tmp_path / "one-folder"
    argument = LATIN1_DIR.decode("utf-8", "surrogateescape")
    run = call_json(
        "restore", str(odd_backup.pk), "--to", str(target), "--path", argument, "--inline"
    )
    assert run["status"] == "succeeded", run["error"]
    assert tree(target) == {LATIN1_FILE: NAMES[LATIN1_FILE]}
    # The run records the path as the catalog writes it: text a database can hold.
    assert run["paths"] == ["umlauts-\\xc4\\xd6\\xdc"]


def test_the_browser_shows_escaped_names_opens_their_folders_and_finds_them(
    client, viewer, odd_backup
):
    client.force_login(viewer)
    url = reverse("manifest-browse", args=[odd_backup.pk])
    top = client.get(url)
    assert top.status_code == 200
    assert "bad-\\xff\\xfe.bin" in top.text and "back\\\\x41slash.txt" in top.text
    folder = client.get(url, {"path": "umlauts-\\xc4\\xd6\\xdc"})
    assert folder.status_code == 200
    assert [row.name for row in folder.context["entries"]] == ["f\\xe9.txt"]
    for text, expected in [
        ("\\xff", "bad-\\xff\\xfe.bin"),
        ("f\\xe9", "umlauts-\\xc4\\xd6\\xdc/f\\xe9.txt"),
        ("\\x0a", "new\\x0aline.txt"),
        ("\U0001f600", "emoji-\U0001f600.txt"),
        ("\\\\x41", "back\\\\x41slash.txt"),
    ]:
        found = client.get(url, {"q": text})
        assert [row.path for row in found.context["results"]] == [expected], text


def test_the_restore_form_takes_the_escaped_path_the_browser_shows(
    client, operator, odd_backup, odd_source, tmp_path
):
    client.force_login(operator)
    target = tmp_path / "from-the-form"
    picked = "bad-\\xff\\xfe.bin\nback\\\\x41slash.txt"
    fields = {
        "source": odd_source.slug,
        "backup": odd_backup.pk,
        "mode": "new",
        "target": str(target),
        "paths": picked,
    }
    review = client.post(reverse("restore-confirm"), fields)
    assert review.status_code == 200 and not review.context["form"].errors
    done = client.post(reverse("restore-confirm"), {**fields, "confirm_name": odd_source.name})
    assert done.status_code == 302
    restore = Run.objects.get(kind=Run.Kind.RESTORE)
    assert restore.paths == ["bad-\\xff\\xfe.bin", "back\\\\x41slash.txt"]
    assert run_execute(restore.pk).status == Run.Status.SUCCEEDED
    assert tree(target) == {
        b"bad-\xff\xfe.bin": NAMES[b"bad-\xff\xfe.bin"],
        b"back\\x41slash.txt": NAMES[b"back\\x41slash.txt"],
    }


def test_the_diff_names_changed_and_added_files_escaped(client, viewer, odd_source, odd_backup):
    data = Path(odd_source.location)
    write_tree(data, {LATIN1_FILE: b"changed", b"added-\xa7.txt": b"new"})
    second = call_json("backup", odd_source.name, "--inline")
    client.force_login(viewer)
    response = client.get(reverse("manifest-diff", args=[second["id"]]))
    changes = {(change.kind, change.row.path) for change in response.context["changes"]}
    assert changes == {
        ("changed", "umlauts-\\xc4\\xd6\\xdc/f\\xe9.txt"),
        ("added", "added-\\xa7.txt"),
    }


def test_warnings_naming_such_files_are_stored_escaped(odd_source, odd_backup):
    # A FIFO is skipped with a warning that names it; the run's columns are text.
    os.mkfifo(os.path.join(os.fsencode(odd_source.location), b"fifo-\xe9"))
    run = call_json("backup", odd_source.name, "--inline")
    assert run["status"] == "warning", run["error"]
    assert any("fifo-\\xe9" in warning for warning in run["warnings"]), run["warnings"]


def test_the_command_line_prints_such_names_without_a_traceback(tmp_path):
    """As a real process with a strict UTF-8 stdout: JSON escapes, text passes the bytes."""
    data = tmp_path / "odd"
    write_tree(data, NAMES)
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
        PYTHONIOENCODING="utf-8",
    )

    def manage(*args):
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True
        )
        assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        return done

    manage("migrate", "-v0")
    manage("source", "add", "odd", "--kind", "directory", "--location", str(data),
           "--exclude", "bad-*", "--exclude", "umlauts-*")  # fmt: skip
    plan = manage("backup", "odd", "--dry-run", "--json")
    assert plan.returncode == 0
    excluded = json.loads(plan.stdout)["excluded"]
    assert [os.fsencode(name) for name in excluded] == [b"bad-\xff\xfe.bin", LATIN1_DIR]
    text = manage("backup", "odd", "--dry-run")
    assert text.returncode == 0 and b"  bad-\xff\xfe.bin\n" in text.stdout
    backup = json.loads(manage("backup", "odd", "--inline", "--json").stdout)
    assert backup["status"] == "succeeded"
    # --path as the bytes a shell passes.
    target = tmp_path / "restored"
    manage("source", "add", "all", "--kind", "directory", "--location", str(data))
    whole = json.loads(manage("backup", "all", "--inline", "--json").stdout)
    argv = [b"restore", str(whole["id"]).encode(), b"--to", os.fsencode(target)]
    restored = manage(*argv, b"--path", LATIN1_DIR, b"--inline", b"--json")
    assert json.loads(restored.stdout)["status"] == "succeeded"
    assert tree(target) == {LATIN1_FILE: NAMES[LATIN1_FILE]}


@pytest.mark.parametrize(
    ("option", "value", "sentence"),
    [
        ("--location", "umlauts-\udcc4", "umlauts-\\xc4 is not valid UTF-8"),
        ("--exclude", "x\udcff*", "The exclude pattern 'x\\xff*' is not valid UTF-8"),
    ],
)
def test_a_location_or_exclude_that_is_not_utf8_is_refused_with_a_sentence(
    tmp_path, option, value, sentence
):
    location = str(tmp_path / value) if option == "--location" else str(tmp_path)
    args = ["source", "add", "odd", "--kind", "directory", "--location", location]
    if option == "--exclude":
        args += ["--exclude", value]
    with pytest.raises(CommandError) as caught:
        call_command(*args, stdout=StringIO())
    assert caught.value.returncode == 2 and sentence in str(caught.value)
    assert not Source.objects.exists()


def test_a_restore_target_that_is_not_utf8_is_refused_with_a_sentence(odd_backup, tmp_path):
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(odd_backup.pk), "--to", f"{tmp_path}/out-\udcff")
    assert caught.value.returncode == 2
    assert f"The target {tmp_path}/out-\\xff is not valid UTF-8" in str(caught.value)
    assert not Run.objects.filter(kind=Run.Kind.RESTORE).exists()
