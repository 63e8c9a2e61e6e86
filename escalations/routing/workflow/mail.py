"""Mail composition: the contexts the templates read, and the :class:`OutgoingMail` builders.

Subjects carry the case reference only, never a name (ARCHITECTURE: Trust and data protection).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escalations.parsers.commands_vocabulary import VOCABULARY
from escalations.routing.redact import initials
from escalations.routing.workflow.audience import Audience, StageKind, audience_for_address
from escalations.routing.workflow.state import ACK_TOKEN_STAGE, CaseState, CaseStatus, OutgoingMail

if TYPE_CHECKING:
    from escalations.parsers.fields import ReferralFields
    from escalations.routing.policy.model import Partnership
    from escalations.routing.policy.plan import StagePlan

__all__ = [
    "COMMANDS_HELP",
    "answer",
    "base_context",
    "case_subject",
    "commands_for",
    "duration",
    "help_mail",
    "local",
    "mail",
    "stage_context",
    "stage_number",
    "stage_subject",
    "summarise",
]

#: Every command with its vocabulary line; a mail shows :func:`commands_for` its recipient instead.
COMMANDS_HELP: tuple[tuple[str, str], ...] = tuple((w.usage, w.help_text) for w in VOCABULARY)


def commands_for(audience: Audience, final: bool, waiting: bool = False) -> tuple[tuple[str, str], ...]:
    """The "How to reply" list (``templates/_commands.txt.j2``) for this kind of recipient and stage."""
    from escalations.routing.workflow.commands import help_lines  # the registry builds on this module

    kind = StageKind.WAITING if waiting else StageKind.FINAL if final else StageKind.LADDER
    return help_lines(audience, kind)

def summarise(text: str | None, limit: int = 240) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def case_subject(reference: str, what: str) -> str:
    """Subjects carry the case reference only, never a name."""
    return f"[{reference}] {what}"


def stage_subject(state: CaseState, plan: StagePlan) -> str:
    return case_subject(state.reference, f"Stage {plan.number}: {plan.name}" if plan.number
                        else "Immediate risk: action needed now")


def stage_number(state: CaseState) -> int:
    """The stage's number as people read it (0 before a stage, and for the immediate-risk step)."""
    return state.stage_index + 1 if state.stage_index is not None and state.stage_index >= 0 else 0


def local(t: datetime | None, p: Partnership) -> str:
    from escalations.routing.calendar import format_local

    return format_local(t, p.tz) if t else "no deadline set by the policy"


def duration(start: datetime, end: datetime) -> str:
    secs = max(0, int((end - start).total_seconds()))
    days, rem = divmod(secs, 86400)
    hours = rem // 3600
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    return " ".join(parts)


def summary_context(reference: str, f: ReferralFields, p: Partnership, *, immediate_risk: bool) -> dict[str, Any]:
    """What every mail about a case shows of it (_case_summary.txt.j2); bodies are redacted on the way out."""
    return {
        "reference": reference,
        "partnership_name": p.name,
        "mailbox": p.primary_mailbox,
        "child_initials": initials(f.child_names),
        "child_count": len(f.child_names),
        "other_agency": f.other_agency or "",
        "other_practitioner": f.other_practitioner or "",
        "concern_summary": summarise(f.concern),
        "outcome_sought": summarise(f.outcome_sought),
        "immediate_risk": immediate_risk,
    }


def base_context(state: CaseState, p: Partnership) -> dict[str, Any]:
    return {
        **summary_context(state.reference, state.fields, p, immediate_risk=state.immediate_risk),
        "commands": (),
        "secure_mail": p.secure_mail.means if p.secure_mail else "",
        "secure_clause": p.secure_mail.clause if p.secure_mail else "",
        "record_clause": p.resolution.record_clause,
    }


def stage_context(state: CaseState, p: Partnership, plan: StagePlan) -> dict[str, Any]:
    ctx = base_context(state, p)
    dm = plan.decision_maker
    ctx.update({
        "stage_number": plan.number,
        "stage_name": plan.name,
        "stage_label": plan.label or "",
        "stage_action": plan.action,
        "stage_clause": plan.clause,
        "due_local": local(plan.due, p),
        "due_rule": plan.due_rule,
        "due_clause": plan.due_clause or "",
        "is_final": plan.is_final,
        "suggested_actions": [f"{a.text} ({a.clause})" for a in plan.suggested_actions],
        "forms": [f"{fm.name}: {fm.note or fm.when.replace('_', ' ')} ({fm.clause})" for fm in plan.forms],
        "decision_maker": dm.note if dm else "",
        "notification_clauses": list(plan.notification_clauses),
        # The directory's proposal, should the decision maker convene a Resolution Panel (C&H 2.14,
        # Havering 2.12): they decide whether to; the panel is not asked until they do.
        "panel": [f"{r.name}, {r.agency_id} <{r.email}>" for r in plan.panel],
        "panel_clause": dm.panel.clause if dm and dm.panel else "",
        "panel_shortfall": plan.panel_shortfall or "",
        "bypass": "",
        "immediate_note": "",
    })
    return ctx


def mail(template: str, to: str, subject: str, ctx: Mapping[str, Any], key: str, reason: str,
         *, token_stage: int | None = None, recipient_name: str = "", role: str = "",
         audience: Audience | None = None) -> OutgoingMail:
    """One recipient's mail; ``audience`` (the kind of recipient) picks the reply commands it offers."""
    context = dict(ctx)
    context.update({"recipient_name": recipient_name, "recipient_role": role})
    if audience is not None:
        context.update({"audience": str(audience), "commands": commands_for(audience, bool(ctx.get("is_final")))})
    return OutgoingMail(template=template, to=(to,), subject=subject, context=context, dedupe_key=key,
                        reason=reason, token_stage=token_stage)


def answer(state: CaseState, p: Partnership, to: str, template: str, key: str, extra: Mapping[str, Any],
           subject: str) -> OutgoingMail:
    from escalations.routing.workflow.stages import current_plan  # stages composes mail with this module

    ctx = base_context(state, p)
    try:
        plan = current_plan(state, p, state.opened_at)
    except (KeyError, IndexError, ValueError):
        plan = None
    audience = audience_for_address(state, p, plan, to)
    waiting = state.status in (CaseStatus.AWAITING_INFORMATION, CaseStatus.NEEDS_ROUTING)
    ctx.update({"audience": str(audience),
                "commands": commands_for(audience, bool(plan and plan.is_final), waiting),
                "is_final": bool(plan and plan.is_final)})
    ctx.update(extra)
    # With a reply code for the current stage: an answer tells people how to reply, so they can.
    return OutgoingMail(template=template, to=(to,), subject=case_subject(state.reference, subject), context=ctx,
                        dedupe_key=key, reason="answer to a reply", auto_submitted="auto-replied",
                        token_stage=state.stage_index if state.stage_index is not None else ACK_TOKEN_STAGE)


def help_mail(state: CaseState, p: Partnership, to: str, now: datetime, note: str) -> OutgoingMail:
    day = p.calendar.local(now).date().isoformat()
    return answer(state, p, to, "reply_help.txt.j2", f"{state.reference}:help:{to}:{day}",
                  {"note": note, "status": state.status, "recipient_name": "", "recipient_role": ""},
                  "How to reply")
