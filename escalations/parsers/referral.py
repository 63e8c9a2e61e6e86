"""Referral fields out of free-form mail: labelled text, HTML tables, forwarded mail, .docx, winmail.dat.

Pure: no I/O. A field is "Label: value" on one line or a label on its own line with the value on
the following lines (which is also how table rows come out: label cell, then value cell). Which
wordings are labels is ``labels``; reading a value is ``values``; where the sender's own text
ends is ``quoting``; attached forms become text in ``attachments``.

The field model's and attachment readers' names are re-exported here for callers that import
them from this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from escalations.parsers import free_text, values
from escalations.parsers.attachments import (
    attachment_texts,
    docx_to_text,
    rtf_to_plain,
    tnef_to_parts,
    with_attachment_texts,
)
from escalations.parsers.classify import MIN_LABELLED_FIELDS
from escalations.parsers.fields import FIELD_NAMES, ChildStatus, ReferralFields, ReferralParse
from escalations.parsers.labels import SECTION_SUBLABELS, Label, LabelTable, clean_line, match_label
from escalations.parsers.message import ParsedMessage
from escalations.parsers.quoting import (
    FORWARD_MARKER_RE,
    cut_trailing_signature,
    looks_like_signature,
    signature_at,
    split_forwarded,
    starts_sign_off,
)
from escalations.parsers.timescale import find_timescale, first_readable, in_letter
from escalations.parsers.values import EMPTY_TEXT_VALUES, norm, parse_date, parse_datetime

__all__ = [
    "FIELD_NAMES",
    "ChildStatus",
    "ReferralFields",
    "ReferralParse",
    "docx_to_text",
    "extract_fields_from_text",
    "extract_referral",
    "missing_of",
    "parse_date",
    "parse_datetime",
    "rtf_to_plain",
    "split_forwarded",
    "tnef_to_parts",
    "with_attachment_texts",
]

# The label matcher and signature check under the names their tests import from here.
_match_label = match_label
_looks_like_signature = looks_like_signature

# Fields whose value may run over blank lines (paragraphs of a concern); the rest end at the first.
_LONG_FIELDS = frozenset({"concern", "actions_taken", "outcome_sought", "concern+actions", "section:other"})
# Labels that belong to the section above them ("Name / Agency / Role" under "Referrer details").
_IN_SECTION = frozenset({"raised_by_agency", "raised_by_role", "raised_by_email"})
# What a fuzzily matched key is recorded as in ``fuzzy_labels`` (a field name).
_FUZZY_AS = {"section:other": "other_agency", "concern+actions": "concern"}
_ONE_LINE_FIELDS = ("child_id", "raised_by_name", "raised_by_role", "raised_by_agency", "other_agency",
                    "other_practitioner", "borough")


@dataclass
class _Builder:
    values: dict[str, object]
    labelled: set[str]
    #: list fields being accumulated (ordered, without repeats); ``values`` gets them on finish()
    lists: dict[str, dict[object, None]] = field(default_factory=dict)
    #: the timescales written under a needed-by label, as written (read once the received time is known)
    timescales: list[str] = field(default_factory=list)
    #: fields whose label matched only fuzzily
    fuzzy: set[str] = field(default_factory=set)

    def put(self, name: str, value: object) -> None:
        if name not in self.values or _is_blank(self.values[name]):
            self.values[name] = value

    def put_parsed(self, name: str, value: object) -> None:
        if value is not None:
            self.put(name, value)

    def add(self, name: str, items: Sequence[object]) -> None:
        """List fields accumulate within one form (names line with DOBs, then a DOB line)."""
        # in place: rebuilding the tuple on every line made a long form cost quadratic time
        if items:
            self.lists.setdefault(name, {}).update(dict.fromkeys(items))

    def finish(self) -> _Builder:
        for name, items in self.lists.items():
            self.values[name] = tuple(items)
        return self


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, tuple | list):
        return not value
    if isinstance(value, str):
        return norm(value) in EMPTY_TEXT_VALUES
    return False


# ---- storing a labelled value -----------------------------------------------------------------------

def _dates(value: str) -> list[object]:
    return [d for _s, _e, d in values.find_dates(value)]


def _store_names(b: _Builder, value: str) -> None:
    # "Ava Testchild (DOB 01/02/2015)": the names, and the dates of birth beside them
    b.add("child_names", values.names(value))
    b.add("child_dobs", _dates(value))


def _store_email(b: _Builder, value: str) -> None:
    m = values.EMAIL_RE.search(value)
    if m:
        b.put("raised_by_email", m.group(0).lower())


def _one_line(key: str) -> Callable[[_Builder, str], None]:
    def store(b: _Builder, value: str) -> None:
        one = " ".join(ln.strip() for ln in value.splitlines() if ln.strip())
        if key == "child_id":
            one = one.rstrip(".")
        if norm(one) not in EMPTY_TEXT_VALUES:
            b.put(key, one)
    return store


def _store_timescale(b: _Builder, value: str) -> None:
    one = " ".join(ln.strip() for ln in value.splitlines() if ln.strip())
    if norm(one) not in EMPTY_TEXT_VALUES:
        b.timescales.append(one)


def _parsed(key: str, parse: Callable[[str], object]) -> Callable[[_Builder, str], None]:
    return lambda b, value: b.put_parsed(key, parse(value))


_STORERS: dict[str, Callable[[_Builder, str], None]] = {
    "child_names": _store_names,
    "child_dobs": lambda b, value: b.add("child_dobs", _dates(value)),
    "child_status": _parsed("child_status", values.child_status),
    "raised_by_email": _store_email,
    "needed_by": _store_timescale,
    "immediate_risk": _parsed("immediate_risk", values.yes_no),
    "head_of_service_contacted": _parsed("head_of_service_contacted", values.yes_no_choice),
    "stage": _parsed("stage", values.stage),
    **{key: _one_line(key) for key in _ONE_LINE_FIELDS},
}


def _store_text(b: _Builder, key: str, value: str) -> None:
    if norm(value) not in EMPTY_TEXT_VALUES:
        b.put(key, value)


def _store_status_question(b: _Builder, key: str, value: str) -> None:
    """"Subject to a CP plan? Yes" sets that status; a status written as the answer counts too."""
    b.labelled.add("child_status")
    yn = values.yes_no(value)
    if yn is True:
        b.put("child_status", key.split(":", 1)[1])
    elif yn is None and value:
        status = values.child_status(value)
        if status is not None and status != "none":
            b.put("child_status", status)


def _store(b: _Builder, key: str, raw: str) -> None:
    value = raw.strip()
    if key == "concern+actions":
        b.labelled.add("concern")
        if value:
            b.put("concern", value)
        return
    if key.startswith("status:"):
        _store_status_question(b, key, value)
        return
    if key not in FIELD_NAMES:
        return
    b.labelled.add(key)
    if not value:
        return
    storer = _STORERS.get(key)
    if storer is None:
        _store_text(b, key, value)
    else:
        storer(b, value)


def _store_other_party(b: _Builder, value: str) -> None:
    """"Name of practitioner and agency with which there is a concern: Jane Doe, Hackney CSC"."""
    b.labelled.add("other_agency")
    if not value:
        return
    practitioner, agency = values.split_practitioner_agency(value)
    if practitioner:
        b.put("other_practitioner", practitioner)
        b.labelled.add("other_practitioner")
    if agency:
        b.put("other_agency", agency)


# ---- the extractor ----------------------------------------------------------------------------------

def _resolve(key: str, section: str) -> str:
    mapping = SECTION_SUBLABELS.get(section, {})
    if key in mapping:
        return mapping[key]
    if key == "sub:name":
        return SECTION_SUBLABELS[""]["sub:name"]
    return key


def _clean_value(lines: Sequence[str]) -> str:
    cleaned = [clean_line(ln) if i == 0 else ln.replace("\xa0", " ").rstrip() for i, ln in enumerate(lines)]
    text = "\n".join(cleaned).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def _collect(lines: Sequence[str], labels: Sequence[Label | None], j: int, long_field: bool,
             value_lines: list[str]) -> int:
    """Append the value's continuation lines from line j to ``value_lines``; the line after them."""
    blank_run = 0
    while j < len(lines):
        raw = lines[j]
        if labels[j] is not None or FORWARD_MARKER_RE.match(raw):
            break
        if not raw.strip():
            blank_run += 1
            if not long_field and value_lines:
                break
            j += 1
            continue
        if starts_sign_off(clean_line(raw)):
            break
        if value_lines and signature_at(lines, j, after_blank=bool(blank_run)):
            break
        if long_field and blank_run and value_lines and looks_like_signature(lines, j):
            break
        if blank_run and value_lines:
            value_lines.append("")
        blank_run = 0
        value_lines.append(raw)
        j += 1
    return j


def _extract(text: str, table: LabelTable | None = None) -> _Builder:
    b = _Builder({}, set())
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    labels = [match_label(ln, table) for ln in lines]
    section = ""
    i = 0
    while i < len(lines):
        lab = labels[i]
        if lab is None or lab.key == "ignore":
            i += 1
            continue
        key = lab.key
        if key.startswith("section:"):
            section = key.split(":", 1)[1]
            if key != "section:other":
                i += 1
                continue
        elif not key.startswith("sub:") and key not in _IN_SECTION:
            section = ""
        name = _resolve(key, section)
        if lab.fuzzy:
            as_field = "child_status" if name.startswith("status:") else _FUZZY_AS.get(name, name)
            if as_field in FIELD_NAMES:
                b.fuzzy.add(as_field)
        value_lines: list[str] = [lab.inline] if lab.inline else []
        j = _collect(lines, labels, i + 1, name in _LONG_FIELDS, value_lines)
        value = _clean_value(value_lines)
        if name in _LONG_FIELDS:
            value = cut_trailing_signature(value)
        if name == "section:other":
            _store_other_party(b, value)
        else:
            _store(b, name, value)
        i = j if j > i + 1 else i + 1
    return b.finish()


def _fields(b: _Builder) -> ReferralFields:
    return ReferralFields(**{k: v for k, v in b.values.items() if k in FIELD_NAMES})  # type: ignore[arg-type]


def _read_timescales(b: _Builder, received: datetime | None) -> str | None:
    """``needed_by`` from the labelled timescales; the one written, when none reads."""
    if not _is_blank(b.values.get("needed_by")):
        return None
    found, unread = first_readable(b.timescales, received)
    if found is not None:
        b.values["needed_by"] = found
    return unread


def extract_fields_from_text(text: str, labels: LabelTable | None = None,
                             received: datetime | None = None) -> ReferralFields:
    """The labelled referral fields in one block of text (a timescale in words is read relative to
    ``received``, naive local; without it only a written date counts)."""
    b = _extract(text, labels)
    _read_timescales(b, received)
    return _fields(b)


def _fill_from_sender(b: _Builder, msg: ParsedMessage) -> None:
    """The From header stands in for a referrer the form does not name."""
    if "raised_by_email" not in b.values and msg.from_address:
        b.values["raised_by_email"] = msg.from_address
    if _is_blank(b.values.get("raised_by_name")) and msg.from_name.strip():
        name = msg.from_name.strip()
        if "@" not in name:
            b.values["raised_by_name"] = name


def _fill_from_free_text(b: _Builder, own: str) -> None:
    """Too few labels: the sender's own words are the concern; the risk and the agency where plain."""
    understood = free_text.understand(own)
    b.put_parsed("concern", understood.concern)
    b.put_parsed("other_agency", understood.other_agency)
    if understood.immediate_risk:
        b.put("immediate_risk", True)


class _Absorber:
    """Fields of every part of a message (body, forwards, attachments, embedded mail), first wins."""

    def __init__(self, msg: ParsedMessage, labels: LabelTable | None) -> None:
        self.builder = _Builder({}, set())
        self.sources: list[str] = []
        self.hits: list[str] = list(msg.limits_hit)
        self.labels = labels
        self.own = ""

    def absorb(self, source: str, text: str) -> None:
        builder, part = self.builder, _extract(text, self.labels)
        before = dict(builder.values)
        for k, v in part.values.items():
            builder.put(k, v)
        builder.labelled |= part.labelled
        builder.fuzzy |= part.fuzzy
        builder.timescales.extend(part.timescales)
        if (part.labelled or builder.values != before) and source not in self.sources:
            self.sources.append(source)

    def message(self, m: ParsedMessage, own_source: str, depth: int) -> None:
        own, forwarded = split_forwarded(m.text)
        if depth == 0:
            self.own = own
        self.absorb(own_source, own)
        for block in forwarded:
            self.absorb("forwarded", block)
        texts = m.attachment_texts
        if texts is None:  # not read by the parse worker (a plain parse_message result)
            texts = tuple(attachment_texts(m.attachments, hits=self.hits))
        for src, text in texts:
            self.absorb(src, text)
        if depth < 3:
            for inner in m.embedded:
                self.message(inner, "embedded", depth + 1)


def missing_of(fields: ReferralFields, required: Sequence[str]) -> tuple[str, ...]:
    """The required fields a referral leaves empty, in the order required."""
    return tuple(name for name in required if name in FIELD_NAMES and fields.is_empty(name))


def extract_referral(msg: ParsedMessage, required: Sequence[str],
                     labels: LabelTable | None = None, received: datetime | None = None) -> ReferralParse:
    """Fields from the message body, inline forwards, embedded mail, .docx forms and winmail.dat.

    ``labels`` is the vocabulary to read them with (default: the packaged one); ``received`` (naive
    local time) is what a timescale in words ("by Friday") is read against."""
    absorber = _Absorber(msg, labels)
    absorber.message(msg, "body", 0)
    builder = absorber.builder
    is_free_text = len(builder.labelled) < MIN_LABELLED_FIELDS
    if is_free_text:
        _fill_from_free_text(builder, absorber.own)
    unread = _read_timescales(builder, received)
    if not builder.timescales and (phrase := find_timescale(absorber.own)):
        found, unread = in_letter(phrase, received)
        if found is not None:
            builder.values["needed_by"] = found
    _fill_from_sender(builder, msg)
    result = _fields(builder)
    return ReferralParse(fields=result, missing=missing_of(result, required), sources=tuple(absorber.sources),
                         labelled_count=len(builder.labelled), limits_hit=tuple(dict.fromkeys(absorber.hits)),
                         timescale_unread=unread, fuzzy_labels=tuple(sorted(builder.fuzzy)),
                         free_text=is_free_text)
