"""Table models: defaults of JSON columns."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

from escalations.cases.models import Case, InboundMessage


def _case() -> Case:
    now = datetime(2026, 1, 5, 9, tzinfo=UTC)
    return Case(reference="CH-2026-0001", partnership="ch", opened_at=now, updated_at=now,
                raised_by_email="a@example.org")


def test_json_defaults_are_fresh_empty_values() -> None:
    a, b = _case(), _case()
    assert (a.parties, a.resolution, a.fields, a.missing, a.confirmed_addresses) == ([], {}, {}, [], [])
    a.parties.append({"role": "x"})
    a.resolution["outcome"] = "agreed"
    assert b.parties == [] and b.resolution == {}
    assert InboundMessage(source="imap", idempotency_key="k", fingerprint="f", raw=b"").envelope_recipients == []


def test_json_default_factories_declare_their_signature() -> None:
    """pydantic asks each default factory's signature on every row it builds; a builtin's costs a
    parse of its text signature each time (see models._plain_factory)."""
    for name in ("parties", "resolution", "fields", "missing", "confirmed_addresses"):
        factory = Case.model_fields[name].default_factory
        assert factory is not None and factory not in (list, dict)
        assert "__signature__" in vars(factory) and inspect.signature(factory).parameters == {}
