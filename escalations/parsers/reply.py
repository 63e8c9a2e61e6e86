"""Replies to case mail: the new text (quotes and signatures cut by ``quoting.strip_quoted``) and
the command on its first line.

Pure: no I/O. A command is only ever read from the sender's new text, so an "ESCALATE" in the
quoted original lower down can never be picked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from escalations.parsers.commands_vocabulary import VOCABULARY, synonyms
from escalations.parsers.message import ParsedMessage
from escalations.parsers.quoting import strip_quoted

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
