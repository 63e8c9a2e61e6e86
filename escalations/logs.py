"""Structured logging (structlog over the standard library, so pytest's caplog sees every line).

Log events carry case references, message-id hashes, codes and counts — never a child's name, date of
birth, ID or concern text, never a subject, body or other header value (ARCHITECTURE: Style/Logs).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog


def frames_only_exc_info(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` by the exception's type and its frames (file, line, source line): an
    exception's text can quote a value from a message (a child's name, a date of birth), its frames
    cannot."""
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event["error_type"] = exc_info[0].__name__
        event["traceback"] = "".join(traceback.format_tb(exc_info[2], limit=-10))
    return event


#: Event keys whose values are header values: logged as a short hash (enough to correlate lines and
#: find the message in the database), never as themselves.
HASHED_KEYS = ("message_id", "in_reply_to", "subject", "from", "sender", "to")


def hash_header_values(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace header values (a Message-ID can be anything a sender chose) by ``sha256:<12 hex>``."""
    for key in HASHED_KEYS:
        value = event.get(key)
        if isinstance(value, str) and value:
            event[key] = "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:12]
    return event


class _BoundLogger(structlog.stdlib.BoundLogger):
    """``exception()`` logs at ERROR through our processors only: the standard library's
    ``Logger.exception`` would attach the exception (and its text) to the record again."""

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("error", event, *args, **kw)


class FramesOnly(logging.Filter):
    """For records from other libraries that carry an exception: keep its type and frames, drop its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            frames = "".join(traceback.format_tb(record.exc_info[2], limit=-10))
            record.msg = f"{record.getMessage()} [{record.exc_info[0].__name__}]\n{frames}".rstrip("\n")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(fmt: Literal["json", "console"] = "console", level: int = logging.INFO) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            frames_only_exc_info,
            hash_header_values,
            renderer,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if not any(getattr(h, "_escalations", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(FramesOnly())
        handler._escalations = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("mail.log", "apscheduler", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
