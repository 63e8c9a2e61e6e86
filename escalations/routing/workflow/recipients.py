"""Whom the service may mail: directory contacts, a referral's sender, and addresses written in a
referral only when their domain is one of the partnership's agencies' or the coordinator confirmed them.

A referral's text is the sender's to write: letting its ``Email:`` or ``Other practitioner:`` lines
pick recipients would let anyone make the partnership mail anyone, with a valid reply code.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from escalations.parsers.sender import valid_address
from escalations.routing.workflow.authority import config_addresses

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership

__all__ = ["agency_domains", "domain_known", "mailable"]


def agency_domains(p: Partnership) -> set[str]:
    return {d.strip().lower().lstrip("@") for a in p.agencies for d in a.domains if d.strip()}


def domain_known(address: str, p: Partnership) -> bool:
    """Is the address's domain (or a parent domain of it) one of the partnership's agencies' domains?"""
    domain = address.rpartition("@")[2].lower()
    known = agency_domains(p)
    parts = domain.split(".")
    return any(".".join(parts[i:]) in known for i in range(len(parts) - 1))


def mailable(address: str | None, p: Partnership, confirmed: Collection[str] = ()) -> str | None:
    """The normalised address if the service may write to it as taken from a referral's text, else None."""
    if not address:
        return None
    normal = valid_address(address)
    if normal is None:
        return None
    if normal in {c.lower() for c in confirmed} or normal in config_addresses(p) or domain_known(normal, p):
        return normal
    return None
