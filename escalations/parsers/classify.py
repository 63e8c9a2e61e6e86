"""What kind of mail a message is, from facts already found out about it: one rule for the
processor and for ``escalations parse``.

Pure: no I/O. The facts are gathered by the caller (the processor knows whether a reply matched a
case; ``parse`` only sees headers). The order matters and is the contract: our own mail, then
automated mail (RFC 3834: never answered), then replies to a case, then referrals.

A mail to the partnership that is none of the automated kinds and no reply is an escalation, however
it is written: with enough labelled fields it is a ``referral``; with fewer, ``free_text`` (a case
opens as incomplete and the sender is asked for the form's fields). Only mail with no text at all
is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["MIN_LABELLED_FIELDS", "MailFacts", "MailKind", "classify"]

#: How many labelled referral fields make a message a (labelled) referral rather than free text.
MIN_LABELLED_FIELDS = 2


class MailKind(StrEnum):
    OWN_MAIL = "own_mail"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    LIST = "list"
    REPLY = "reply"
    REFERRAL = "referral"
    FREE_TEXT = "free_text"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class MailFacts:
    #: From is one of the partnerships' own mailboxes (a loop).
    from_own_mailbox: bool
    #: ``detect_automated``'s kind: none | auto_reply | bounce | list.
    automated: str
    #: The message answers a case (its token, References or subject reference found one).
    answers_case: bool
    labelled_count: int
    #: Any words of the sender's own (body or a readable attachment).
    has_text: bool


_AUTOMATED = {"auto_reply": MailKind.AUTO_REPLY, "bounce": MailKind.BOUNCE, "list": MailKind.LIST}


def classify(facts: MailFacts) -> MailKind:
    """The message's kind; see the module docstring for the order."""
    if facts.from_own_mailbox:
        return MailKind.OWN_MAIL
    if facts.automated in _AUTOMATED:
        return _AUTOMATED[facts.automated]
    if facts.answers_case:
        return MailKind.REPLY
    if facts.labelled_count >= MIN_LABELLED_FIELDS:
        return MailKind.REFERRAL
    if facts.has_text:
        return MailKind.FREE_TEXT
    return MailKind.UNKNOWN
