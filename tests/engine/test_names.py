"""name_to_catalog / catalog_to_name: any file name, as text a database holds, and back."""

import os
import random

import pytest

from backups.engine.names import catalog_to_name, name_to_catalog, printable


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain.txt", "plain.txt"),
        (b"umlauts-\xc4\xd6\xdc", "umlauts-\\xc4\\xd6\\xdc"),
        (b"cut-\xe2\x82", "cut-\\xe2\\x82"),
        (b"new\nline", "new\\x0aline"),
        (b"back\\slash", "back\\\\slash"),
        (b"back\\xffslash", "back\\\\xffslash"),
        ("caf\u00e9-\U0001f600".encode(), "caf\u00e9-\U0001f600"),
    ],
)
def test_a_name_is_kept_as_readable_text_and_comes_back_byte_for_byte(raw, text):
    name = raw.decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    assert name_to_catalog(name) == text
    assert os.fsencode(catalog_to_name(text)) == raw


def test_every_name_round_trips():
    alphabet = b"\\x\n\x01\x7f/aZ0\xc3\xa9\xff\xe2\x82\xac\xf0\x9f\x98\x80"
    draw = random.Random(7)
    for _ in range(20_000):
        raw = bytes(draw.choice(alphabet) for _ in range(draw.randint(0, 10)))
        name = raw.decode("utf-8", "surrogateescape")
        text = name_to_catalog(name)
        text.encode("utf-8")  # storable: no surrogate left
        assert catalog_to_name(text) == name, raw


def test_a_backslash_that_starts_no_escape_is_taken_literally():
    assert catalog_to_name("a\\qb") == "a\\qb"
    assert catalog_to_name("x\\x4") == "x\\x4"


def test_free_text_keeps_its_backslashes_and_loses_only_its_surrogates():
    assert printable("C:\\dir \udcc4 \ud800") == "C:\\dir \\xc4 \\ud800"
    assert printable("ok \u00e9") == "ok \u00e9"
