"""The fleet file: storages, policies and sources as YAML, read strictly, written stably.

```
version: 2
storages:
  offsite: {kind: s3, url: s3://acme-backups/site-a, keep_monthly: 12}
policies:
  hourly: {schedule: "0 * * * *", rpo: 2h, keep_hourly: 24, copy_to: [offsite]}
sources:
  web: {kind: directory, location: /srv/web, policy: hourly}
```

Each top-level section is a mapping from a name to that object's fields. A section the file
leaves out is not managed by it; a section that is present is the whole truth for its kind.
A field left out, or given as null, takes its default. Anything the format does not know (a
key, a field, a second copy of a name) is refused with its file and line, so a typo never
passes silently. Values come back in the catalog's units: durations as whole seconds.

The version says what the file manages. Version 2 added storages and the policy fields
that name them; a version 1 file cannot use them, and leaves them as they are (as it always
did), so a file written before them never moves a policy's backups back to ARCHIVE_ROOT.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .crypto import parse_recipients
from .durations import parse_duration
from .errors import EngineError, KeyFileError
from .retention import Rules

VERSION = 2

try:  # libyaml's parser when PyYAML was built with it: several times faster on big fleets
    _BaseLoader = yaml.CSafeLoader
    _BaseDumper = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader
    _BaseDumper = yaml.SafeDumper


class FleetFileError(EngineError):
    """The fleet file cannot be used; the message names the file, the line and the fix."""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text: put it in quotes")
    return value


def _duration(value: Any) -> int:
    return parse_duration(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    if value < 0:
        raise ValueError(f"{value} is negative: give 0 or more")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("give a list of non-empty texts, e.g. ['*.tmp', 'cache/*']")
    return list(value)


_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _tags(value: Any) -> str:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise ValueError("give a tag or a list of tags, e.g. [ops, dba]")
    tags: list[str] = []
    for item in items:
        for tag in item.replace(" ", ",").split(","):
            if not tag:
                continue
            if not _TAG.fullmatch(tag):
                raise ValueError(
                    f"{tag!r} is not a notification tag: use letters, digits, '_', '.' or '-'"
                )
            if tag not in tags:
                tags.append(tag)
    return ",".join(tags)


def _recipients(value: Any) -> str:
    """Return age recipients (one, or a list) as the catalog keeps them: one a line."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError("give an age public key (age1…) or a list of them")
    try:
        return "\n".join(parse_recipients(items))
    except KeyFileError as error:
        raise ValueError(str(error).rstrip(".")) from None


def _names(value: Any) -> tuple[str, ...]:
    """Return one name or a list of names as a sorted tuple (the order means nothing)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise ValueError("give a storage name or a list of them, e.g. [nas, offsite]")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{repeated[0]!r} is named twice")
    return tuple(sorted(items))


def _s3_url(value: Any) -> str:
    text = _text(value)
    if not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an S3 URL: give s3://BUCKET or s3://BUCKET/PREFIX")
    return text.rstrip("/")


_QUERY_KEYS = ("sql", "expect")


def _queries(value: Any) -> list[dict]:
    help_text = "give a list of {sql: ..., expect: '> 0'} mappings"
    if not isinstance(value, list):
        raise ValueError(help_text)
    queries = []
    for index, item in enumerate(value, 1):
        if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
            raise ValueError(f"item {index}: {help_text}")
        unknown = [key for key in item if key not in _QUERY_KEYS]
        if unknown:
            raise ValueError(f"item {index}: unknown key {unknown[0]!r} (known: sql, expect)")
        if "expect" in item and not isinstance(item["expect"], str):
            raise ValueError(f"item {index}: expect must be text such as '> 0'; quote it")
        queries.append(dict(item))
    return queries


@dataclass(frozen=True)
class Field:
    """One field of an object in the file: its key, the catalog attribute, its parser."""

    key: str
    attr: str
    parse: Callable[[Any], Any]
    required: bool = False
    since: int = 1  # the file version that added it


def fields_of(fields: dict[str, Field], version: int) -> list[Field]:
    """Return the fields a file of `version` manages: the ones it may write."""
    return [spec for spec in fields.values() if spec.since <= version]


# The retention rules, one count each: keep_last, keep_hourly ... keep_yearly.
KEEP_FIELDS = tuple(
    Field(f"keep_{rule.name}", f"keep_{rule.name}", _count) for rule in dataclasses.fields(Rules)
)

POLICY_FIELDS = {
    f.key: f
    for f in (
        Field("schedule", "schedule", _text),
        Field("rpo", "rpo_s", _duration),
        Field("rto", "rto_s", _duration),
        Field("compression", "compression", _text),
        Field("compression_level", "compression_level", _count),
        *KEEP_FIELDS,
        Field("drill_every", "drill_every_s", _duration),
        Field("full_every", "full_every_s", _duration),
        Field("differential_every", "differential_every_s", _duration),
        Field("verify_after_backup", "verify_after_backup", _flag),
        Field("run_timeout", "run_timeout_s", _duration),
        Field("check_queries", "check_queries", _queries),
        Field("notify", "notify", _tags),
        Field("encrypt_to", "recipients", _recipients),
        # Storages by name; `storage: default` (or none) is ARCHIVE_ROOT.
        Field("storage", "storage", _text, since=2),
        Field("copy_to", "copy_to", _names, since=2),
        Field("archive_to", "archive_to", _text, since=2),
        Field("archive_after", "archive_after_s", _duration, since=2),
    )
}

STORAGE_FIELDS = {
    f.key: f
    for f in (
        Field("kind", "kind", _text, required=True),
        Field("path", "path", _text),
        Field("url", "url", _s3_url),
        Field("endpoint", "endpoint", _text),
        Field("region", "region", _text),
        Field("credentials_env", "credentials_env", _text),
        # Its own keep rules for the copies it holds (none: they go with their backups).
        *KEEP_FIELDS,
    )
}

SOURCE_FIELDS = {
    f.key: f
    for f in (
        Field("kind", "kind", _text, required=True),
        Field("location", "location", _text, required=True),
        Field("policy", "policy", _text),
        Field("excludes", "excludes", _texts),
        Field("owner", "owner", _text),
        Field("notes", "notes", _text),
        Field("enabled", "enabled", _flag),
        Field("slug", "slug", _text),
        Field("notify", "notify", _tags),
    )
}


@dataclass(frozen=True)
class Section:
    """One top-level section: what one of its objects is called, its fields, since when."""

    what: str
    fields: dict[str, Field]
    since: int = 1


# In the order they are written and applied: an object may name one of an earlier section.
SECTIONS = {
    "storages": Section("storage", STORAGE_FIELDS, since=2),
    "policies": Section("policy", POLICY_FIELDS),
    "sources": Section("source", SOURCE_FIELDS),
}
TOP_LEVEL_KEYS = ("version", *SECTIONS)


@dataclass
class Item:
    """One declared object: its name, where it is written, and the fields it sets.

    `values` maps catalog attributes to values for the fields the file gives (not null);
    `lines` maps catalog attributes (and "name") to their line in the file.
    """

    name: str
    line: int
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, attr: str) -> int:
        """Return the line of a field, or of the object when the field is not written."""
        return self.lines.get(attr, self.line)


@dataclass
class FleetFile:
    """A parsed fleet file. A section is None when the file leaves it out (not managed)."""

    name: str
    version: int
    sections: dict[str, dict[str, Item] | None]

    @property
    def storages(self) -> dict[str, Item] | None:
        return self.sections["storages"]

    @property
    def policies(self) -> dict[str, Item] | None:
        return self.sections["policies"]

    @property
    def sources(self) -> dict[str, Item] | None:
        return self.sections["sources"]

    def where(self, line: int | None) -> str:
        """Return `file:line` for messages."""
        return f"{self.name}:{line}" if line else self.name


class _Mapping(dict):
    """A YAML mapping that remembers the line of each key and of itself."""

    line: int = 0
    key_lines: dict


class _Loader(_BaseLoader):
    """A safe loader whose mappings know their lines and refuse repeated keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode):
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    yield mapping
    # Merge keys (`<<: *defaults`) may be overridden by the keys written beside them; two
    # keys written side by side with the same name are a mistake (YAML keeps the last one).
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key, (dict, list)):
            raise FleetFileError(f"line {line}: a key must be a plain name")
        if key in seen:
            raise FleetFileError(
                f"line {line}: {key!r} is written twice (first on line {seen[key]}); "
                "keep one of them"
            )
        seen[key] = line
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}known: {', '.join(known)}"


def _parse_item(
    filename: str, version: int, what: str, name: Any, body: Any, line: int, fields
) -> Item:
    where = f"{filename}:{line}"
    if not isinstance(name, str) or not name.strip():
        raise FleetFileError(f"{where}: the {what} name {name!r} is not text; put it in quotes.")
    if body is None:
        body = _Mapping()
        body.line, body.key_lines = line, {}
    if not isinstance(body, dict):
        raise FleetFileError(
            f"{where}: {what} {name!r}: give its fields as a mapping (field: value), "
            f"not {type(body).__name__}."
        )
    item = Item(name=name, line=line, lines={"name": line})
    key_lines = getattr(body, "key_lines", {})
    for key, value in body.items():
        key_line = key_lines.get(key, line)
        spec = fields.get(key) if isinstance(key, str) else None
        if spec is None:
            raise FleetFileError(
                f"{filename}:{key_line}: {what} {name!r}: unknown field {key!r}; "
                f"{_suggest(str(key), fields)}."
            )
        if spec.since > version:
            raise FleetFileError(
                f"{filename}:{key_line}: {what} {name!r}: {key} needs `version: {spec.since}` "
                f"at the top of the file (a version {version} file leaves it as it is)."
            )
        item.lines[spec.attr] = key_line
        if value is None:
            continue
        try:
            item.values[spec.attr] = spec.parse(value)
        except ValueError as error:
            raise FleetFileError(
                f"{filename}:{key_line}: {what} {name!r}: {key}: {error}."
            ) from None
    for spec in fields.values():
        if spec.required and spec.attr not in item.values:
            raise FleetFileError(f"{where}: {what} {name!r}: {spec.key} is required.")
    return item


def load_fleet(data: bytes | str, filename: str) -> FleetFile:
    """Parse and check a fleet file; raise FleetFileError naming the file, line and problem.

    Check the structure and every value's type and form (durations, counts, flags); what
    needs the catalog (a policy a source names, a location on disk) is left to the caller.
    """
    try:
        document = yaml.load(data, Loader=_Loader)  # noqa: S506 - a safe loader
    except FleetFileError as error:
        raise FleetFileError(f"{filename}:{str(error).removeprefix('line ')}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = error.problem or error.context or "not valid YAML"
        raise FleetFileError(f"{filename}{line}: not valid YAML: {problem}.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FleetFileError(f"{filename}: not valid YAML: {error}.") from None
    if not isinstance(document, dict):
        raise FleetFileError(
            f"{filename}: expected a mapping with `version: {VERSION}` and the sections "
            f"{', '.join(SECTIONS)}; the file holds {type(document).__name__}."
        )
    key_lines = getattr(document, "key_lines", {})
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            raise FleetFileError(
                f"{filename}:{key_lines.get(key, 1)}: unknown top-level key {key!r}; "
                f"{_suggest(str(key), TOP_LEVEL_KEYS)}."
            )
    version = document.get("version")
    if version is None:
        raise FleetFileError(f"{filename}: add `version: {VERSION}` at the top of the file.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FleetFileError(
            f"{filename}:{key_lines['version']}: version must be a whole number from 1 to "
            f"{VERSION}, not {version!r}."
        )
    if version > VERSION:
        raise FleetFileError(
            f"{filename}: written for fleet file version {version}; this version of the "
            f"program reads version {VERSION}. Upgrade it first."
        )
    sections: dict[str, dict[str, Item] | None] = {}
    for section, spec in SECTIONS.items():
        if section not in document:
            sections[section] = None
            continue
        body = document[section]
        line = key_lines[section]
        if spec.since > version:
            raise FleetFileError(
                f"{filename}:{line}: {section} needs `version: {spec.since}` at the top of "
                "the file."
            )
        if not isinstance(body, dict):
            raise FleetFileError(
                f"{filename}:{line}: {section} must be a mapping of names to fields "
                "(write `{}` for none)."
            )
        names = getattr(body, "key_lines", {})
        sections[section] = {
            item.name: item
            for item in (
                _parse_item(
                    filename, version, spec.what, name, value, names.get(name, line), spec.fields
                )
                for name, value in body.items()
            )
        }
    return FleetFile(name=filename, version=version, sections=sections)


class _Dumper(_BaseDumper):
    """A dumper that writes notes spanning lines as literal blocks, readable in a diff."""


def _represent_text(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_text)


def dump_fleet(sections: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Return the YAML text of a fleet, objects in the given order, fields as given.

    `sections` maps a section name to {object name: {file key: value in file form}}.
    """
    document = {"version": VERSION, **sections}
    return yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
