"""Replies to case mail: the new text (quotes and signatures cut) and the command on its first line.

Pure: no I/O. A command is only ever read from the sender's new text, so an "ESCALATE" in the
quoted original lower down can never be picked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from escalations.parsers.commands_vocabulary import VOCABULARY, synonyms
from escalations.parsers.message import ParsedMessage

__all__ = ["REFERENCE_RE", "Command", "ReplyCommand", "find_reference", "parse_reply", "strip_quoted"]

#: A command's name (one of ``commands_vocabulary.VOCABULARY``).
Command = str
_COMMANDS: frozenset[str] = frozenset(w.name for w in VOCABULARY)
_SYNONYMS: dict[str, str] = synonyms()

REFERENCE_RE: re.Pattern[str] = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2,5}-\d{4}-\d{4,})(?![0-9])")


@dataclass(frozen=True)
class ReplyCommand:
    command: Command | None
    argument: str
    new_text: str


def find_reference(subject: str) -> str | None:
    """The first case reference (CH-2026-0001) in a subject line, if any."""
    m = REFERENCE_RE.search(subject or "")
    return m.group(1) if m else None


# Where quoted history starts; everything from the first match down is cut.
_CUT_RES: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\s*-{2,}\s*original message\s*-{2,}", re.I),
    re.compile(r"^\s*-{2,}\s*forwarded message\s*-{2,}", re.I),
    re.compile(r"^\s*_{10,}\s*$"),
    re.compile(r"^\s*-{10,}\s*$"),
    re.compile(r"^\s*begin forwarded message:?\s*$", re.I),
    re.compile(r"^\s*on\b.{0,200}\bwrote:?\s*$", re.I),
    re.compile(r"^\s*\**(?:from|de|von)\**\s*:.*$", re.I),  # checked together with a Sent:/Date: line below
    re.compile(r"^\s*>"),
)
_ON_WROTE_START = re.compile(r"^\s*on\s+\S.{0,200}$", re.I)
_SENT_LINE = re.compile(r"^\s*\**(?:sent|date|to|subject|cc)\**\s*:", re.I)
_SIGNATURE_START = re.compile(
    r"^\s*(?:--\s*|kind regards,?|best regards,?|warm regards,?|regards,?|many thanks,?|thanks,?|thank you,?|"
    r"best wishes,?|best,|cheers,?|yours sincerely,?|yours faithfully,?|sent from my .*|get outlook for .*)\s*$",
    re.I,
)


def _fallback_cut(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        for rx in _CUT_RES:
            if not rx.match(line):
                continue
            if rx.pattern.startswith(r"^\s*\**(?:from"):
                window = lines[i + 1:i + 6]
                if not any(_SENT_LINE.match(w) for w in window):
                    continue
            return "\n".join(lines[:i])
        # "On Tue, 3 Nov 2026 at 10:00, CHSCP <chscp@...>" wrapped onto a second line ending "wrote:"
        if _ON_WROTE_START.match(line) and i + 1 < len(lines) and lines[i + 1].rstrip().endswith("wrote:"):
            return "\n".join(lines[:i])
    return text


def _cut_signature(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i == 0 or not _SIGNATURE_START.match(line):
            continue
        tail = [ln for ln in lines[i + 1:] if ln.strip()]
        if line.strip().startswith("--") or (len(tail) <= 6 and all(len(ln.strip()) <= 80 for ln in tail)):
            return "\n".join(lines[:i])
    return text


def strip_quoted(text: str) -> str:
    """The reply's new text: quoted history, "On ... wrote:" / Outlook header blocks and signatures cut."""
    # splitlines() also breaks on \v, \f, \x1c-\x1e, \x85, \u2028...: make those plain newlines too
    normalised = "\n".join((text or "").splitlines()).replace("\xa0", " ")
    try:
        from mailparser_reply import EmailReplyParser

        latest = EmailReplyParser(languages=["en"]).parse_reply(normalised)
    except Exception:
        latest = None
    candidate = latest if isinstance(latest, str) else normalised
    # The library can return an all-quoted reply unchanged; our own cuts apply either way.
    candidate = _fallback_cut(candidate)
    if not candidate.strip() and normalised.strip():
        candidate = _fallback_cut(normalised)
    candidate = _cut_signature(candidate)
    lines = [ln.rstrip() for ln in candidate.splitlines() if not ln.lstrip().startswith(">")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_COMMAND_LINE_RE = re.compile(r"^[\s*_>#-]*([A-Za-z]+)\b\.?\s*(?:[:\-–—.,;]\s*)?(.*)$")


def _command_of(line: str) -> tuple[Command | None, str]:
    m = _COMMAND_LINE_RE.match(line)
    if not m:
        return None, ""
    word = m.group(1).upper()
    command = _SYNONYMS.get(word)
    if command is None or command not in _COMMANDS:
        return None, ""
    return command, m.group(2).strip().strip("*_").strip()


def parse_reply(msg: ParsedMessage) -> ReplyCommand:
    """The command on the first non-empty line of the new text, and the text after it as the record."""
    new_text = strip_quoted(msg.text)
    lines = new_text.split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        return ReplyCommand(None, "", new_text)
    command, rest = _command_of(lines[first])
    if command is None:
        return ReplyCommand(None, new_text.strip(), new_text)
    argument = "\n".join([rest, *lines[first + 1:]]).strip()
    return ReplyCommand(command, argument, new_text)
