"""Parsing and attachment extraction in a worker process with time and memory limits.

One hostile message (a zip bomb, a Word file of a million paragraphs, ten thousand MIME parts) must
not stall or kill the service, and a message that kills its parser must not kill the process that
would then retry it forever. So the processor's parser is a ``BoundedParser``: it sends the raw
bytes to a worker process (``python -m escalations.sandbox``, length-prefixed frames on its
stdin and stdout; its stderr goes nowhere, as a traceback could quote the message) that parses them (``parse_message``) and reads the attachments
(``with_attachment_texts``) under ``RLIMIT_AS``, and waits at most the configured wall time. A
worker that overruns is killed and replaced; the message is then parsed here with attachment
extraction off, and the reason is recorded as a LimitHit code in ``limits_hit``.

The worker's answer is unpickled with an allow-list of classes: a parser compromised by a hostile
attachment gets no way to run code in the service.

Asked to (``read_referral``, for the processor, with the local time the mail was received), the worker
also reads the message as a referral with the service's label vocabulary (``labels``, sent to each
worker as it starts): the answer's ``referral_ahead``. Only a partnership's required fields are left
to the processor, which knows the partnership only once the message is parsed.

``prefetch(raw)`` hands the worker the next message while the caller is still busy with the one before
(the processor does, for the next message of its claim): the worker parses in its own process while
the service works, so a referral no longer waits for its own parse. At most one message is ahead; its
wall-time limit counts from when it was handed over. ``parse`` of the same bytes takes that answer;
``parse`` of other bytes first reads the earlier answer and drops it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import selectors
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, replace
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import structlog

from escalations.parsers.limits import LimitHit, Limits
from escalations.parsers.message import MessageParseError, ParsedMessage, parse_message

if TYPE_CHECKING:
    from escalations.parsers.labels import LabelTable

__all__ = ["BoundedParser"]

log = structlog.get_logger("escalations.sandbox")

_ALLOWED = frozenset({
    ("escalations.parsers.message", "ParsedMessage"),
    ("escalations.parsers.message", "Attachment"),
    ("escalations.parsers.fields", "ReferralParse"),
    ("escalations.parsers.fields", "ReferralFields"),
    ("datetime", "date"),
    ("datetime", "datetime"),
    ("datetime", "timezone"),
    ("datetime", "timedelta"),
})


#: The allowed classes themselves, looked up once (find_class runs for each class in every answer).
_FOUND: dict[tuple[str, str], Any] = {}


class _AnswerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        found = _FOUND.get(key)
        if found is None:
            if key not in _ALLOWED:
                raise pickle.UnpicklingError("unexpected class in the parse worker's answer")
            found = _FOUND[key] = super().find_class(module, name)
        return found


_CODES = frozenset(c.value for c in LimitHit)
_NOT_MAIL = frozenset({"expected bytes", "empty input", "no RFC 5322 header block found"})


def _known_codes(codes: tuple[str, ...]) -> tuple[str, ...]:
    """Only our fixed codes travel on: a worker's answer is never trusted to be free of message text."""
    return tuple(c if c in _CODES else LimitHit.EXTRACTION_FAILED.value for c in dict.fromkeys(codes))


def _load_answer(data: bytes) -> tuple[str, Any]:
    answer = _AnswerUnpickler(io.BytesIO(data)).load()
    if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], str)):
        raise pickle.UnpicklingError("malformed answer from the parse worker")
    return answer[0], answer[1]


# ---- framing ------------------------------------------------------------------------------------

_LEN = struct.Struct(">Q")


def _write_frame(f: IO[bytes], data: bytes) -> None:
    f.write(_LEN.pack(len(data)))
    f.write(data)
    f.flush()


def _read_exact(f: IO[bytes], n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = f.read(n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(f: IO[bytes]) -> bytes:
    (n,) = _LEN.unpack(_read_exact(f, _LEN.size))
    return _read_exact(f, n)


def _labels_frame(labels: LabelTable | None) -> bytes:
    """The vocabulary a worker reads referrals with, as the first frame it is sent (null: none)."""
    return json.dumps(dataclasses.asdict(labels) if labels is not None else None).encode()


def _labels_from(frame: bytes) -> LabelTable | None:
    data = json.loads(frame)
    if data is None:
        return None
    # imported here, in the worker under its cap, as the rest of the parser is (see _answer)
    from escalations.parsers.labels import LabelTable
    return LabelTable(dict(data["exact"]), tuple((k, v) for k, v in data["prefixes"]),
                      tuple((k, v) for k, v in data["bare"]), tuple(data["wordings"]))


def _request(read_referral: bool, received: datetime | None) -> bytes:
    """What the worker is asked besides the parse (the frame before each message's)."""
    return json.dumps({"referral": read_referral,
                       "received": received.isoformat() if received is not None else None}).encode()


# ---- the worker (runs in the child process) -------------------------------------------------------

def _limit_self(memory_bytes: int) -> None:
    import resource
    import signal
    import warnings

    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core file would hold a child's details
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service's Ctrl-C is the parent's to handle
    warnings.simplefilter("ignore")  # library warnings can quote document text


def _answer(raw: bytes, limits: Limits, labels: LabelTable | None = None,
            request: dict[str, Any] | None = None) -> tuple[str, Any]:
    # the whole parser, under the cap
    from escalations.parsers.referral import extract_referral, with_attachment_texts

    try:
        msg = with_attachment_texts(parse_message(raw, limits), limits)
        if labels is not None and request is not None and request.get("referral"):
            received = datetime.fromisoformat(request["received"]) if request.get("received") else None
            try:
                msg = replace(msg, referral_ahead=(received, extract_referral(msg, (), labels, received=received)))
            except MemoryError:
                raise
            except Exception:
                pass  # the processor reads it itself, and answers for what fails there
        return "ok", msg
    except MessageParseError as exc:
        return "not_mail", str(exc)  # our own fixed wording, never message text
    except MemoryError:
        return "limit", LimitHit.EXTRACTION_MEMORY.value
    except Exception as exc:
        return "error", type(exc).__name__


def _worker_main(limits: Limits, memory_bytes: int) -> None:
    # The protocol owns the real stdout; a stray print() from a library goes to /dev/null.
    out = os.fdopen(os.dup(1), "wb")
    inp = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _limit_self(memory_bytes)
    memory_answer = pickle.dumps(("limit", LimitHit.EXTRACTION_MEMORY.value))
    try:
        labels = _labels_from(_read_frame(inp))
    except (EOFError, OSError, struct.error, ValueError, KeyError, TypeError, MemoryError):
        return  # not the service's protocol: nothing to answer
    while True:
        try:
            request = json.loads(_read_frame(inp))
            raw = _read_frame(inp)
        except (EOFError, OSError, struct.error, ValueError):
            return  # the service closed us, or died
        except MemoryError:
            with contextlib.suppress(Exception):
                _write_frame(out, memory_answer)
            return
        answer = _answer(raw, limits, labels, request if isinstance(request, dict) else None)
        del raw
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
            del answer
            _write_frame(out, data)
        except MemoryError:
            with contextlib.suppress(Exception):
                _write_frame(out, memory_answer)
            return
        except OSError:
            return


def main(argv: list[str] | None = None) -> None:
    """``python -m escalations.sandbox LIMITS_JSON MEMORY_BYTES``: the worker's entry point."""
    args = sys.argv[1:] if argv is None else argv
    limits = Limits(**json.loads(args[0]))
    _worker_main(limits, int(args[1]))


# ---- the parent side ----------------------------------------------------------------------------

@dataclass
class _Worker:
    process: subprocess.Popen[bytes]

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_readable(self, seconds: float) -> bool:
        with selectors.DefaultSelector() as sel:
            sel.register(self.stdout, selectors.EVENT_READ)
            return bool(sel.select(timeout=seconds))

    def stop(self, *, kill: bool) -> None:
        for f in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()  # an idle worker sees EOF and exits
        if kill:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class _Ahead:
    """A message written to ``worker`` by prefetch, its answer due by ``deadline`` (time.monotonic)."""
    worker: _Worker
    raw: bytes
    request: bytes
    deadline: float


def _stop_all(holder: list[_Worker]) -> None:
    while holder:
        holder.pop().stop(kill=True)


class BoundedParser:
    """``parse(raw) -> ParsedMessage`` like ``parse_message``, with the heavy work in a worker.

    Raises MessageParseError for input that is not an email, as ``parse_message`` does. Over a
    limit it still returns the message, with the codes in ``limits_hit``. Thread-safe: callers
    take turns with the one worker, which starts at the first parse. ``close()`` stops it.
    """

    def __init__(self, limits: Limits | None = None, *, timeout_seconds: float = 10.0,
                 memory_bytes: int = 512 * 1024 * 1024, labels: LabelTable | None = None) -> None:
        self.limits = limits or Limits()
        #: the vocabulary the worker reads referrals with when asked to (None: it is never asked)
        self.labels = labels
        self.timeout_seconds = timeout_seconds
        self.memory_bytes = memory_bytes
        #: workers started so far (the first one, plus one per replacement)
        self.started = 0
        self._lock = threading.Lock()
        self._holder: list[_Worker] = []
        #: the message handed over by prefetch whose answer is not read yet
        self._ahead: _Ahead | None = None
        self._finalizer = weakref.finalize(self, _stop_all, self._holder)

    def __call__(self, raw: bytes) -> ParsedMessage:
        return self.parse(raw)

    @property
    def worker_pid(self) -> int | None:
        return self._holder[0].process.pid if self._holder and self._holder[0].alive() else None

    def parse(self, raw: bytes, *, read_referral: bool = False, received: datetime | None = None) -> ParsedMessage:
        """``read_referral``: the worker also reads it as a referral (``referral_ahead``), a timescale in
        words read against ``received`` (naive local time), when it has ``labels``."""
        raw = bytes(raw)
        request = _request(read_referral and self.labels is not None, received)
        with self._lock:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead.raw == raw and ahead.request == request:
                kind, value = self._receive(ahead.worker, ahead.deadline)
            else:
                if ahead is not None:
                    self._receive(ahead.worker, ahead.deadline)  # another message's: read, and dropped
                kind, value = self._ask(raw, request)
        if kind == "ok" and isinstance(value, ParsedMessage):
            return self._checked(value, read_referral)
        if kind == "not_mail":
            raise MessageParseError(value if value in _NOT_MAIL else "not an email")
        if kind == "error":
            log.warning("parse.worker_error", error_type=value if str(value).isidentifier() else "unknown")
        code = value if kind == "limit" and value in _CODES else LimitHit.EXTRACTION_FAILED.value
        return self._fallback(raw, code)

    @staticmethod
    def _checked(msg: ParsedMessage, read_referral: bool) -> ParsedMessage:
        """The worker's answer with only our fixed codes in it, and its referral reading only where
        asked for and of the expected shape."""
        from escalations.parsers.fields import ReferralParse

        ahead = msg.referral_ahead
        if ahead is not None:
            if not (read_referral and isinstance(ahead, tuple) and len(ahead) == 2
                    and (ahead[0] is None or isinstance(ahead[0], datetime)) and isinstance(ahead[1], ReferralParse)):
                ahead = None
            elif ahead[1].limits_hit:
                ahead = (ahead[0], replace(ahead[1], limits_hit=_known_codes(ahead[1].limits_hit)))
            msg = replace(msg, referral_ahead=ahead)
        if msg.limits_hit:
            msg = replace(msg, limits_hit=_known_codes(msg.limits_hit))
            log.warning("parse.limits_hit", codes=list(msg.limits_hit))
        return msg

    def prefetch(self, raw: bytes, *, read_referral: bool = False, received: datetime | None = None) -> None:
        """Hand ``raw`` to the worker now, for a ``parse(raw)`` with the same arguments soon (see the
        module's text). Does nothing while another message is ahead; a worker that cannot be started
        or written to is left to ``parse``, which then says why."""
        request = _request(read_referral and self.labels is not None, received)
        with self._lock:
            if self._ahead is not None:
                return
            try:
                worker = self._worker()
            except OSError:
                return
            raw = bytes(raw)
            started = time.monotonic()
            try:
                _write_frame(worker.stdin, request)
                _write_frame(worker.stdin, raw)
            except OSError:
                self._replace(worker, LimitHit.EXTRACTION_FAILED)
                return
            self._ahead = _Ahead(worker, raw, request, started + self.timeout_seconds)

    def close(self) -> None:
        with self._lock:
            self._ahead = None
            _stop_all(self._holder)

    # ---- worker management --------------------------------------------------------------

    def _ask(self, raw: bytes, request: bytes) -> tuple[str, Any]:
        try:
            worker = self._worker()
        except OSError as exc:
            log.error("parse.worker_start_failed", error_type=type(exc).__name__)
            return "limit", LimitHit.EXTRACTION_FAILED.value
        try:
            _write_frame(worker.stdin, request)
            _write_frame(worker.stdin, raw)
        except OSError:
            self._replace(worker, LimitHit.EXTRACTION_FAILED)
            return "limit", LimitHit.EXTRACTION_FAILED.value
        return self._receive(worker, time.monotonic() + self.timeout_seconds)

    def _receive(self, worker: _Worker, deadline: float) -> tuple[str, Any]:
        """The worker's answer to the message last written to it, by ``deadline`` (time.monotonic)."""
        try:
            if not worker.wait_readable(max(0.0, deadline - time.monotonic())):
                self._replace(worker, LimitHit.EXTRACTION_TIMEOUT)
                return "limit", LimitHit.EXTRACTION_TIMEOUT.value
            kind, value = _load_answer(_read_frame(worker.stdout))
        except (EOFError, OSError, struct.error):
            # died without answering: out of memory where Python could not raise, or a crash
            self._replace(worker, LimitHit.EXTRACTION_FAILED)
            return "limit", LimitHit.EXTRACTION_FAILED.value
        except Exception as exc:  # an answer we refuse to read
            self._replace(worker, LimitHit.EXTRACTION_FAILED)
            return "error", type(exc).__name__
        hit_memory = value == LimitHit.EXTRACTION_MEMORY.value if kind == "limit" else \
            isinstance(value, ParsedMessage) and LimitHit.EXTRACTION_MEMORY.value in value.limits_hit
        if hit_memory:
            self._replace(worker, LimitHit.EXTRACTION_MEMORY)  # a fresh heap for the next message
        return kind, value

    def _worker(self) -> _Worker:
        if self._holder and self._holder[0].alive():
            return self._holder[0]
        _stop_all(self._holder)
        args = [sys.executable, "-m", "escalations.sandbox", json.dumps(dataclasses.asdict(self.limits)),
                str(self.memory_bytes)]
        # its own session: a terminal's Ctrl-C is for the service, which then closes the worker
        process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        self.started += 1
        worker = _Worker(process)
        self._holder.append(worker)
        # a worker dead already fails its first message: that is where it is replaced and said
        with contextlib.suppress(OSError):
            _write_frame(worker.stdin, _labels_frame(self.labels))
        return worker

    def _replace(self, worker: _Worker, code: LimitHit) -> None:
        started = time.monotonic()
        worker.stop(kill=True)
        if worker in self._holder:
            self._holder.remove(worker)
        if self._ahead is not None and self._ahead.worker is worker:
            self._ahead = None  # its message is parsed again when asked for
        log.warning("parse.worker_replaced", code=code.value, pid=worker.process.pid,
                    exitcode=worker.process.returncode, stop_seconds=round(time.monotonic() - started, 3))

    def _fallback(self, raw: bytes, code: str) -> ParsedMessage:
        """Parse here with no attachment reading: the MIME structure is bounded by the limits."""
        log.warning("parse.fallback", code=code)
        msg = parse_message(raw, replace(self.limits, extract_attachments=False))
        return replace(msg, limits_hit=tuple(dict.fromkeys((*msg.limits_hit, code))))


if __name__ == "__main__":
    main()
