"""Did the sender's domain pass DMARC? Read from the receiving server's Authentication-Results (RFC 8601).

We do not check SPF, DKIM or DMARC ourselves; our receiving server does and records the outcome in an
``Authentication-Results`` header it puts on top of the message. :func:`dmarc_verdict` finds the
header(s) we trust and reads the DMARC result from them.

Which headers are trusted. Anyone can write an Authentication-Results header into a message they
send, so only our own server's count:

* with ``trusted_authserv_ids`` given, the headers whose authserv-id is one of them (compared
  case-insensitively), read top-down: the first DMARC result found wins, so our server's header
  (added last, hence topmost) beats any copy further down. The receiving MTA should still remove
  forged headers bearing its authserv-id (RFC 8601 §5);
* with none given, only the first (topmost) Authentication-Results header, whatever its id.

Several trusted headers (e.g. one each from OpenDKIM and OpenDMARC) are read together.

Pure: no I/O. Never raises on odd input; anything unreadable gives ``dmarc="unknown"``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AuthVerdict", "DmarcResult", "dmarc_verdict", "sender_fails_dmarc", "trusted_verdict"]

DmarcResult = Literal["pass", "fail", "none", "temperror", "permerror", "bestguesspass", "unknown"]

_DMARC_RESULTS: dict[str, DmarcResult] = {
    "pass": "pass",
    "fail": "fail",
    "none": "none",
    "temperror": "temperror",
    "permerror": "permerror",
    "bestguesspass": "bestguesspass",
}


@dataclass(frozen=True)
class AuthVerdict:
    """What the trusted Authentication-Results say about a message.

    ``dmarc`` is the DMARC result, lower-cased. It is ``"unknown"`` when no trusted header was found
    (then ``authserv_id`` is None), when the trusted header(s) have no DMARC result (e.g. the
    ``"authserv-id; none"`` form: no authentication was done), or when the result is not one of the
    RFC 7489 / Microsoft values listed. ``header_from_domain`` is the RFC 5322 From domain the DMARC
    check was about (``header.from``), lower-cased; callers should compare it with the From address
    they act on. ``spf`` and ``dkim`` are the raw results, lower-cased (``dkim`` is ``"pass"`` if any
    signature passed, else the first result), or None if absent.
    """

    dmarc: DmarcResult
    header_from_domain: str | None
    authserv_id: str | None
    spf: str | None
    dkim: str | None


_UNKNOWN = AuthVerdict(dmarc="unknown", header_from_domain=None, authserv_id=None, spf=None, dkim=None)


def sender_fails_dmarc(verdict: AuthVerdict) -> bool:
    """True only if the sender's domain FAILED DMARC: a reply like that is not applied.

    Deliberately only ``"fail"``. ``"none"`` (the domain publishes no DMARC record) and
    ``"unknown"`` (no trusted result) are not failures, because many partner agencies (schools, GP
    practices, small charities) have no DMARC record, and refusing their replies would stop the
    process. ``temperror``/``permerror`` (the check could not be completed) are likewise not treated
    as failures. A ``fail`` counts whatever the domain's published policy (even ``p=none``).
    """
    return verdict.dmarc == "fail"


@dataclass
class _ResInfo:
    method: str
    result: str
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class _Header:
    authserv_id: str | None
    results: list[_ResInfo]


class _Scanner:
    """Hand-rolled lexer for RFC 8601 values: CFWS (whitespace, folding, nested comments), quoted strings."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)

    def at_end(self) -> bool:
        return self.i >= self.n

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def skip_cfws(self) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c.isspace():
                self.i += 1
            elif c == "(":
                self._skip_comment()
            else:
                return

    def _skip_comment(self) -> None:
        # At "(": skip to the matching ")", honouring nesting and backslash escapes; unterminated
        # comments run to the end.
        depth = 0
        while self.i < self.n:
            c = self.s[self.i]
            if c == "\\":
                self.i += 2
                continue
            self.i += 1
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    return
        self.i = self.n

    def read_quoted(self) -> str:
        # At '"': the unescaped content; an unterminated string runs to the end.
        self.i += 1
        out: list[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < self.n:
                out.append(self.s[self.i + 1])
                self.i += 2
                continue
            self.i += 1
            if c == '"':
                break
            out.append(c)
        return "".join(out)

    def read_run(self, stops: str) -> str:
        start = self.i
        while self.i < self.n:
            c = self.s[self.i]
            if c.isspace() or c in stops:
                break
            self.i += 1
        return self.s[start : self.i]

    def read_value(self) -> str:
        # A value or pvalue: token, quoted-string, or something like "local"@domain / addr=with=equals.
        parts: list[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            if c.isspace() or c in ";(":
                break
            parts.append(self.read_quoted() if c == '"' else self.read_run(';("'))
        return "".join(parts)

    def read_key(self) -> str:
        # A method (with optional "/version") or "ptype.property"; CFWS around "." and "/" allowed.
        key = self.read_run('=;()"./')
        while key:
            save = self.i
            self.skip_cfws()
            c = self.peek()
            if c not in (".", "/"):
                self.i = save
                break
            self.i += 1
            self.skip_cfws()
            key += c + self.read_run('=;()"./')
        return key

    def skip_to_semicolon(self) -> None:
        while True:
            self.skip_cfws()
            c = self.peek()
            if c in ("", ";"):
                return
            if c == '"':
                self.read_quoted()
            elif not self.read_run(';("'):
                self.i += 1


def _parse_resinfo(sc: _Scanner) -> _ResInfo | None:
    """One resinfo after its ";": ``method=result [reason=...] [ptype.prop=value ...]``, up to the next ";"."""
    info: _ResInfo | None = None
    while True:
        sc.skip_cfws()
        c = sc.peek()
        if c in ("", ";"):
            return info
        if c == '"':
            sc.read_quoted()  # stray quoted string
            continue
        key = sc.read_key()
        if not key:
            sc.i += 1  # stray "=", "." or "/"
            continue
        sc.skip_cfws()
        if sc.peek() != "=":
            continue  # bare word, e.g. "none"
        sc.i += 1
        sc.skip_cfws()
        value = sc.read_value()
        name = key.lower()
        if info is None:
            info = _ResInfo(method=name.split("/", 1)[0].strip(), result=value.lower())
        else:
            info.props.setdefault(name, value)


def _parse_header(value: str) -> _Header | None:
    """Parse one Authentication-Results value, or None if it has no authserv-id and no results."""
    sc = _Scanner(value)
    sc.skip_cfws()
    if sc.at_end():
        return None

    authserv_id: str | None
    start = sc.i
    authserv_id = sc.read_quoted() if sc.peek() == '"' else sc.read_run(';()"=')
    sc.skip_cfws()
    if sc.peek() == "=":
        # Non-conforming header without an authserv-id ("spf=pass ..."): read it all as results.
        sc.i = start
        authserv_id = None
    else:
        authserv_id = authserv_id.strip() or None
        # Optional authres-version.
        if sc.peek().isdigit():
            save = sc.i
            version = sc.read_run(';()"=')
            if not (version.isascii() and version.isdigit()):
                sc.i = save

    results: list[_ResInfo] = []
    need_semicolon = authserv_id is not None
    while True:
        sc.skip_cfws()
        c = sc.peek()
        if c == "":
            break
        if c == ";":
            sc.i += 1
        elif need_semicolon:
            sc.skip_to_semicolon()  # junk where a ";" belongs
            continue
        need_semicolon = True
        info = _parse_resinfo(sc)
        if info is not None and info.method:
            results.append(info)
    if authserv_id is None and not results:
        return None
    return _Header(authserv_id=authserv_id, results=results)


def _normalise_id(authserv_id: str) -> str:
    return authserv_id.strip().lower().rstrip(".")


def _domain(value: str) -> str | None:
    domain = value.strip().rpartition("@")[2].strip().strip("<>").lower().rstrip(".")
    return domain or None


def dmarc_verdict(
    headers: Sequence[tuple[str, str]], *, trusted_authserv_ids: Collection[str] = ()
) -> AuthVerdict:
    """The DMARC verdict from the trusted Authentication-Results header(s) in ``headers``.

    ``headers`` are (name, value) pairs in message order, topmost first; names are matched
    case-insensitively and values may be folded. See the module docstring for which headers are
    trusted. Returns ``dmarc="unknown"`` (never raises) when nothing trusted and readable is found.
    """
    trusted = {_normalise_id(str(x)) for x in trusted_authserv_ids}
    chosen: list[_Header] = []
    for name, value in headers:
        if str(name).strip().lower() != "authentication-results":
            continue
        parsed = _parse_header(str(value))
        if not trusted:
            if parsed is None:
                return _UNKNOWN
            chosen.append(parsed)
            break
        if (
            parsed is not None
            and parsed.authserv_id is not None
            and _normalise_id(parsed.authserv_id) in trusted
        ):
            chosen.append(parsed)
    if not chosen:
        return _UNKNOWN

    results = [info for header in chosen for info in header.results]
    dmarc_info = next((info for info in results if info.method == "dmarc"), None)
    dmarc: DmarcResult = _DMARC_RESULTS.get(dmarc_info.result, "unknown") if dmarc_info else "unknown"

    header_from: str | None = None
    for info in ([dmarc_info] if dmarc_info else []) + results:
        if "header.from" in info.props:
            header_from = _domain(info.props["header.from"])
            if header_from:
                break

    spf = next((info.result or None for info in results if info.method == "spf"), None)
    dkims = [info.result for info in results if info.method == "dkim"]
    dkim = "pass" if "pass" in dkims else (dkims[0] or None) if dkims else None

    return AuthVerdict(
        dmarc=dmarc,
        header_from_domain=header_from,
        authserv_id=chosen[0].authserv_id,
        spf=spf,
        dkim=dkim,
    )


def trusted_verdict(headers: Sequence[tuple[str, str]], trust: str) -> AuthVerdict:
    """The verdict under a mailbox's configured trust: ``"first"`` (the topmost header is the
    receiving provider's own, as at Microsoft 365 and Google, whose headers may carry no authserv-id),
    ``"none"`` (nothing is trusted), or an authserv-id (only headers with that id, from an MTA you
    run; if any of them says ``fail`` the verdict is ``fail``, so a forged ``pass`` placed above the
    MTA's own header cannot win).
    """
    mode = trust.strip().lower()
    if mode == "none" or not mode:
        return _UNKNOWN
    if mode == "first":
        return dmarc_verdict(headers)
    verdict = dmarc_verdict(headers, trusted_authserv_ids=[mode])
    if verdict.dmarc == "fail":
        return verdict
    for name, value in headers:
        if str(name).strip().lower() != "authentication-results":
            continue
        parsed = _parse_header(str(value))
        if parsed is None or parsed.authserv_id is None or _normalise_id(parsed.authserv_id) != _normalise_id(mode):
            continue
        if any(info.method == "dmarc" and info.result == "fail" for info in parsed.results):
            return AuthVerdict(dmarc="fail", header_from_domain=verdict.header_from_domain,
                               authserv_id=parsed.authserv_id, spf=verdict.spf, dkim=verdict.dkim)
    return verdict
