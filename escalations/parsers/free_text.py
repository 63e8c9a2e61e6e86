"""What can be understood of an escalation written as a plain letter, with no form labels ("I want to
escalate our disagreement with CSC about ...").

Pure: no I/O. Only what is safe to read without labels is taken: the sender's own text as the
concern, whether it says the child is at immediate risk, and the other agency where it is plainly an
agency's name (an acronym such as "CSC", or words such as "Children's Social Care"; never a
capitalised word that might be a child's name). The rest is asked for with the form's labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from escalations.parsers.quoting import cut_signature
from escalations.parsers.values import AGENCY_WORDS

__all__ = ["FreeText", "says_immediate_risk", "understand"]

#: The usual wordings of "the child is at immediate risk" (the seeds: "immediate risk of significant
#: harm", "imminent risk", "in immediate danger"; practitioners: "not safe to go home tonight").
_RISK = re.compile(
    r"\b(?:immediate(?:ly)?\s+(?:risk|danger)|imminent\s+(?:risk|danger|harm)|risk\s+of\s+(?:immediate|imminent)"
    r"|(?:in|at)\s+(?:immediate\s+)?danger|immediate\s+(?:safeguarding|protection)\s+(?:concern|need)"
    r"|(?:not|isn'?t|unsafe)\s+(?:safe\s+)?to\s+(?:go|return)\s+home\s+(?:tonight|today)"
    r"|significant\s+harm\s+(?:tonight|today|now))",
    re.I,
)
_NEGATED = re.compile(r"\b(?:no|not|isn'?t|is\s+not|without|nor|never)\s+(?:\w+\s+){0,3}$", re.I)
_OTHER = re.compile(
    r"\b(?:disagree(?:ment)?|dispute|differences?|escalat\w*|concerns?|challenge)\b[^.\n]{0,40}?\b(?:with|against|"
    r"about the response (?:of|from))\s+(?:the\s+)?((?:[A-Z][\w'’&-]*|of|and|&)(?:\s+(?:[A-Z][\w'’&-]*|of|and|&)){0,6})")
_ACRONYM = re.compile(r"^[A-Z]{2,6}$")


@dataclass(frozen=True)
class FreeText:
    concern: str | None
    immediate_risk: bool
    other_agency: str | None


def says_immediate_risk(text: str) -> bool:
    """The text says a child is at immediate risk (and does not say the opposite right before it)."""
    for m in _RISK.finditer(text or ""):
        if not _NEGATED.search(text[max(0, m.start() - 40):m.start()]):
            return True
    return False


def _other_agency(text: str) -> str | None:
    for m in _OTHER.finditer(text):
        words = m.group(1).split()
        while words and words[-1].lower() in ("of", "and", "&"):
            words.pop()
        name = " ".join(words)
        if name and (_ACRONYM.match(name) or AGENCY_WORDS.search(name)):
            return name
    return None


def understand(own_text: str) -> FreeText:
    """The concern (the sender's text above the sign-off), the immediate-risk wording, the agency."""
    text = cut_signature((own_text or "").strip()).strip()
    concern = re.sub(r"\n{3,}", "\n\n", text) or None
    return FreeText(concern=concern, immediate_risk=says_immediate_risk(text), other_agency=_other_agency(text))
