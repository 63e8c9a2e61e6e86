from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import re
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escalations.routing.tokens import (
    FOOTER_PREFIX,
    MAX_MAILBOX_LOCAL_PART,
    TOKEN_LENGTH,
    ReplyToken,
    TokenBadSignature,
    TokenError,
    TokenExpired,
    TokenMalformed,
    footer_line,
    issue_token,
    plus_address,
    token_from_address,
    token_from_message_ids,
    token_from_text,
    token_message_id,
    verify_token,
)

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210"
NOW = datetime(2025, 3, 3, 9, 30, tzinfo=UTC)
EXPIRES = datetime(2025, 4, 1, 17, 0, tzinfo=UTC)
RCPT = "jane.smith@lbhf.gov.uk"
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

# RFC 5322 §3.6.4 msg-id with dot-atom-text on both sides.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = rf"{ATEXT}+(?:\.{ATEXT}+)*"
MSG_ID_RE = re.compile(rf"<{DOT_ATOM}@{DOT_ATOM}>")


def make(case_id: int = 42, recipient: str = RCPT, stage: int = 2, expires_at: datetime = EXPIRES) -> str:
    return issue_token(SECRET, case_id=case_id, recipient=recipient, stage=stage, expires_at=expires_at)


def forge(payload: bytes, recipient: str = RCPT, secret: bytes = SECRET, mac: bytes | None = None) -> str:
    """Build a token by hand, to test what verify does with payloads issue_token would not make."""
    if mac is None:
        mac = hmac.new(
            secret, b"escalations/reply-token/v1\x00" + payload + recipient.encode(), hashlib.sha256
        ).digest()[:10]
    return base64.b32encode(payload + mac).decode().lower()


# --- issue / verify ---------------------------------------------------------------------------------


def test_round_trip() -> None:
    token = make()
    assert verify_token(SECRET, token, recipient=RCPT, now=NOW) == ReplyToken(
        case_id=42, recipient=RCPT, stage=2, expires_at=EXPIRES
    )


def test_token_shape() -> None:
    token = make()
    assert len(token) == TOKEN_LENGTH == 32
    assert re.fullmatch(r"[a-z2-7]+", token)


def test_deterministic() -> None:
    assert make() == make()
    assert make(stage=3) != make()


def test_hand_forged_token_matches_documented_format() -> None:
    payload = struct.pack(">BIBI", 1, 42, 2, int(EXPIRES.timestamp()))
    assert forge(payload) == make()


def test_recipient_is_case_and_space_insensitive() -> None:
    token = make(recipient="  Jane.Smith@LBHF.gov.uk ")
    reply = verify_token(SECRET, token, recipient="JANE.SMITH@lbhf.gov.uk", now=NOW)
    assert reply.recipient == "jane.smith@lbhf.gov.uk"


def test_token_read_case_insensitively() -> None:
    token = make()
    assert verify_token(SECRET, token.upper(), recipient=RCPT, now=NOW).case_id == 42
    assert verify_token(SECRET, f"  {token}\n", recipient=RCPT, now=NOW).case_id == 42


def test_other_recipient_fails() -> None:
    with pytest.raises(TokenBadSignature):
        verify_token(SECRET, make(), recipient="someone.else@lbhf.gov.uk", now=NOW)


def test_other_secret_fails() -> None:
    with pytest.raises(TokenBadSignature):
        verify_token(OTHER_SECRET, make(), recipient=RCPT, now=NOW)


@pytest.mark.parametrize(
    ("case_id", "stage"),
    [(43, 2), (42, 3), (41, 2), (42, 1), (2**31, 2)],
)
def test_tampered_case_or_stage_fails(case_id: int, stage: int) -> None:
    genuine = base64.b32decode(make().upper())
    mac = genuine[-10:]
    payload = struct.pack(">BIBI", 1, case_id, stage, int(EXPIRES.timestamp()))
    with pytest.raises(TokenBadSignature):
        verify_token(SECRET, forge(payload, mac=mac), recipient=RCPT, now=NOW)


def test_tampered_expiry_fails() -> None:
    genuine = base64.b32decode(make().upper())
    payload = struct.pack(">BIBI", 1, 42, 2, int(EXPIRES.timestamp()) + 86400)
    with pytest.raises(TokenBadSignature):
        verify_token(SECRET, forge(payload, mac=genuine[-10:]), recipient=RCPT, now=NOW)


def test_unknown_version_is_malformed_even_with_valid_mac() -> None:
    payload = struct.pack(">BIBI", 2, 42, 2, int(EXPIRES.timestamp()))
    with pytest.raises(TokenMalformed):
        verify_token(SECRET, forge(payload), recipient=RCPT, now=NOW)


def test_expired() -> None:
    token = make()
    with pytest.raises(TokenExpired) as info:
        verify_token(SECRET, token, recipient=RCPT, now=EXPIRES + timedelta(days=1))
    assert info.value.token == ReplyToken(case_id=42, recipient=RCPT, stage=2, expires_at=EXPIRES)
    assert "case 42" in str(info.value)


def test_expiry_boundary() -> None:
    token = make()
    assert verify_token(SECRET, token, recipient=RCPT, now=EXPIRES - timedelta(seconds=1)).case_id == 42
    assert verify_token(SECRET, token, recipient=RCPT, now=EXPIRES - timedelta(microseconds=1)).stage == 2
    with pytest.raises(TokenExpired):
        verify_token(SECRET, token, recipient=RCPT, now=EXPIRES)


def test_expired_but_forged_is_bad_signature_not_expired() -> None:
    with pytest.raises(TokenBadSignature):
        verify_token(SECRET, make(), recipient="x@y.org", now=EXPIRES + timedelta(days=365))


def test_all_errors_are_token_errors_and_value_errors() -> None:
    for exc in (TokenMalformed, TokenBadSignature, TokenExpired):
        assert issubclass(exc, TokenError)
    assert issubclass(TokenError, ValueError)


def test_expiry_converted_to_utc_and_truncated() -> None:
    local = timezone(timedelta(hours=1))
    expires = datetime(2025, 4, 1, 18, 0, 0, 999_999, tzinfo=local)
    reply = verify_token(SECRET, make(expires_at=expires), recipient=RCPT, now=NOW)
    assert reply.expires_at == EXPIRES
    assert reply.expires_at.tzinfo is UTC
    assert reply.expires_at.microsecond == 0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "a" * 31,
        "a" * 33,
        "a" * 30 + "==",
        "0" * 32,
        "1" + "a" * 31,
        "8" + "a" * 31,
        "a" * 31 + "9",
        "a" * 16 + " " + "a" * 15,
        "a" * 16 + "-" + "a" * 15,
        "é" * 32,
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(TokenMalformed):
        verify_token(SECRET, bad, recipient=RCPT, now=NOW)


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(TokenMalformed):
        verify_token(SECRET, None, recipient=RCPT, now=NOW)  # type: ignore[arg-type]


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as info:
        verify_token(SECRET, make(), recipient=RCPT, now=datetime(2025, 3, 3))
    assert not isinstance(info.value, TokenError)


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_short_secret_rejected(secret: bytes) -> None:
    with pytest.raises(ValueError):
        issue_token(secret, case_id=1, recipient=RCPT, stage=0, expires_at=EXPIRES)
    with pytest.raises(ValueError):
        verify_token(secret, make(), recipient=RCPT, now=NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"case_id": 0},
        {"case_id": -1},
        {"case_id": 2**32},
        {"case_id": True},
        {"case_id": 1.0},
        {"stage": -1},
        {"stage": 256},
        {"stage": False},
        {"recipient": ""},
        {"recipient": "   "},
        {"recipient": "not-an-address"},
        {"expires_at": datetime(2025, 4, 1, 17, 0)},
        {"expires_at": datetime(1969, 12, 31, tzinfo=UTC)},
        {"expires_at": datetime(2106, 2, 8, tzinfo=UTC)},
        {"expires_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))},
    ],
)
def test_issue_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"case_id": 42, "recipient": RCPT, "stage": 2, "expires_at": EXPIRES}
    args.update(kwargs)
    with pytest.raises(ValueError):
        issue_token(SECRET, **args)  # type: ignore[arg-type]


def test_extremes_round_trip() -> None:
    for case_id, stage, expires in [
        (1, 0, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (2**32 - 1, 255, datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)),
    ]:
        token = make(case_id=case_id, stage=stage, expires_at=expires)
        reply = verify_token(SECRET, token, recipient=RCPT, now=datetime(1970, 1, 1, tzinfo=UTC))
        assert (reply.case_id, reply.stage, reply.expires_at) == (case_id, stage, expires)


def test_bytearray_secret_accepted() -> None:
    token = issue_token(bytearray(SECRET), case_id=1, recipient=RCPT, stage=0, expires_at=EXPIRES)  # type: ignore[arg-type]
    assert verify_token(SECRET, token, recipient=RCPT, now=NOW).case_id == 1


# --- addresses ---------------------------------------------------------------------------------------


def test_plus_address() -> None:
    token = make()
    assert plus_address("lscb@lbhf.gov.uk", token) == f"lscb+{token}@lbhf.gov.uk"
    assert plus_address(" lscb@lbhf.gov.uk ", "t0k") == "lscb+t0k@lbhf.gov.uk"


def test_plus_address_local_part_limit() -> None:
    token = make()
    assert MAX_MAILBOX_LOCAL_PART == 31
    longest = "a" * MAX_MAILBOX_LOCAL_PART
    address = plus_address(f"{longest}@x.gov.uk", token)
    assert len(address.partition("@")[0]) == 64
    with pytest.raises(ValueError, match="64"):
        plus_address(f"{longest}b@x.gov.uk", token)


@pytest.mark.parametrize(
    "mailbox",
    [
        "lscb",
        "@lbhf.gov.uk",
        "lscb@",
        "LSCB <lscb@lbhf.gov.uk>",
        '"l s"@lbhf.gov.uk',
        "lscb@lb hf.gov.uk",
        "",
    ],
)
def test_plus_address_rejects_non_plain_mailbox(mailbox: str) -> None:
    with pytest.raises(ValueError):
        plus_address(mailbox, make())


@pytest.mark.parametrize("token", ["", "ABC", "a-b", "a b", "a@b", "é"])
def test_plus_address_rejects_bad_token(token: str) -> None:
    with pytest.raises(ValueError):
        plus_address("lscb@lbhf.gov.uk", token)


def test_plus_address_keeps_existing_tag() -> None:
    token = make()
    address = plus_address("lscb+esc@lbhf.gov.uk", token)
    assert address == f"lscb+esc+{token}@lbhf.gov.uk"
    assert token_from_address(address) == token


def test_token_from_address() -> None:
    token = make()
    assert token_from_address(f"lscb+{token}@lbhf.gov.uk") == token
    assert token_from_address(f"LSCB+{token.upper()}@LBHF.GOV.UK") == token
    assert token_from_address(f'"LSCB" <lscb+{token}@lbhf.gov.uk>') == token


@pytest.mark.parametrize(
    "address",
    [
        "lscb@lbhf.gov.uk",
        "lscb+urgent@lbhf.gov.uk",
        "lscb+@lbhf.gov.uk",
        "lscb+" + "a" * 31 + "@x.org",
        "lscb+" + "a" * 33 + "@x.org",
        "lscb+" + "a" * 31 + "0@x.org",
        "a" * 32 + "@x.org",
        "",
    ],
)
def test_token_from_address_none(address: str) -> None:
    assert token_from_address(address) is None


# --- Message-ID -------------------------------------------------------------------------------------


def test_token_message_id() -> None:
    token = make()
    msg_id = token_message_id(token, "escalations.example.org", unique="abc123")
    assert msg_id == f"esc.{token}.abc123@escalations.example.org"
    assert MSG_ID_RE.fullmatch(f"<{msg_id}>")


def test_token_message_id_unique_by_default() -> None:
    token = make()
    first, second = token_message_id(token, "x.org"), token_message_id(token, "x.org")
    assert first != second
    assert re.fullmatch(rf"esc\.{token}\.[0-9a-f]{{16}}@x\.org", first)
    assert MSG_ID_RE.fullmatch(f"<{first}>")


def test_token_message_id_survives_email_package() -> None:
    token = make()
    msg_id = token_message_id(token, "escalations.example.org")
    raw = (
        f"From: a@b.org\r\nIn-Reply-To: <{msg_id}>\r\nReferences: <other@x.org>\r\n <{msg_id}>\r\n\r\nhi\r\n"
    ).encode()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(msg["In-Reply-To"]) == f"<{msg_id}>"
    assert token_from_message_ids([str(msg["In-Reply-To"]), str(msg["References"])]) == token


@pytest.mark.parametrize(
    ("token", "domain", "unique"),
    [
        ("ABC", "x.org", None),
        ("a.b", "x.org", None),
        ("abc", "", None),
        ("abc", "x .org", None),
        ("abc", "[1.2.3.4]", None),
        ("abc", "x..org", None),
        ("abc", "x.org>", None),
        ("abc", "x.org", ""),
        ("abc", "x.org", "a.b"),
    ],
)
def test_token_message_id_rejects(token: str, domain: str, unique: str | None) -> None:
    with pytest.raises(ValueError):
        token_message_id(token, domain, unique=unique)


def test_token_from_message_ids() -> None:
    t1, t2 = make(stage=1), make(stage=2)
    id1 = token_message_id(t1, "x.org", unique="1")
    id2 = token_message_id(t2, "x.org", unique="2")
    assert token_from_message_ids([id1]) == t1
    assert token_from_message_ids([f"<{id1}>"]) == t1
    assert token_from_message_ids([f"  <{id1.upper()}>  "]) == t1
    # In-Reply-To first, then References newest-first.
    assert token_from_message_ids([f"<{id2}>", f"<{id1}> <{id2}>"]) == t2
    assert token_from_message_ids(reversed(["<foreign@y.org>", f"<{id1}>", f"<{id2}>"])) == t2
    assert token_from_message_ids([f"<a@b> <{id1}>,<{id2}>"]) == t1
    assert token_from_message_ids(f"<{id1}>") == t1  # a bare string is one item, not characters


@pytest.mark.parametrize(
    "ids",
    [
        [],
        [""],
        ["<CAF=abc@mail.gmail.com>"],
        ["<xesc." + "a" * 32 + ".1@x.org>"],
        ["<esc." + "a" * 31 + ".1@x.org>"],
        ["<esc." + "a" * 32 + "@x.org>"],
        ["<esc." + "a" * 32 + ".@x.org>"],
    ],
)
def test_token_from_message_ids_none(ids: list[str]) -> None:
    assert token_from_message_ids(ids) is None


# --- footer -----------------------------------------------------------------------------------------


def test_footer_line() -> None:
    token = make()
    assert footer_line(token) == f"Reply code: {token}"
    assert footer_line(token).startswith(FOOTER_PREFIX)
    with pytest.raises(ValueError):
        footer_line("not a token")


@pytest.mark.parametrize(
    "template",
    [
        "Thanks.\n\n{line}\n",
        "{line}",
        "Agreed.\r\n\r\n> Dear Jane,\r\n> \r\n> {line}\r\n",
        "ok\n>> {line}\n",
        "ok\n> > > {line}\n",
        "ok\n    {line}   \n",
        "ok\n> reply code: {upper}\n",
        "ok\n> REPLY CODE:{token}\n",
        "ok\n> Reply code:\n> {token}\n",
        "From: x\nSent: y\nSome text {line} more",
    ],
)
def test_token_from_text(template: str) -> None:
    token = make()
    text = template.format(line=footer_line(token), token=token, upper=token.upper())
    assert token_from_text(text) == token


def test_token_from_text_takes_first() -> None:
    t1, t2 = make(stage=1), make(stage=2)
    assert token_from_text(f"{footer_line(t2)}\n> {footer_line(t1)}\n") == t2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no code here",
        "Reply code: none",
        "Reply code: " + "a" * 31,
        "Reply code: " + "a" * 33,
        "Reply code: " + "a" * 32 + "0",
        "Reply: " + "a" * 32,
    ],
)
def test_token_from_text_none(text: str) -> None:
    assert token_from_text(text) is None


# --- properties -------------------------------------------------------------------------------------

case_ids = st.integers(min_value=1, max_value=2**31 - 1)
stages = st.integers(min_value=0, max_value=20)
expiries = st.datetimes(
    min_value=datetime(2025, 3, 3, 9, 31), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
slow = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(case_id=case_ids, stage=stages, recipient=st.emails(), expires_at=expiries)
def test_property_round_trip(case_id: int, stage: int, recipient: str, expires_at: datetime) -> None:
    token = issue_token(SECRET, case_id=case_id, recipient=recipient, stage=stage, expires_at=expires_at)
    assert re.fullmatch(r"[a-z0-9]+", token)
    assert len(token) < 40
    reply = verify_token(SECRET, token, recipient=recipient, now=NOW)
    assert reply == ReplyToken(
        case_id=case_id,
        recipient=recipient.strip().lower(),
        stage=stage,
        expires_at=expires_at.replace(microsecond=0),
    )
    assert verify_token(SECRET, token, recipient=recipient.upper(), now=NOW) == reply
    with pytest.raises(TokenExpired):
        verify_token(SECRET, token, recipient=recipient, now=reply.expires_at)


@slow
@given(
    case_id=case_ids,
    stage=stages,
    recipient=st.emails(),
    other=st.emails(),
)
def test_property_other_recipient_fails(case_id: int, stage: int, recipient: str, other: str) -> None:
    token = issue_token(SECRET, case_id=case_id, recipient=recipient, stage=stage, expires_at=EXPIRES)
    if other.strip().lower() == recipient.strip().lower():
        return
    with pytest.raises(TokenBadSignature):
        verify_token(SECRET, token, recipient=other, now=NOW)


@slow
@given(
    case_id=case_ids,
    stage=stages,
    recipient=st.emails(),
    position=st.integers(min_value=0, max_value=TOKEN_LENGTH - 1),
    replacement=st.sampled_from(ALPHABET),
)
def test_property_single_character_change_fails(
    case_id: int, stage: int, recipient: str, position: int, replacement: str
) -> None:
    token = issue_token(SECRET, case_id=case_id, recipient=recipient, stage=stage, expires_at=EXPIRES)
    if token[position] == replacement:
        return
    changed = token[:position] + replacement + token[position + 1 :]
    # Any change is malformed or fails the MAC; it can never verify, so never reach the expiry check.
    with pytest.raises((TokenMalformed, TokenBadSignature)):
        verify_token(SECRET, changed, recipient=recipient, now=NOW)


@slow
@given(
    case_id=case_ids, stage=stages, recipient=st.emails(), unique=st.text(ALPHABET, min_size=1, max_size=20)
)
def test_property_carriers_round_trip(case_id: int, stage: int, recipient: str, unique: str) -> None:
    token = issue_token(SECRET, case_id=case_id, recipient=recipient, stage=stage, expires_at=EXPIRES)
    assert token_from_address(plus_address("lscb@lbhf.gov.uk", token)) == token
    msg_id = token_message_id(token, "escalations.lbhf.gov.uk", unique=unique)
    assert MSG_ID_RE.fullmatch(f"<{msg_id}>")
    assert token_from_message_ids([f"<{msg_id}>"]) == token
    assert token_from_text(f"Thanks\n> {footer_line(token)}\n> --\n") == token


@given(st.text(max_size=200))
def test_property_extractors_never_raise(text: str) -> None:
    for found in (token_from_address(text), token_from_message_ids([text]), token_from_text(text)):
        assert found is None or re.fullmatch(r"[a-z2-7]{32}", found)


@given(st.text(max_size=60))
def test_property_verify_arbitrary_text_raises_only_token_errors(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, text, recipient=RCPT, now=NOW)
