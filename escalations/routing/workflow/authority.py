"""Who may act on a case: a pure verdict over the facts the processor gathered about a reply.

A reply changes a case only when all of these hold, checked in this order (the first that fails is
the reason recorded, and decides what the genuine party is told):

1. From holds exactly one strictly parsed mailbox (:mod:`escalations.parsers.sender`);
2. the mail carries a reply token (Reply-To sub-address, our Message-ID in In-Reply-To/References,
   or the footer code) that verifies for that address — a reference in the Subject is not enough,
   since references run in sequence and anyone can guess one;
3. the token was issued for this case (a token for case B in a mail about case A acts on nothing);
4. the trusted Authentication-Results do not say the sender's domain failed DMARC;
5. the address is someone the case or the partnership's configuration names: the raiser, a party
   of the current stage (a deputy once they act), partnership staff, or someone told for
   information (who may only add notes);
6. the token was issued for the current stage (an old mail's code cannot act on a later stage);
7. a party's notes stay within the daily limit per case (a flood is kept, not applied).

Pure: no I/O, no clock. Codes are fixed strings, never text from the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.state import CaseState, Party

__all__ = ["Authority", "Refusal", "ReplyFacts", "TokenVerdict", "Verdict", "acts_as", "authority",
           "config_addresses", "role_of", "staff_addresses"]


class Authority(StrEnum):
    RAISER = "raiser"
    PARTY = "party"
    DECISION_MAKER = "decision_maker"
    STAFF = "staff"
    NOTIFIED = "notified"


class TokenVerdict(StrEnum):
    NONE = "none"  # no token anywhere in the mail
    VALID = "valid"  # verified for the From address
    EXPIRED = "expired"
    INVALID = "invalid"  # does not verify for the From address (issued to someone else, or forged)


class Refusal(StrEnum):
    SENDER_AMBIGUOUS = "sender_ambiguous"
    NO_TOKEN = "no_token"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INVALID = "token_invalid"
    TOKEN_OTHER_CASE = "token_other_case"
    DMARC_FAIL = "dmarc_fail"
    NOT_A_PARTY = "not_a_party"
    EARLIER_STAGE = "earlier_stage"
    NOTE_LIMIT = "note_limit"


#: What a refusal means, in words for the person told (never quoting the message).
REFUSAL_TEXT: dict[Refusal, str] = {
    Refusal.SENDER_AMBIGUOUS: "its From line did not name exactly one sender",
    Refusal.NO_TOKEN: "it did not carry the reply code of a message we sent you",
    Refusal.TOKEN_EXPIRED: "the reply code in it has expired",
    Refusal.TOKEN_INVALID: "the reply code in it was not issued to the address it came from",
    Refusal.TOKEN_OTHER_CASE: "its reply code belongs to a different case from the one named in its subject",
    Refusal.DMARC_FAIL: "the sender's domain failed DMARC (the mail may not be from who it says)",
    Refusal.NOT_A_PARTY: "the sender is not one of the people the policy asks to act on this case",
    Refusal.EARLIER_STAGE: "it answers an earlier stage of the case; please reply to the latest message",
    Refusal.NOTE_LIMIT: "the daily limit of notes from one person on a case was reached",
}

#: Refusals after which the sender is known to be who they say (the token verified for them): they
#: are told directly. For the others, only the genuine party the From line names is told.
VERIFIED_REFUSALS = frozenset({Refusal.TOKEN_OTHER_CASE, Refusal.EARLIER_STAGE, Refusal.NOTE_LIMIT})


@dataclass(frozen=True)
class ReplyFacts:
    """What the processor found out about a reply, before anything is decided."""

    #: The strictly parsed From address, or None (then ``sender_problem`` says why).
    sender: str | None
    #: The From address as read leniently: whom the mail claims to be from (for the record and to
    #: find the genuine party to tell); never trusted for authority.
    claimed_sender: str | None
    sender_problem: str | None = None
    token: TokenVerdict = TokenVerdict.NONE
    #: The case and stage index the (valid) token was issued for.
    token_case_id: int | None = None
    token_stage_index: int | None = None
    dmarc_failed: bool = False
    #: Notes already applied today from this sender on this case, and the limit.
    notes_today: int = 0
    note_limit: int = 20
    #: Notes already refused today for the limit (the coordinator is told at the first).
    notes_refused_today: int = 0


@dataclass(frozen=True)
class Verdict:
    authority: Authority | None
    side: str | None
    refusal: Refusal | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def acts_as(x: Party) -> set[str]:
    """The addresses a party acts from: the contact, and their deputy once the deputy has taken over."""
    out = {x.email.lower()}
    if x.using_deputy and x.deputy_email:
        out.add(x.deputy_email.lower())
    return out


def staff_addresses(p: Partnership) -> set[str]:
    """The partnership's staff (its coordinator role and their deputies): they may change any case of
    theirs. Other partnership roles act only where the policy makes them a party of the stage."""
    role = p.roles.get(p.coordinator_role)
    return _contact_addresses(role.contacts if role else ())


def config_addresses(p: Partnership) -> set[str]:
    """Everyone the partnership's configuration names in a role."""
    return _contact_addresses(c for role in p.roles.values() for c in role.contacts)


def _contact_addresses(contacts: Iterable[object]) -> set[str]:
    out: set[str] = set()
    for c in contacts:
        out.add(str(getattr(c, "email", "")).lower())
        deputy = getattr(c, "deputy", None)
        if deputy is not None:
            out.add(str(deputy.email).lower())
    out.discard("")
    return out


def role_of(state: CaseState, p: Partnership, address: str) -> tuple[Authority | None, str | None]:
    """What ``address`` is on this case: raiser, a party asked (or the decision maker), staff, or told
    for information; (None, None) for anyone else."""
    sender = address.lower()
    if state.raiser and sender == state.raiser.lower():
        return Authority.RAISER, "raising"
    notified = False
    for party in state.parties:
        if sender not in acts_as(party):
            continue
        if not party.asked:
            notified = True  # told for information (CP Chair/IRO...): may add a NOTE only
            continue
        if party.party.startswith("partnership."):
            return Authority.DECISION_MAKER, "partnership"
        return Authority.PARTY, party.side
    if sender in staff_addresses(p):
        return Authority.STAFF, "partnership"
    if notified:
        return Authority.NOTIFIED, "notified"
    return None, None


def authority(state: CaseState, facts: ReplyFacts, p: Partnership, command: str | None) -> Verdict:
    """May this reply act on this case? See the module docstring for the order of the checks."""
    if facts.sender is None:
        return Verdict(None, None, Refusal.SENDER_AMBIGUOUS)
    if facts.token is TokenVerdict.NONE:
        return Verdict(None, None, Refusal.NO_TOKEN)
    if facts.token is TokenVerdict.EXPIRED:
        return Verdict(None, None, Refusal.TOKEN_EXPIRED)
    if facts.token is TokenVerdict.INVALID:
        return Verdict(None, None, Refusal.TOKEN_INVALID)
    if facts.token_case_id != state.id:
        return Verdict(None, None, Refusal.TOKEN_OTHER_CASE)
    if facts.dmarc_failed:
        return Verdict(None, None, Refusal.DMARC_FAIL)
    role, side = role_of(state, p, facts.sender)
    if role is None:
        return Verdict(None, None, Refusal.NOT_A_PARTY)
    # Missing information may be answered from any of the case's mails; decisions only from the
    # current stage's (staff may act on any case of theirs).
    answers_info = command == "INFO" or state.status in ("awaiting_information", "needs_routing")
    if facts.token_stage_index != state.stage_index and not answers_info and role is not Authority.STAFF:
        return Verdict(role, side, Refusal.EARLIER_STAGE)
    if command in (None, "NOTE", "LEARNING", "THEME") and facts.notes_today >= facts.note_limit:
        return Verdict(role, side, Refusal.NOTE_LIMIT)
    return Verdict(role, side)
