"""The themes an escalation is about: the seeds' categories of disagreement (C&H 1.3, Havering 1.3:
"levels of need, roles and responsibilities, the need for action, progressing plans and
communication"; Sutton §3 names roles and responsibilities and communication too). Staff tag a case
with a ``THEME`` reply; a case nobody tagged is read for the usual wordings instead. Pure."""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["THEME_CLAUSE", "Theme", "inferred_themes", "theme_of"]

THEME_CLAUSE = "C&H 1.3; Havering 1.3"


class Theme(StrEnum):
    LEVELS_OF_NEED = "levels_of_need"
    ROLES_AND_RESPONSIBILITIES = "roles_and_responsibilities"
    NEED_FOR_ACTION = "need_for_action"
    COMMUNICATION = "communication"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Theme.LEVELS_OF_NEED: "Levels of need",
    Theme.ROLES_AND_RESPONSIBILITIES: "Roles and responsibilities",
    Theme.NEED_FOR_ACTION: "The need for action",
    Theme.COMMUNICATION: "Progressing plans and communication",
}

#: How each theme is written in a THEME reply (compared without case, punctuation or "the").
_NAMES = {
    Theme.LEVELS_OF_NEED: ("levels of need", "level of need", "need", "threshold", "thresholds"),
    Theme.ROLES_AND_RESPONSIBILITIES: ("roles and responsibilities", "roles", "responsibilities", "roles responsibilities"),
    Theme.NEED_FOR_ACTION: ("need for action", "action"),
    Theme.COMMUNICATION: ("progressing plans and communication", "communication", "plans", "progressing plans"),
}

#: Wordings in a referral's concern that suggest a theme (when staff tagged none).
_CUES = {
    Theme.LEVELS_OF_NEED: r"threshold|level of need|levels of need|section 47|s47|no further action|\bnfa\b|"
                          r"child in need|assessment",
    Theme.ROLES_AND_RESPONSIBILITIES: r"whose responsibility|responsib|lead agency|not our role|not their role|"
                                      r"attendance matter|welfare matter",
    Theme.NEED_FOR_ACTION: r"no action|not acted|failed to act|declined to|refused to|strategy discussion|"
                           r"home visit|urgent",
    Theme.COMMUNICATION: r"communicat|not shared|share|no call back|not informed|not told|discharge summar|"
                         r"information sharing|plan",
}


def _norm(text: str) -> str:
    t = re.sub(r"[^a-z ]+", " ", text.lower().replace("&", " and "))
    return " ".join(w for w in t.split() if w != "the")


def theme_of(text: str) -> Theme | None:
    """The theme a THEME reply names ("THEME levels of need", "THEME communication"), or None."""
    wanted = _norm(text)
    if not wanted:
        return None
    for theme in Theme:
        if wanted == theme.value.replace("_", " ") or wanted in _NAMES[theme]:
            return theme
    return None


def inferred_themes(concern: str | None) -> tuple[Theme, ...]:
    """The themes a referral's concern reads as (its usual wordings)."""
    if not concern:
        return ()
    text = concern.lower()
    return tuple(t for t in Theme if re.search(_CUES[t], text))
