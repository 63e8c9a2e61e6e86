"""Compatibility names for the pure workflow, which lives in :mod:`escalations.routing.workflow`
(state, events, transition, commands, ...). Re-exports only; new code imports from there."""

from escalations.routing.redact import initials
from escalations.routing.workflow.events import Automated, Opened, Replied, TimerFired, WorkflowEvent
from escalations.routing.workflow.mail import COMMANDS_HELP, case_subject, summarise
from escalations.routing.workflow.stages import open_stage, plan_for
from escalations.routing.workflow.state import (
    ACK_TOKEN_STAGE,
    CASE_MAIL,
    FIELD_LABELS,
    NOTICE_MAIL,
    TERMINAL,
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    Notice,
    OutgoingMail,
    Party,
    PendingResolution,
    Step,
    TimerSpec,
)
from escalations.routing.workflow.transition import transition

__all__ = ["ACK_TOKEN_STAGE", "CASE_MAIL", "COMMANDS_HELP", "FIELD_LABELS",
           "NOTICE_MAIL", "TERMINAL", "Automated", "CaseChange", "CaseState", "CaseStatus",
           "EventRecord", "Notice", "Opened", "OutgoingMail", "Party", "PendingResolution", "Replied", "Step",
           "TimerFired", "TimerSpec", "WorkflowEvent", "case_subject", "initials",
           "open_stage", "plan_for", "summarise", "transition"]
