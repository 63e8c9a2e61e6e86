"""BoundedParser: the worker process answers like parse_message, and whatever happens to the worker
(killed, out of memory, unable to start, sending something unexpected) the service gets an answer."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator

import pytest

from escalations.parsers.limits import Limits
from escalations.parsers.message import MessageParseError, parse_message
from escalations.sandbox import BoundedParser, _load_answer
from tests.conftest import AppFactory
from tests.security.hostile import CHILD, form_docx, with_attachment

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


def test_settings_reach_the_worker(make_app: AppFactory) -> None:
    app = make_app(max_mime_parts=7, max_mime_depth=3, attachment_max_ratio=9, parse_timeout_seconds=4.5,
                   parse_memory_bytes=300 * MIB)
    assert app.parser is not None and app.processor.parser is app.parser
    assert (app.parser.limits.max_mime_parts, app.parser.limits.max_mime_depth,
            app.parser.limits.attachment_max_ratio) == (7, 3, 9)
    assert (app.parser.timeout_seconds, app.parser.memory_bytes) == (4.5, 300 * MIB)
    assert make_app(parse_in_worker=False).parser is None
