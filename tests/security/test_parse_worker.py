"""BoundedParser: the worker process answers like parse_message, and whatever happens to the worker
(killed, out of memory, unable to start, sending something unexpected) the service gets an answer."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlmodel import select

from escalations.cases.models import Case
from escalations.parsers.limits import Limits
from escalations.parsers.message import MessageParseError, ParsedMessage, parse_message
from escalations.sandbox import BoundedParser, _load_answer
from tests.conftest import AppFactory
from tests.security.hostile import CHILD, REFERRAL_TEXT, form_docx, with_attachment

MIB = 1024 * 1024


@pytest.fixture
def parser() -> Iterator[BoundedParser]:
    p = BoundedParser(Limits(), timeout_seconds=20)
    yield p
    p.close()


def test_answers_like_parse_message_with_attachments_read(parser: BoundedParser) -> None:
    raw = with_attachment(form_docx(), body="Please see the attached form.")
    msg = parser.parse(raw)
    plain = parse_message(raw)
    assert (msg.subject, msg.from_address, msg.text, msg.attachments) == \
        (plain.subject, plain.from_address, plain.text, plain.attachments)
    assert msg.attachment_texts is not None and CHILD in msg.attachment_texts[0][1]
    assert msg.limits_hit == ()
    assert parser(raw) == msg and parser.started == 1  # one worker serves message after message


def test_not_an_email_raises_as_parse_message_does(parser: BoundedParser) -> None:
    with pytest.raises(MessageParseError):
        parser.parse(b"\x00\x01 binary junk, no header block")
    assert parser.parse(with_attachment(b"")).subject == "Escalation"


def test_a_worker_killed_between_messages_is_replaced(parser: BoundedParser) -> None:
    parser.parse(with_attachment(b""))
    pid = parser.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # reap it so the next parse sees it gone
    msg = parser.parse(with_attachment(form_docx(), body="see attached"))
    assert msg.limits_hit == () and msg.attachment_texts
    assert parser.started == 2 and parser.worker_pid not in (None, pid)


def test_a_worker_that_cannot_even_start_leaves_the_fallback_parse() -> None:
    # 16 MiB of address space is too little for a Python interpreter: the worker dies at once
    starved = BoundedParser(Limits(), timeout_seconds=20, memory_bytes=16 * MIB)
    try:
        msg = starved.parse(with_attachment(form_docx(), body="Name of child(ren): Poppy Testchild\n"))
    finally:
        starved.close()
    # Whether it dies while starting or while reading the form depends on how much of the parser fits:
    # either way it is a fixed code, and the rest of the mail was read in the service.
    assert msg.limits_hit in (("extraction_failed",), ("extraction_memory",))
    assert msg.attachment_texts == ()  # nothing read in the service's own process
    assert "Poppy Testchild" in msg.text


def test_close_stops_the_worker(parser: BoundedParser) -> None:
    parser.parse(with_attachment(b""))
    pid = parser.worker_pid
    assert pid is not None
    parser.close()
    assert parser.worker_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


def test_answers_are_unpickled_with_an_allow_list() -> None:
    with pytest.raises(pickle.UnpicklingError):
        _load_answer(pickle.dumps(("ok", _Evil())))
    kind, value = _load_answer(pickle.dumps(("ok", parse_message(with_attachment(b"")))))
    assert kind == "ok" and value.subject == "Escalation"
    with pytest.raises(pickle.UnpicklingError):  # the classes looked up once do not widen the list
        _load_answer(pickle.dumps(("ok", _Evil())))
    with pytest.raises(pickle.UnpicklingError):
        _load_answer(pickle.dumps(("ok", print)))


def test_settings_reach_the_worker(make_app: AppFactory) -> None:
    app = make_app(max_mime_parts=7, max_mime_depth=3, attachment_max_ratio=9, parse_timeout_seconds=4.5,
                   parse_memory_bytes=300 * MIB)
    assert app.parser is not None and app.processor.parser is app.parser
    assert (app.parser.limits.max_mime_parts, app.parser.limits.max_mime_depth,
            app.parser.limits.attachment_max_ratio) == (7, 3, 9)
    assert (app.parser.timeout_seconds, app.parser.memory_bytes) == (4.5, 300 * MIB)
    assert make_app(parse_in_worker=False).parser is None


# ---- a message handed over ahead (prefetch) -------------------------------------------------------

def _named(name: str, n: int) -> bytes:
    return with_attachment(form_docx(REFERRAL_TEXT.replace("Poppy", name)), n=n, body=f"For {name}, see attached.")


def test_a_message_handed_over_ahead_is_the_one_answered(parser: BoundedParser) -> None:
    first = _named("Rosa", 1)
    parser.prefetch(first)
    msg = parser.parse(first)
    assert msg == parse_message_with_texts(first)
    assert msg.attachment_texts and "Rosa" in msg.attachment_texts[0][1]  # read in the worker
    assert parser.started == 1 and parser._ahead is None


def test_an_answer_ahead_for_another_message_is_dropped(parser: BoundedParser) -> None:
    first, second = _named("Rosa", 1), _named("Iris", 2)
    parser.prefetch(first)
    parser.prefetch(second)  # one ahead at a time: ignored
    assert parser.parse(second).text == parse_message(second).text  # not the first's answer
    assert parser.parse(first).text == parse_message(first).text
    assert parser.parse(second).text == parse_message(second).text
    assert parser.started == 1


def test_a_worker_killed_with_a_message_ahead_leaves_that_message_the_fallback(parser: BoundedParser) -> None:
    first, second = _named("Rosa", 1), _named("Iris", 2)
    parser.parse(first)
    pid = parser.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # so that it cannot answer before it dies
    parser.prefetch(second)
    assert parser._ahead is not None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    msg = parser.parse(second)
    assert msg.limits_hit == ("extraction_failed",) and msg.attachment_texts == ()
    assert "Iris" in msg.text  # the body, read here
    again = parser.parse(first)  # a fresh worker
    assert again.limits_hit == () and again.attachment_texts and parser.started == 2


def test_the_processor_hands_each_next_message_of_its_claim_ahead(make_app: AppFactory) -> None:
    app = make_app()
    parser = app.parser
    assert parser is not None
    handed: list[bytes] = []
    real_prefetch = parser.prefetch

    def spying(raw: bytes, **how: Any) -> None:
        handed.append(raw)
        real_prefetch(raw, **how)

    parser.prefetch = spying  # type: ignore[method-assign]
    names = ("Rosa", "Iris", "Ivy")
    raws = [_named(name, n) for n, name in enumerate(names, start=1)]
    for raw in raws:
        app.ingest(raw)
    outcomes = app.process_pending()
    assert [o.status for o in outcomes] == ["done"] * 3
    assert len(handed) == 2 and all(raw in raws[1:] for raw in handed)
    with app.store.session() as s:
        cases = s.exec(select(Case)).all()
    # each case has its own message's form, read in the worker: no answer went to the wrong message
    assert sorted(tuple(c.fields["child_names"]) for c in cases) == sorted((f"{n} Testchild",) for n in names)
    assert parser.started == 1 and parser._ahead is None


def parse_message_with_texts(raw: bytes) -> ParsedMessage:
    from escalations.parsers.referral import with_attachment_texts

    return with_attachment_texts(parse_message(raw), Limits())


# ---- the worker reads the referral too -----------------------------------------------------------

def test_the_workers_referral_reading_is_the_services_own_for_every_fixture() -> None:
    from datetime import datetime

    from escalations.parsers.labels import default_labels
    from escalations.parsers.referral import extract_referral, missing_of
    from tests.parsers.conftest import MAIL, manifest, required_fields

    labels = default_labels()
    received = datetime(2026, 11, 27, 16, 30)  # a Friday afternoon: "by Monday", "within 2 days" move
    reading = BoundedParser(Limits(), timeout_seconds=20, labels=labels)
    try:
        compared = 0
        for fixture in manifest():
            if fixture["kind"] == "not_email":
                continue
            raw = (MAIL / fixture["file"]).read_bytes()
            msg = reading.parse(raw, read_referral=True, received=received)
            assert msg.referral_ahead is not None, fixture["file"]
            at, ahead = msg.referral_ahead
            required = required_fields(fixture.get("partnership", "city-and-hackney"))
            here = extract_referral(parse_message_with_texts(raw), required, labels, received=received)
            assert at == received
            assert ahead.missing == ()  # the partnership's fields are the processor's to work out
            assert replace(ahead, missing=missing_of(ahead.fields, required)) == here, fixture["file"]
            compared += 1
        assert compared > 20
        # not asked, or no vocabulary: no reading
        assert reading.parse(raw).referral_ahead is None
    finally:
        reading.close()
    plain = BoundedParser(Limits(), timeout_seconds=20)
    try:
        assert plain.parse(raw, read_referral=True, received=received).referral_ahead is None
    finally:
        plain.close()


def test_a_reading_of_the_wrong_shape_is_dropped() -> None:
    from datetime import datetime

    msg = parse_message(with_attachment(b""))
    odd = replace(msg, referral_ahead=(datetime(2026, 1, 1), "not a parse"))
    assert BoundedParser._checked(odd, read_referral=True).referral_ahead is None
    good = parse_message_with_texts(with_attachment(b""))
    assert BoundedParser._checked(replace(good, referral_ahead=(None, None)), read_referral=False).referral_ahead is None


def test_the_processor_takes_the_workers_reading_and_adds_the_partnerships_missing_fields(
        make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import escalations.cases.read_ahead as read_ahead_module

    app = make_app()
    read_here: list[object] = []
    real = read_ahead_module.extract_referral

    def counting(*args: Any, **kwargs: Any) -> Any:
        read_here.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(read_ahead_module, "extract_referral", counting)
    # a referral without the other agency's practitioner or the outcome sought
    text = "\n".join(line for line in REFERRAL_TEXT.splitlines()
                     if not line.startswith(("Name of practitioner and agency", "Outcome sought")))
    app.ingest(with_attachment(b"", n=1, body=text.replace("Poppy", "Rosa")))
    app.ingest(with_attachment(b"", n=2, body=REFERRAL_TEXT.replace("Poppy", "Iris")))
    assert [o.status for o in app.process_pending()] == ["done", "done"]
    assert read_here == []  # both read in the worker
    with app.store.session() as s:
        cases = {c.fields["child_names"][0]: c for c in s.exec(select(Case)).all()}
    local = extract_referral_here(app, with_attachment(b"", n=1, body=text.replace("Poppy", "Rosa")))
    assert cases["Rosa Testchild"].missing == list(local.missing) and local.missing
    assert cases["Iris Testchild"].missing == []
    assert cases["Rosa Testchild"].fields == local.fields.to_json()
    # a parser without a worker: read here
    app.processor.parser = parse_message_with_texts
    app.ingest(with_attachment(b"", n=3, body=REFERRAL_TEXT.replace("Poppy", "Ivy")))
    assert [o.status for o in app.process_pending()] == ["done"]
    assert len(read_here) == 1


def extract_referral_here(app: Any, raw: bytes) -> Any:
    from escalations.parsers.referral import extract_referral

    partnership = app.config.partnerships["city-and-hackney"]
    return extract_referral(parse_message_with_texts(raw), partnership.all_required_fields(), app.labels)
