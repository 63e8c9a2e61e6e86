"""Matching a line of a referral against the label vocabulary ("Name of child(ren):", "DOB 01/02/2015").

Pure: no I/O beyond reading the vocabulary shipped inside the package. The vocabulary is data,
``labels.yaml`` next to this module; an administrator's extra wordings come in as text from the
caller (``label_table(extra_text, source)``), never from a setting read here.

Labels are matched leniently (case, spacing, punctuation, bullets, markdown bold), either
"Label: value" on one line or a label on its own line with the value on the following lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

from escalations.parsers.fields import CHILD_STATUSES, FIELD_NAMES
from escalations.parsers.values import norm

__all__ = [
    "FUZZY_THRESHOLD",
    "LABEL_KEYS",
    "SECTION_SUBLABELS",
    "Label",
    "LabelFileError",
    "LabelTable",
    "clean_line",
    "default_labels",
    "label_table",
    "match_label",
    "read_labels",
]

#: What a wording in labels.yaml may map to, besides a field name: a yes/no question about one child
#: status, a section heading, the one box holding concern and actions, a section-dependent "Name",
#: or a label whose value is never wanted.
LABEL_KEYS: frozenset[str] = frozenset(FIELD_NAMES) | frozenset({
    *(f"status:{s}" for s in CHILD_STATUSES if s != "none"),
    "section:other", "section:raiser", "section:child", "concern+actions", "sub:name", "ignore",
})

# Labels whose meaning depends on the section they appear in (Sutton's "Name / Agency" columns
# under "Name of practitioner and agency...", Tri-borough's "Name / Designation / Agency" blocks).
SECTION_SUBLABELS: dict[str, dict[str, str]] = {
    "other": {"sub:name": "other_practitioner", "raised_by_agency": "other_agency",
              "raised_by_role": "ignore", "raised_by_email": "ignore"},
    "raiser": {"sub:name": "raised_by_name"},
    "child": {"sub:name": "child_names"},
    "": {"sub:name": "raised_by_name"},
}


class LabelFileError(ValueError):
    """A labels file that cannot be used; the message names the file, line and entry."""


def _scalar(node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise LabelFileError(f"{where}: a wording must be non-empty text")
    return str(node.value)


def read_labels(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """The ``key: [wording, ...]`` entries of a labels file, in file order, checked.

    Read through the YAML node tree rather than ``safe_load`` so that an error can name its line
    and a wording such as ``no`` or ``on`` stays text."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise LabelFileError(f"{source}: not valid YAML ({type(exc).__name__})") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise LabelFileError(f"{source}: expected a mapping of field name to a list of wordings")
    entries: dict[str, tuple[str, ...]] = {}
    for key_node, value_node in root.value:
        key = _scalar(key_node, f"{source}:{key_node.start_mark.line + 1}")
        where = f"{source}:{key_node.start_mark.line + 1}: entry {key!r}"
        if key not in LABEL_KEYS:
            raise LabelFileError(f"{where}: unknown field name (expected one of {', '.join(sorted(LABEL_KEYS))})")
        if isinstance(value_node, yaml.SequenceNode):
            wordings = tuple(_scalar(n, where) for n in value_node.value)
        else:
            wordings = (_scalar(value_node, where),)
        entries[key] = entries.get(key, ()) + wordings
    return entries


@dataclass(frozen=True)
class LabelTable:
    exact: dict[str, str]
    prefixes: tuple[tuple[str, str], ...]  # multi-word labels, longest first, for "Label (extra words): value"
    bare: tuple[tuple[str, str], ...]  # labels that may be followed by a value with no separator
    #: every wording, for fuzzy matching
    wordings: tuple[str, ...] = ()

    @classmethod
    def build(cls, *vocabularies: dict[str, tuple[str, ...]]) -> LabelTable:
        """Within one vocabulary the first key listing a wording keeps it; a later vocabulary
        (an administrator's file) overrides an earlier one's wordings and adds its own."""
        exact: dict[str, str] = {}
        for vocabulary in vocabularies:
            own: dict[str, str] = {}
            for key, variants in vocabulary.items():
                for v in variants:
                    own.setdefault(norm(v), key)
            exact.update(own)
        prefixes = tuple(sorted(((k, v) for k, v in exact.items() if " " in k and v != "ignore"),
                                key=lambda kv: -len(kv[0])))
        bare = tuple(sorted(((k, v) for k, v in exact.items() if v in ("child_id", "child_dobs", "stage")),
                            key=lambda kv: -len(kv[0])))
        return cls(exact, prefixes, bare, tuple(exact))


@cache
def _packaged() -> dict[str, tuple[str, ...]]:
    text = files("escalations.parsers").joinpath("labels.yaml").read_text(encoding="utf-8")
    return read_labels(text, "escalations/parsers/labels.yaml")


@cache
def default_labels() -> LabelTable:
    """The packaged vocabulary, read once."""
    return LabelTable.build(_packaged())


# Read at import, as the vocabulary table always was: the parse worker imports this after capping
# its memory, so a worker too small to hold the vocabulary fails at start (and the service keeps
# its own parse) rather than part-way through reading a message's attachments.
default_labels()


def label_table(extra: str | None = None, source: str = "labels.yaml") -> LabelTable:
    """The packaged vocabulary extended by ``extra``, the text of an administrator's labels file
    (``source`` names it in errors). Raises LabelFileError."""
    vocabulary = read_labels(extra, source) if extra else {}
    return LabelTable.build(_packaged(), vocabulary) if vocabulary else default_labels()


# ---- matching a line --------------------------------------------------------------------------------

_BULLET_RE = re.compile(r"^(?:[>\s]*)(?:[-*•·▪‣◦–+#|]+\s*|\(?\d{1,2}[.)]\s+|\(?[a-h][.)]\s+)*")

# Words that are labels only when followed by ":" or "?": on a line of their own they are more
# likely a value ("Child Protection Plan", "LAC", "Urgent") or a heading.
_NEEDS_SEPARATOR = frozenset(norm(w) for w in (
    "urgent", "urgency", "la", "child", "children", "young person", "team", "service", "category", "status",
    "mosaic", "position", "disagreement", "date", "to", "from", "sent", "cc", "subject", "signed",
))


def clean_line(line: str) -> str:
    s = line.replace("\xa0", " ").replace("\u200b", "").strip()
    s = _BULLET_RE.sub("", s)
    s = s.replace("**", "").replace("__", "")
    s = s.strip().strip("*_|").strip()
    return s


@dataclass(frozen=True)
class Label:
    key: str
    inline: str | None  # value on the same line, or None for a label on its own line
    #: matched only approximately (``FUZZY_THRESHOLD``), not by a wording of the vocabulary
    fuzzy: bool = False


#: How close (rapidfuzz ``ratio``, 0-100) an unknown "Label:" must be to a known wording to count as it.
#: 88 takes a typo or two in a long label ("Brief descripton of nature of concern", "Outcomes saught",
#: "Name of refferer") and leaves apart labels that differ by a word ("Outcome achieved" vs "Outcome
#: sought" scores 60; "Summary of the concern raised" matches nothing). Only labels written with a separator, of FUZZY_MIN_CHARS or more, are tried.
FUZZY_THRESHOLD = 88
FUZZY_MIN_CHARS = 8


def _fuzzy(label_text: str, table: LabelTable) -> str | None:
    n = norm(label_text)
    if len(n) < FUZZY_MIN_CHARS or len(n) > 120:
        return None
    # Imported here: only a label no wording fits gets this far, and the service's own process (which
    # loads the label table but leaves parsing to its sandbox) need not hold rapidfuzz (~2.7 MiB).
    from rapidfuzz import fuzz, process

    found = process.extractOne(n, table.wordings, scorer=fuzz.ratio, score_cutoff=FUZZY_THRESHOLD)
    if found is None:
        return None
    key = table.exact[found[0]]
    return None if key == "ignore" else key


def _lookup(label_text: str, allow_prefix: bool, table: LabelTable) -> str | None:
    n = norm(label_text)
    if not n or len(n) > 160:
        return None
    key = table.exact.get(n)
    if key is not None:
        return key
    if allow_prefix and len(n.split()) <= 16:
        for known, k in table.prefixes:
            if n.startswith(known + " "):
                return k
    return None


def _after_words(s: str, count: int) -> str:
    """s without its first ``count`` alphanumeric words (and the punctuation after them)."""
    m = re.match(rf"^(?:[^A-Za-z0-9]*[A-Za-z0-9]+){{{count}}}[^A-Za-z0-9]*", s)
    return s[m.end():].strip() if m else ""


def _inline(separator: str, rest: str) -> str:
    inline = rest.strip().strip("*_").strip()
    if separator == "?" and inline.startswith(":"):
        inline = inline[1:].strip()
    # "Should the Head of Service be contacted? Yes/No": the printed choices are part of the label
    return "" if _PRINTED_CHOICES.fullmatch(inline) else inline


_PRINTED_CHOICES = re.compile(r"\s*(?:yes|y)\s*[/|,]?\s*(?:or\s+)?(?:no|n)\s*", re.I)


def match_label(line: str, table: LabelTable | None = None) -> Label | None:
    """The label at the start of ``line`` (and its value on the same line), or None."""
    t = table or default_labels()
    s = clean_line(line)
    if not s or len(s) > 400:
        return None
    m = re.match(r"^([^:?]{1,160}?)\s*([:?])\s*(.*)$", s)
    if m:
        key = _lookup(m.group(1), True, t)
        if key is not None:
            return Label(key, _inline(m.group(2), m.group(3)) or None)
        key = _fuzzy(m.group(1), t)
        if key is not None:
            return Label(key, _inline(m.group(2), m.group(3)) or None, fuzzy=True)
    key = _lookup(s, False, t)
    if key is not None and not (key.startswith("status:") or norm(s) in _NEEDS_SEPARATOR):
        return Label(key, None)
    # "Mosaic ID no. 1234567", "DOB 01/02/2015", "Stage 2": no separator, but the value is plainly data
    n = norm(s)
    for known, k in t.bare:
        if n.startswith(known + " "):
            value = _after_words(s, len(known.split()))
            if value and len(value.split()) == 1 if k == "stage" else value[:1].isdigit():
                return Label(k, value)
            break
    # "Label - value", "Label<TAB>value", "Label   value" (copied from tables)
    m = re.match(r"^(.{1,80}?)(?:\s+[-–—]\s+|\t+|\s{3,})(.+)$", s)
    if m:
        key = _lookup(m.group(1), False, t)
        if key is not None and key != "ignore":
            return Label(key, m.group(2).strip())
    return None
