"""The words a reply may start with: each command's name, the words read as it, and its line in
the mails' "How to reply" list. Data only; the parser reads the words, the workflow's command
registry (``routing/workflow/commands.py``) gives each one its rules and handler.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VOCABULARY", "Word", "synonyms"]


@dataclass(frozen=True)
class Word:
    name: str
    synonyms: tuple[str, ...]
    #: How the command is written in the help list, and what it does.
    usage: str
    help_text: str


VOCABULARY: tuple[Word, ...] = (
    Word("RESOLVED", ("RESOLVE",), "RESOLVED <agreed outcome>",
         "the disagreement is resolved; say what was agreed and how outstanding issues will be pursued "
         "(the other side is asked to confirm)"),
    Word("ESCALATE", (), "ESCALATE <reason>", "not resolved: move the case to the next stage now"),
    Word("ACCEPT", ("AGREE", "AGREED", "ACCEPTED"), "ACCEPT (or AGREE)",
         "confirm a resolution the other side has recorded"),
    Word("NOTE", (), "NOTE <text>", "add a note to the case record"),
    Word("URGENT", (), "URGENT <reason>", "the child is at immediate risk: follow the immediate-risk route now"),
    Word("WITHDRAW", ("WITHDRAWN",), "WITHDRAW <reason>",
         "withdraw the escalation (the practitioner who raised it only)"),
    Word("INFO", (), "INFO", "answer a request for missing information: one 'Label: value' per line"),
    Word("CONFIRM", (), "CONFIRM <address>",
         "partnership staff: confirm an address written in the referral may be mailed"),
    Word("LEARNING", ("LESSON",), "LEARNING <text>", "add a learning point for the partnership's learning log"),
    Word("THEME", (), "THEME <theme>",
         "tag what the disagreement is about: levels of need, roles and responsibilities, need for action, "
         "communication"),
)


def synonyms() -> dict[str, str]:
    """Every word read as a command (upper case), to the command's name."""
    return {w: word.name for word in VOCABULARY for w in (word.name, *word.synonyms)}
