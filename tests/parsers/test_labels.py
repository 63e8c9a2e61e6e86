"""The label vocabulary as data: the packaged labels.yaml, an administrator's extra file, bad entries."""

from __future__ import annotations

from importlib.resources import files

import pytest
import yaml

from escalations.parsers.fields import FIELD_NAMES
from escalations.parsers.labels import (
    LABEL_KEYS,
    LabelFileError,
    default_labels,
    label_table,
    match_label,
    read_labels,
)
from escalations.parsers.message import parse_message
from escalations.parsers.referral import extract_fields_from_text, extract_referral

PACKAGED = files("escalations.parsers").joinpath("labels.yaml").read_text(encoding="utf-8")

EXTRA = """\
# our partnership's own form
child_names:
  - "Kiddo's name"
other_agency: Agency we are unhappy with
"""


def test_packaged_file_is_shipped_and_every_wording_finds_its_key() -> None:
    vocabulary = read_labels(PACKAGED, "labels.yaml")
    assert set(vocabulary) <= LABEL_KEYS
    assert set(FIELD_NAMES) - {"child_dobs"} <= set(vocabulary) | {"child_dobs"}
    for key, wordings in vocabulary.items():
        for wording in wordings:
            if ":" in wording or "?" in wording:
                continue
            label = match_label(f"{wording}: something", default_labels())
            assert label is not None and label.key == key, wording


def test_wordings_stay_text() -> None:
    # safe_load would make these booleans; the node reader keeps what the administrator wrote
    assert read_labels("borough:\n  - no\n  - on\n", "x.yaml") == {"borough": ("no", "on")}


def test_extra_file_extends_the_vocabulary() -> None:
    text = "Kiddo's name: Ava Testchild\nAgency we are unhappy with: Example Health Trust\n"
    assert extract_fields_from_text(text).child_names == ()
    table = label_table(EXTRA, "/etc/escalations/labels.yaml")
    fields = extract_fields_from_text(text, table)
    assert fields.child_names == ("Ava Testchild",)
    assert fields.other_agency == "Example Health Trust"
    # the packaged wordings still work alongside
    assert extract_fields_from_text("Name of child(ren): Ben Testchild", table).child_names == ("Ben Testchild",)
    # and the default table was not changed by building an extended one
    assert match_label("Kiddo's name: Ava") is None


def test_extra_file_reaches_extract_referral() -> None:
    raw = (b"From: Jo Bloggs <jo@school.example.org>\r\nTo: chscp@hackney.gov.uk\r\nSubject: Escalation\r\n"
           b"\r\nKiddo's name: Ava Testchild\r\n")
    parse = extract_referral(parse_message(raw), ("child_names",), label_table(EXTRA, "labels.yaml"))
    assert parse.fields.child_names == ("Ava Testchild",)
    assert parse.missing == ()


def test_extra_file_overrides_a_packaged_wording() -> None:
    table = label_table("other_agency:\n  - team\n", "labels.yaml")
    assert extract_fields_from_text("Team: Example Youth Service", table).other_agency == "Example Youth Service"
    assert extract_fields_from_text("Team: Example Youth Service").raised_by_agency == "Example Youth Service"


def test_no_extra_file_is_the_packaged_table() -> None:
    assert label_table(None) is default_labels()
    assert label_table("  \n# nothing yet\n") is default_labels()


def test_unknown_field_name_names_the_file_line_and_entry() -> None:
    bad = "child_names:\n  - kiddo\nchild_nmaes:\n  - kid\n"
    with pytest.raises(LabelFileError) as err:
        label_table(bad, "/etc/escalations/labels.yaml")
    message = str(err.value)
    assert message.startswith("/etc/escalations/labels.yaml:3: entry 'child_nmaes': unknown field name")
    assert "child_names" in message  # the names it could have been


@pytest.mark.parametrize(("text", "expected"), [
    ("- just\n- a list\n", "labels.yaml: expected a mapping"),
    ("child_names: [\n", "labels.yaml: not valid YAML"),
    ("child_names:\n  - [nested]\n", "labels.yaml:1: entry 'child_names': a wording must be non-empty text"),
    ("stage: ''\n", "labels.yaml:1: entry 'stage': a wording must be non-empty text"),
])
def test_malformed_files_are_refused_clearly(text: str, expected: str) -> None:
    with pytest.raises(LabelFileError, match="^" + expected.replace("[", r"\[")):
        read_labels(text, "labels.yaml")


def test_packaged_file_is_plain_yaml_in_file_order() -> None:
    # what an administrator copies from: the same keys in the same order a YAML reader sees
    assert list(yaml.safe_load(PACKAGED)) == list(read_labels(PACKAGED, "labels.yaml"))
