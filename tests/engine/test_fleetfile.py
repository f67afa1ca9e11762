"""The fleet file format on its own: strict reading with lines, shared defaults, stable dump."""

import pytest

from backups.engine.fleetfile import FleetFileError, dump_fleet, load_fleet


def test_shared_defaults_through_yaml_merge_keys_may_be_overridden_beside_them():
    fleet = load_fleet(
        b"version: 1\n"
        b"sources:\n"
        b"  web: &pod\n"
        b"    kind: kubernetes\n"
        b"    location: prod/web-0:/data\n"
        b"    owner: ops\n"
        b"  api:\n"
        b"    <<: *pod\n"
        b"    location: prod/api-0:/data\n",
        "fleet.yaml",
    )

    api = fleet.sources["api"]
    assert api.values == {"kind": "kubernetes", "location": "prod/api-0:/data", "owner": "ops"}
    assert api.line == 7 and api.line_of("location") == 9
    assert fleet.policies is None  # left out: not managed by this file


def test_null_leaves_a_field_at_its_default_and_an_empty_object_is_all_defaults():
    fleet = load_fleet("version: 1\npolicies:\n  manual:\n  daily: {rpo: null}\n", "f.yaml")

    assert fleet.policies["manual"].values == {}
    assert fleet.policies["daily"].values == {}
    assert fleet.policies["daily"].line_of("rpo_s") == 4


def test_a_key_written_twice_in_one_mapping_is_refused():
    with pytest.raises(FleetFileError) as caught:
        load_fleet("version: 1\npolicies:\n  a:\n    rpo: 1h\n    rpo: 2h\n", "f.yaml")

    assert str(caught.value) == (
        "f.yaml:5: 'rpo' is written twice (first on line 4); keep one of them"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\nstorage: {}\n", "f.yaml:2: unknown top-level key 'storage'; did you"),
        ("version: 1\nstorages: {}\n", "f.yaml:2: storages needs `version: 2` at the top"),
        ("version: 1\npolicies:\n  a: {copy_to: nas}\n", "'a': copy_to needs `version: 2`"),
        ("version: 1\npolicies:\n  yes: {}\n", "f.yaml:3: the policy name True is not text"),
        ("version: 1\npolicies:\n  a: {keep_last: '3'}\n", "f.yaml:3: policy 'a': keep_last:"),
        ("version: 1\nsources:\n  a: {kind: directory, location: 5}\n", "'a': location: 5 is"),
        ("version: 1\npolicies:\n  a: {check_queries: [{sql: x, exepct: '> 0'}]}\n", "'exepct'"),
        ("version: '1'\n", "f.yaml:1: version must be a whole number from 1 to 2, not '1'."),
        (b"version: 1\nsources: {\xff}\n", "f.yaml"),
    ],
)
def test_what_the_format_does_not_know_is_refused_with_file_and_line(text, message):
    with pytest.raises(FleetFileError) as caught:
        load_fleet(text, "f.yaml")

    assert message in str(caught.value)


def test_a_dump_reads_back_the_same_with_names_and_texts_yaml_would_reinterpret():
    awkward = ["yes", "null", "1.5", "*star", "# hash", "caf\u00e9", "- dash", "key: value"]
    sections = {
        "policies": {"p": {"schedule": "*/15 * * * *", "rpo": "90m"}},
        "sources": {
            name: {
                "kind": "postgres",
                "location": "postgresql://u@h/db",
                "owner": name,
                "notes": f"{name}\nsecond line\n",
                "excludes": [name],
            }
            for name in awkward
        },
    }

    fleet = load_fleet(dump_fleet(sections), "dump.yaml")

    assert list(fleet.sources) == awkward
    for name in awkward:
        values = fleet.sources[name].values
        assert (values["owner"], values["excludes"]) == (name, [name])
        assert values["notes"] == f"{name}\nsecond line\n"
    assert fleet.policies["p"].values == {"schedule": "*/15 * * * *", "rpo_s": 5400}
