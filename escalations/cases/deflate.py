"""Mail stored deflated (inbound and outgoing), with a preset dictionary of what every mail we send shares
(headers, the reply-command help, the footer): a 3 KB stage mail takes a few hundred bytes.

A stored value names the dictionary it was made with; a dictionary is never edited once released
(old rows must still inflate), a better one is added under a new mark. Values without a mark are
read as they are: a mail never starts with a NUL byte.
"""

from __future__ import annotations

import zlib

_PLAIN = b"\x00z"  # deflate, no dictionary
_V1 = b"\x00y"  # deflate with _DICT_V1

#: Phrases of our own mails, commonest last (zlib finds the nearest copies cheapest). Frozen.
_DICT_V1 = (
    b"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    b"MIME-Version: 1.0\r\nAuto-Submitted: auto-generated\r\nAuto-Submitted: auto-replied\r\n"
    b"X-Escalations-Template: referral_acknowledged\r\nX-Escalations-Template: stage_request\r\n"
    b"X-Escalations-Template: stage_notification\r\nX-Escalations-Template: reminder\r\n"
    b"In-Reply-To: <\r\nReferences: <\r\nDate: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <esc.@escalations.invalid>\r\nSubject: [] Stage 1: Escalation referral received\r\n"
    b"Safeguarding Children Partnership's policy on resolving professional\r\ndifferences, as Practitioner "
    b"(other agency).\r\n\r\nWhy now:          a referral was received\r\nWhat is asked:    The people who "
    b"disagree discuss the problem as soon as possible, by telephone or face to face, and keep a record of "
    b"the discussion.\r\nDeadline:         working days (or sooner to protect the child)\r\n\r\n"
    b"  Case:             \r\n  Child(ren):       \r\n  Other agency:     \r\n  Concern:          \r\n"
    b"  Outcome sought:   \r\n\r\nHow to reply: answer this message and put one of these words on the "
    b"first line (anything after it is\r\nkept as the record):\r\n\r\n"
    b"  RESOLVED <agreed outcome>    the disagreement is resolved; say what was agreed and how outstanding "
    b"issues will be pursued (the other side is asked to confirm)\r\n"
    b"  ESCALATE <reason>            not resolved: move the case to the next stage now\r\n"
    b"  ACCEPT (or AGREE)            confirm a resolution the other side has recorded\r\n"
    b"  NOTE <text>                  add a note to the case record\r\n"
    b"  URGENT <reason>              the child is at immediate risk: follow the immediate-risk route now\r\n"
    b"  WITHDRAW <reason>            withdraw the escalation (the practitioner who raised it only)\r\n"
    b"  INFO                         answer a request for missing information: one 'Label: value' per line\r\n"
    b"  CONFIRM <address>            partnership staff: confirm an address written in the referral may be "
    b"mailed\r\n\r\nThank you. Your escalation has been received by the Safeguarding Children Partnership and "
    b"recorded as case .\r\n\r\nWhat we understood:\r\nIf anything above is wrong, reply to this message with "
    b"the correction.\r\n\r\n--\r\nSafeguarding Children Partnership\r\nResolving professional differences "
    b"=E2=80=94 \r\nPlease keep the reference  in the subject when you reply.\r\nThis message was sent "
    b"automatically. Names are shown as initials; the full record is held by the partnership.\r\n"
    b"Reply code: \r\nDear ,\r\n\r\nYou are asked to act on an escalation under the \r\nFrom: \r\nTo: \r\n"
    b"Reply-To: \r\n"
)


#: A value up to this size is deflated with an 8 KB window (wbits 13, memLevel 6), which holds the
#: dictionary and the whole value: the same bytes out as zlib's default 32 KB window, set up in half the
#: time (most of deflating a mail of a few KB is setting up). Larger values get the default.
SMALL = 4096


def deflate(value: bytes) -> bytes:
    wbits, mem_level = (13, 6) if len(value) <= SMALL else (15, 8)
    c = zlib.compressobj(6, zlib.DEFLATED, wbits, mem_level, zdict=_DICT_V1)
    return _V1 + c.compress(value) + c.flush()


def inflate(value: bytes) -> bytes:
    if value.startswith(_V1):
        # wbits 0: the window the value was deflated with, read from its zlib header (any of ours)
        d = zlib.decompressobj(0, zdict=_DICT_V1)
        return d.decompress(value[len(_V1):]) + d.flush()
    if value.startswith(_PLAIN):
        return zlib.decompress(value[len(_PLAIN):])
    return value
