"""The reply-command registry: one entry per word the parser reads, the help list drawn from it, and
the order of checks written out as a table."""

from __future__ import annotations

from escalations.parsers import reply as reply_parser
from escalations.parsers.commands_vocabulary import VOCABULARY
from escalations.routing.workflow import commands
from escalations.routing.workflow.authority import Authority
from escalations.routing.workflow.mail import COMMANDS_HELP
from escalations.routing.workflow.state import CaseStatus


def test_registry_covers_exactly_the_parsers_vocabulary() -> None:
    names = {w.name for w in VOCABULARY}
    assert set(commands.COMMANDS) == names == set(reply_parser._SYNONYMS.values())
    for c in commands.COMMANDS.values():
        for word in (c.name, *c.synonyms):
            assert reply_parser._SYNONYMS[word] == c.name
    assert {"AGREE", "AGREED", "ACCEPTED"} <= set(commands.COMMANDS["ACCEPT"].synonyms)


def test_help_list_is_the_registrys() -> None:
    assert [meaning for _, meaning in COMMANDS_HELP] == [w.help_text for w in VOCABULARY]
    assert COMMANDS_HELP[0][0] == "RESOLVED <agreed outcome>"
    assert {c.help_text for c in commands.COMMANDS.values()} == {m for _, m in COMMANDS_HELP}


def test_who_may_give_each_command() -> None:
    c = commands.COMMANDS
    assert c["CONFIRM"].who == {Authority.STAFF}
    assert c["WITHDRAW"].who == {Authority.RAISER, Authority.STAFF}
    assert c["NOTE"].who == set(Authority)


def test_order_of_checks() -> None:
    """LEARNING/THEME on any case, finished ones included; then finished cases refuse; NOTE/CONFIRM before the notified refusal; WITHDRAW/INFO/URGENT before the
    waiting-status refusal; the rest only on an open case or one awaiting confirmation."""
    phases = {name: c.phase for name, c in commands.COMMANDS.items()}
    assert phases == {"NOTE": "any_sender", "CONFIRM": "any_sender", "WITHDRAW": "any_status",
                      "INFO": "any_status", "URGENT": "any_status", "ESCALATE": "at_stage",
                      "RESOLVED": "at_stage", "ACCEPT": "at_stage", "LEARNING": "any_time", "THEME": "any_time"}
    assert len(commands.CHECKS) == 7
    assert commands.COMMANDS["LEARNING"].statuses == commands.COMMANDS["THEME"].statuses == set(CaseStatus)
    for name in ("ESCALATE", "RESOLVED", "ACCEPT"):
        assert commands.COMMANDS[name].statuses == {CaseStatus.OPEN, CaseStatus.AWAITING_CONFIRMATION}
    assert commands.NO_COMMAND.phase is commands.Phase.AT_STAGE
