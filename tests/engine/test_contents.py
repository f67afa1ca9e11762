"""Matching archive members with manifest entries, in the manifest's order or out of it."""

from __future__ import annotations

import hashlib

from backups.engine.manifest import Entry, Manifest
from backups.engine.restore.contents import ContentCheck
from backups.engine.tarstream import Member
from tests.engine.restore_helpers import tar_member


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(path: str, kind: str = "file", size: int = 3, text: str = "abc") -> Entry:
    return Entry(path=path, type=kind, size=size if kind == "file" else 0, sha256=digest(text))


def member(path: str, kind: str = "file", size: int = 3, text: str = "abc") -> Member:
    is_file = kind == "file"
    return tar_member(
        path, kind, size=size if is_file else 0, sha256=digest(text) if is_file else None
    )


def manifest(*entries: Entry) -> Manifest:
    return Manifest(
        header={"archive": {"sha256": ""}, "totals": {"bytes": 0}}, entries=list(entries)
    )


def feed(check: ContentCheck, *members: Member) -> list[str]:
    """Check members as a restore does (headers, then data); return the problems."""
    problems = []
    for item in members:
        problem = check.header(item.path, item)
        if problem is None and item.type == "file":
            problem = check.data(item.path, item, check.last)
        if problem:
            problems.append(problem)
    return problems


def test_members_in_manifest_order_match_and_nothing_is_missing():
    check = ContentCheck(manifest(entry("a", "dir"), entry("a/b"), entry("c", text="xyz")))
    assert feed(check, member("a", "dir"), member("a/b"), member("c", text="xyz")) == []
    assert check.missing() == []


def test_members_out_of_order_are_matched_by_path():
    check = ContentCheck(manifest(entry("a", "dir"), entry("a/b"), entry("c", text="xyz")))
    assert feed(check, member("a", "dir"), member("c", text="xyz"), member("a/b")) == []
    assert check.missing() == []


def test_a_member_out_of_order_with_other_content_is_still_caught():
    check = ContentCheck(manifest(entry("a"), entry("b", text="xyz")))
    problems = feed(check, member("b"), member("a", text="xyz"))
    assert len(problems) == 2
    assert all("does not match its sha256" in problem for problem in problems)


def test_missing_entries_are_named_in_either_mode():
    in_order = ContentCheck(manifest(entry("a"), entry("b"), entry("c")))
    assert feed(in_order, member("a")) == []
    assert in_order.missing() == ["b", "c"]
    shuffled = ContentCheck(manifest(entry("a"), entry("b"), entry("c")))
    assert feed(shuffled, member("c")) == []
    assert shuffled.missing() == ["a", "b"]


def test_members_the_manifest_lacks_and_wrong_sizes_are_problems():
    check = ContentCheck(manifest(entry("a")))
    problems = feed(check, member("a", size=4), member("extra"))
    assert "holds 4 bytes in the archive but 3" in problems[0]
    assert "'extra' is in the archive but not in the manifest" in problems[1]


def test_a_path_listed_twice_is_not_missing_once_matched():
    check = ContentCheck(manifest(entry("a"), entry("a"), entry("b")))
    assert feed(check, member("a"), member("b")) == []
    assert check.missing() == []


def test_an_unlisted_root_folder_does_not_break_in_order_matching():
    check = ContentCheck(manifest(entry("a"), entry("b")))
    assert feed(check, member("", "dir"), member("a"), member("b")) == []
    assert check.missing() == []
    # A pod's archive starts with "./": matching it must not index every manifest path.
    assert check.entries_indexed is False


def test_a_listed_root_folder_is_still_checked_in_order():
    check = ContentCheck(manifest(entry(".", "dir"), entry("a")))
    problems = feed(check, member("", "symlink"), member("a"))
    assert problems == ["'' is a symlink in the archive but a dir in the manifest"]
