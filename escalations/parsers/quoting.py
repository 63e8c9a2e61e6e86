"""Where a message's own text ends: forwarded and quoted mail, header blocks, sign-offs, signatures.

Pure: no I/O. One set of rules for both readers: the referral extractor (which keeps forwarded
mail, because a forwarded form is still the referral, and stops a field's value at a sign-off)
and the reply reader (which cuts everything quoted, because a command is only ever read from
the sender's new text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "FORWARD_MARKER_RE",
    "cut_quoted",
    "cut_signature",
    "cut_trailing_signature",
    "looks_like_signature",
    "signature_at",
    "split_forwarded",
    "starts_sign_off",
    "strip_quoted",
]

# ---- the vocabulary ---------------------------------------------------------------------------------

#: "---- Forwarded message ----", "-----Original Message-----", "Begin forwarded message:", Outlook's
#: underscore rule; possibly inside ">" quoting.
FORWARD_MARKER_RE = re.compile(
    r"^\s*(?:>\s*)*(?:-{2,}\s*(?:forwarded message|original message)\s*-{2,}|begin forwarded message:?"
    r"|_{10,}\s*$)",
    re.I,
)
# An Outlook/Gmail header line of a quoted message ("From:", "Sent:", "**To:**", "> Subject:").
_HEADER_BLOCK_LINE = re.compile(r"^\s*(?:>\s*)*\**(from|sent|date|to|cc|subject)\**\s*:", re.I)

# The closing words a sign-off starts with, and the footers mail clients add.
_CLOSINGS = (r"kind regards|best regards|warm regards|regards|many thanks|thanks|thank you|best wishes|"
             r"cheers|yours sincerely|yours faithfully")
_FOOTERS = r"sent from my|get outlook for"
# A line that is nothing but a sign-off ("Kind regards," "--", "Sent from my iPhone"): in a reply,
# "Thanks for the update, I agree" is new text, so only a bare sign-off ends it.
_SIGN_OFF_LINE = re.compile(rf"^\s*(?:--\s*|(?:{_CLOSINGS}|best(?=,)),?|(?:{_FOOTERS}) .*)\s*$", re.I)
# A line that starts a sign-off, a signature rule or a disclaimer: in a referral's labelled value a
# one-line "Kind regards, Jo" ends the value just as well.
_SIGN_OFF_START = re.compile(
    rf"^(?:{_CLOSINGS}|{_FOOTERS}|--\s*$|__+$|-{{5,}}|this e-?mail (?:and any|is confidential))", re.I)


def starts_sign_off(line: str) -> bool:
    """``line`` (already stripped of bullets and markup) begins a sign-off, signature or disclaimer."""
    return bool(_SIGN_OFF_START.match(line))


def looks_like_signature(lines: Sequence[str], j: int) -> bool:
    """A short trailing run of short lines after a blank line (name / role / phone) is a signature."""
    rest: list[str] = []
    for k in range(j, len(lines)):  # six non-blank lines settle it: stay linear
        ln = lines[k]
        if ln.strip():
            rest.append(ln.strip())
            if len(rest) > 5:
                return False
    return 0 < len(rest) <= 5 and all(len(ln) <= 60 and not ln.endswith(".") for ln in rest) and \
        bool(re.search(r"(\+?\d[\d\s]{8,}|@|^tel|^mob|^phone)", "\n".join(rest), re.I | re.M))


# What a signature's second line says: a role or an agency ("Health Visitor, Homerton", "DSL").
_ROLE = (r"health visitor|social worker|school nurse|nurse|midwife|teacher|head ?teacher|deputy head|manager|"
         r"officer|lead|designated|dsl|safeguarding|practitioner|advis[eo]r|consultant|paediatrician|gp|doctor|"
         r"detective|constable|sergeant|co-?ordinator|worker|senco|principal|director|clinician|therapist|"
         r"psychologist|team leader|supervisor|named nurse|named doctor")
_ROLE_RE = re.compile(rf"\b(?:{_ROLE})\b", re.I)
_CONTACT_RE = re.compile(r"(\+?\d[\d\s]{8,}|@|^tel\b|^mob\b|^phone\b|^t:|^m:|^e:)", re.I)
_TITLE = r"(?:(?:dr|mr|mrs|ms|miss|mx|pc|ds|dc|di|sgt)\.?\s+)?"
_NAME = r"[A-Z][a-z'’-]+(?:\s+[A-Z][a-z'’-]+){1,2}"
_PERSON_RE = re.compile(rf"^{_TITLE}{_NAME}$")
# "Jo Bloggs Health Visitor, Homerton" on one line, or at the end of a sentence of the value.
_NAME_AND_ROLE_RE = re.compile(rf"(?:^|(?<=[.!?])\s+){_TITLE}{_NAME},?\s+(?:[A-Z][\w&'-]*\s+){{0,3}}?"
                               rf"(?:{_ROLE})\b[^.!?]{{0,80}}$", re.I)


def signature_at(lines: Sequence[str], j: int, after_blank: bool = False) -> bool:
    """``lines[j]`` starts a signature: a person's name followed by a role, an agency or a contact
    line ("Jo Bloggs" / "Health Visitor, Homerton"), a name and role on one line, or (after a blank
    line) a name alone on the last line."""
    line = lines[j].strip()
    if _NAME_AND_ROLE_RE.fullmatch(line) and len(line) <= 100:
        return True
    if not _PERSON_RE.match(line):
        return False
    following = [ln.strip() for ln in lines[j + 1:j + 4] if ln.strip()]
    if not following:
        return after_blank
    nxt = following[0]
    return len(nxt) <= 80 and bool(_ROLE_RE.search(nxt) or _CONTACT_RE.search(nxt))


def cut_trailing_signature(value: str) -> str:
    """A value with a signature run on at its end ("... assessment. Jo Bloggs Health Visitor, Homerton")."""
    m = _NAME_AND_ROLE_RE.search(value)
    return value[:m.start()].rstrip() if m and m.start() > 0 else value


def cut_signature(text: str) -> str:
    """``text`` above its sign-off: a bare sign-off line after the first, followed by at most six
    short lines (or a "--" delimiter, whatever follows)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i == 0 or not _SIGN_OFF_LINE.match(line):
            continue
        tail = [ln for ln in lines[i + 1:] if ln.strip()]
        if line.strip().startswith("--") or (len(tail) <= 6 and all(len(ln.strip()) <= 80 for ln in tail)):
            return "\n".join(lines[:i])
    return text


# ---- forwarded mail (kept: the referral extractor reads it too) -------------------------------------

def split_forwarded(text: str) -> tuple[str, list[str]]:
    """The sender's own text, and each inline forwarded/quoted message below it (outermost first)."""
    lines = text.replace("\r\n", "\n").split("\n")
    cuts: list[tuple[int, int]] = []  # (marker line, first body line)
    i = 0
    while i < len(lines):
        line = lines[i]
        start: int | None = None
        if FORWARD_MARKER_RE.match(line):
            start = i
            k = i + 1
        elif re.match(r"^\s*(?:>\s*)*\**from\**\s*:", line, re.I) and _header_block_at(lines, i):
            start = i
            k = i
        else:
            i += 1
            continue
        # skip the header block (From/Sent/To/Cc/Subject/Date lines, possibly wrapped) after the marker
        while k < len(lines) and _in_header_block(lines, k, start):
            k += 1
        cuts.append((start, k))
        i = max(k, i + 1)
    if not cuts:
        return text, []
    own = "\n".join(lines[:cuts[0][0]])
    blocks: list[str] = []
    for idx, (_start, body) in enumerate(cuts):
        end = cuts[idx + 1][0] if idx + 1 < len(cuts) else len(lines)
        block = [re.sub(r"^\s*(?:>\s?)+", "", ln) for ln in lines[body:end]]
        blocks.append("\n".join(block))
    return own, blocks


def _in_header_block(lines: Sequence[str], k: int, start: int) -> bool:
    line = lines[k]
    if not line.strip():
        return k == start + 1  # the blank line Gmail puts after its marker
    if _HEADER_BLOCK_LINE.match(line):
        return True
    # a wrapped To:/Cc: line continues the block
    return k > start and line[:1] in (" ", "\t") and bool(_HEADER_BLOCK_LINE.match(lines[k - 1]))


def _header_block_at(lines: Sequence[str], i: int) -> bool:
    """An Outlook-style "From: / Sent: / To: / Subject:" block starts at line i."""
    names: set[str] = set()
    for ln in lines[i:i + 8]:
        m = _HEADER_BLOCK_LINE.match(ln)
        if m:
            names.add(m.group(1).lower())
        elif ln.strip() and not ln[:1].isspace():
            break
    return "from" in names and ("sent" in names or "date" in names) and ("subject" in names or "to" in names)


# ---- quoted history (cut: a reply's command is only read above it) ----------------------------------

_RULE_LINE = re.compile(r"^\s*-{10,}\s*$")
_ON_WROTE = re.compile(r"^\s*on\b.{0,200}\bwrote:?\s*$", re.I)
_ON_WROTE_START = re.compile(r"^\s*on\s+\S.{0,200}$", re.I)
_QUOTE_LINE = re.compile(r"^\s*>")
_FROM_LINE = re.compile(r"^\s*\**(?:from|de|von)\**\s*:.*$", re.I)
_SENT_LINE = re.compile(r"^\s*\**(?:sent|date|to|subject|cc)\**\s*:", re.I)


def _quote_starts(lines: Sequence[str], i: int) -> bool:
    line = lines[i]
    if FORWARD_MARKER_RE.match(line) or _RULE_LINE.match(line) or _ON_WROTE.match(line) \
            or _QUOTE_LINE.match(line):
        return True
    if _FROM_LINE.match(line):  # a "From:" of the sender's own text is not a quoted header
        return any(_SENT_LINE.match(w) for w in lines[i + 1:i + 6])
    # "On Tue, 3 Nov 2026 at 10:00, CHSCP <chscp@...>" wrapped onto a second line ending "wrote:"
    return bool(_ON_WROTE_START.match(line)) and i + 1 < len(lines) and lines[i + 1].rstrip().endswith("wrote:")


def cut_quoted(text: str) -> str:
    """``text`` above the first line where quoted history starts."""
    lines = text.split("\n")
    for i in range(len(lines)):
        if _quote_starts(lines, i):
            return "\n".join(lines[:i])
    return text


def strip_quoted(text: str) -> str:
    """A reply's new text: quoted history, "On ... wrote:" / Outlook header blocks and signatures cut."""
    # splitlines() also breaks on \v, \f, \x1c-\x1e, \x85, \u2028...: make those plain newlines too
    normalised = "\n".join((text or "").splitlines()).replace("\xa0", " ")
    try:
        from mailparser_reply import EmailReplyParser

        latest = EmailReplyParser(languages=["en"]).parse_reply(normalised)
    except Exception:
        latest = None
    candidate = latest if isinstance(latest, str) else normalised
    # The library can return an all-quoted reply unchanged; our own cuts apply either way.
    candidate = cut_quoted(candidate)
    if not candidate.strip() and normalised.strip():
        candidate = cut_quoted(normalised)
    candidate = cut_signature(candidate)
    lines = [ln.rstrip() for ln in candidate.splitlines() if not ln.lstrip().startswith(">")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
