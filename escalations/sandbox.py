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
from typing import IO, Any

import structlog

from escalations.parsers.limits import LimitHit, Limits
from escalations.parsers.message import MessageParseError, ParsedMessage, parse_message

__all__ = ["BoundedParser"]

log = structlog.get_logger("escalations.sandbox")

_ALLOWED = frozenset({
    ("escalations.parsers.message", "ParsedMessage"),
    ("escalations.parsers.message", "Attachment"),
    ("datetime", "datetime"),
    ("datetime", "timezone"),
    ("datetime", "timedelta"),
})


class _AnswerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError("unexpected class in the parse worker's answer")
        return super().find_class(module, name)


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


def _answer(raw: bytes, limits: Limits) -> tuple[str, Any]:
    from escalations.parsers.referral import with_attachment_texts  # the whole parser, under the cap

    try:
        return "ok", with_attachment_texts(parse_message(raw, limits), limits)
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
    while True:
        try:
            raw = _read_frame(inp)
        except (EOFError, OSError, struct.error):
            return  # the service closed us, or died
        except MemoryError:
            with contextlib.suppress(Exception):
                _write_frame(out, memory_answer)
            return
        answer = _answer(raw, limits)
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
                 memory_bytes: int = 512 * 1024 * 1024) -> None:
        self.limits = limits or Limits()
        self.timeout_seconds = timeout_seconds
        self.memory_bytes = memory_bytes
        #: workers started so far (the first one, plus one per replacement)
        self.started = 0
        self._lock = threading.Lock()
        self._holder: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._holder)

    def __call__(self, raw: bytes) -> ParsedMessage:
        return self.parse(raw)

    @property
    def worker_pid(self) -> int | None:
        return self._holder[0].process.pid if self._holder and self._holder[0].alive() else None

    def parse(self, raw: bytes) -> ParsedMessage:
        with self._lock:
            kind, value = self._ask(bytes(raw))
        if kind == "ok" and isinstance(value, ParsedMessage):
            if value.limits_hit:
                value = replace(value, limits_hit=_known_codes(value.limits_hit))
                log.warning("parse.limits_hit", codes=list(value.limits_hit))
            return value
        if kind == "not_mail":
            raise MessageParseError(value if value in _NOT_MAIL else "not an email")
        if kind == "error":
            log.warning("parse.worker_error", error_type=value if str(value).isidentifier() else "unknown")
        code = value if kind == "limit" and value in _CODES else LimitHit.EXTRACTION_FAILED.value
        return self._fallback(raw, code)

    def close(self) -> None:
        with self._lock:
            _stop_all(self._holder)

    # ---- worker management --------------------------------------------------------------

    def _ask(self, raw: bytes) -> tuple[str, Any]:
        try:
            worker = self._worker()
        except OSError as exc:
            log.error("parse.worker_start_failed", error_type=type(exc).__name__)
            return "limit", LimitHit.EXTRACTION_FAILED.value
        try:
            _write_frame(worker.stdin, raw)
            if not worker.wait_readable(self.timeout_seconds):
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
        return worker

    def _replace(self, worker: _Worker, code: LimitHit) -> None:
        started = time.monotonic()
        worker.stop(kill=True)
        if worker in self._holder:
            self._holder.remove(worker)
        log.warning("parse.worker_replaced", code=code.value, pid=worker.process.pid,
                    exitcode=worker.process.returncode, stop_seconds=round(time.monotonic() - started, 3))

    def _fallback(self, raw: bytes, code: str) -> ParsedMessage:
        """Parse here with no attachment reading: the MIME structure is bounded by the limits."""
        log.warning("parse.fallback", code=code)
        msg = parse_message(raw, replace(self.limits, extract_attachments=False))
        return replace(msg, limits_hit=tuple(dict.fromkeys((*msg.limits_hit, code))))


if __name__ == "__main__":
    main()
