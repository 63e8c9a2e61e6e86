from __future__ import annotations

import email
import email.policy
from collections.abc import Collection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalations.parsers.authresults import AuthVerdict, dmarc_verdict, sender_fails_dmarc

AR = "authentication-results"

GOOGLE = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.org header.s=google header.b=AbCd+/12;\r\n"
    "       arc=pass (i=1 spf=pass spfdomain=example.org dkim=pass dkdomain=example.org dmarc=pass fromdomain=example.org);\r\n"
    "       spf=pass (google.com: domain of jane@example.org designates 209.85.220.41 as permitted sender) "
    "smtp.mailfrom=jane@example.org;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.org"
)
MICROSOFT = (
    "spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=example.org; dkim=pass (signature was verified) "
    "header.d=example.org;dmarc=pass action=none header.from=example.org;compauth=pass reason=100"
)
MICROSOFT_WITH_ID = "mx.microsoft.com; " + MICROSOFT


def verdict(*values: str, trusted: Collection[str] = ()) -> AuthVerdict:
    return dmarc_verdict([(AR, v) for v in values], trusted_authserv_ids=trusted)


def test_google() -> None:
    assert verdict(GOOGLE) == AuthVerdict(
        dmarc="pass", header_from_domain="example.org", authserv_id="mx.google.com", spf="pass", dkim="pass"
    )


def test_opendmarc_style() -> None:
    v = verdict("mail.lbhf.gov.uk; dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.org")
    assert (v.dmarc, v.header_from_domain, v.authserv_id, v.spf, v.dkim) == (
        "pass",
        "example.org",
        "mail.lbhf.gov.uk",
        None,
        None,
    )


def test_microsoft_without_authserv_id() -> None:
    v = verdict(MICROSOFT)
    assert v == AuthVerdict(
        dmarc="pass", header_from_domain="example.org", authserv_id=None, spf="pass", dkim="pass"
    )


def test_microsoft_with_authserv_id() -> None:
    v = verdict(MICROSOFT_WITH_ID, trusted=("MX.Microsoft.com",))
    assert v == AuthVerdict(
        dmarc="pass",
        header_from_domain="example.org",
        authserv_id="mx.microsoft.com",
        spf="pass",
        dkim="pass",
    )


def test_microsoft_fail() -> None:
    v = verdict(
        "spf=fail (sender IP is 6.6.6.6) smtp.mailfrom=example.org; dkim=none (message not signed) "
        "header.d=none;dmarc=fail action=oreject header.from=example.org;compauth=fail reason=000"
    )
    assert (v.dmarc, v.spf, v.dkim, v.header_from_domain) == ("fail", "fail", "none", "example.org")
    assert sender_fails_dmarc(v)


def test_microsoft_bestguesspass() -> None:
    v = verdict(
        "spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=school.sch.uk; dkim=none (message not signed) "
        "header.d=none;dmarc=bestguesspass action=none header.from=school.sch.uk;compauth=pass reason=109"
    )
    assert v.dmarc == "bestguesspass"
    assert not sender_fails_dmarc(v)


def test_none_header() -> None:
    v = verdict("mail.lbhf.gov.uk; none")
    assert v == AuthVerdict(
        dmarc="unknown", header_from_domain=None, authserv_id="mail.lbhf.gov.uk", spf=None, dkim=None
    )
    assert not sender_fails_dmarc(v)


def test_none_header_with_version_and_comment() -> None:
    v = verdict("mail.lbhf.gov.uk 1 (no auth done); none")
    assert (v.dmarc, v.authserv_id) == ("unknown", "mail.lbhf.gov.uk")


def test_dmarc_none() -> None:
    v = verdict(
        "mx.example.net; spf=none smtp.mailfrom=charity.org.uk; dmarc=none header.from=charity.org.uk"
    )
    assert (v.dmarc, v.header_from_domain, v.spf) == ("none", "charity.org.uk", "none")
    assert not sender_fails_dmarc(v)


@pytest.mark.parametrize("result", ["temperror", "permerror"])
def test_errors_are_not_failures(result: str) -> None:
    v = verdict(f"mx.example.net; dmarc={result} header.from=example.org")
    assert v.dmarc == result
    assert not sender_fails_dmarc(v)


def test_unrecognised_result_is_unknown() -> None:
    assert verdict("mx.example.net; dmarc=quarantine header.from=example.org").dmarc == "unknown"
    assert verdict("mx.example.net; dmarc= ; spf=pass").dmarc == "unknown"


def test_folded_multiline() -> None:
    value = (
        "mx.lbhf.gov.uk;\r\n\tdkim=pass\r\n\t (2048-bit key; unprotected)\r\n\t header.d=example.org\r\n"
        "\t header.i=@example.org;\r\n\tdmarc=fail\r\n (p=REJECT\r\n sp=REJECT dis=NONE)\r\n"
        "  header.from=Example.ORG"
    )
    v = verdict(value)
    assert (v.dmarc, v.header_from_domain, v.dkim) == ("fail", "example.org", "pass")


def test_folded_header_via_email_package() -> None:
    raw = (
        b"Authentication-Results: mx.lbhf.gov.uk;\r\n"
        b" dkim=pass header.d=example.org;\r\n"
        b" dmarc=pass (p=none dis=none)\r\n"
        b"  header.from=example.org\r\n"
        b"Authentication-Results: evil.example; dmarc=fail header.from=example.org\r\n"
        b"From: Jane <jane@example.org>\r\n\r\nbody\r\n"
    )
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = [(k.lower(), str(v)) for k, v in msg.items()]
    assert dmarc_verdict(headers).dmarc == "pass"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers = [(k.lower(), str(v)) for k, v in msg.items()]
    assert dmarc_verdict(headers).dmarc == "pass"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "\r\n\t",
        ";",
        ";;;",
        "(",
        ")",
        '"',
        "(unterminated comment; dmarc=pass",
        "=",
        "==;==",
        "dmarc",
        "\x00\x01\x02",
        "\\",
        "mx.example.org; (dmarc=pass header.from=example.org)",
        'mx.example.org; "dmarc=pass"',
        "mx.example.org dmarc=pass header.from=example.org",
    ],
)
def test_garbage_is_unknown_or_not_pass(value: str) -> None:
    v = verdict(value)
    assert v.dmarc == "unknown"
    assert not sender_fails_dmarc(v)


def test_no_headers() -> None:
    assert dmarc_verdict([]) == AuthVerdict(
        dmarc="unknown", header_from_domain=None, authserv_id=None, spf=None, dkim=None
    )
    assert dmarc_verdict([("from", "a@b.org"), ("subject", "dmarc=fail")]).dmarc == "unknown"


def test_other_header_names_ignored() -> None:
    headers = [
        ("arc-authentication-results", "i=1; mx.google.com; dmarc=fail header.from=example.org"),
        ("authentication-results-original", "x; dmarc=fail header.from=example.org"),
        ("x-ms-exchange-authentication-results", "x; dmarc=fail header.from=example.org"),
        (AR, "mx.lbhf.gov.uk; dmarc=pass header.from=example.org"),
    ]
    assert dmarc_verdict(headers).dmarc == "pass"


def test_header_name_case_and_space_insensitive() -> None:
    assert dmarc_verdict([(" Authentication-Results ", "mx; dmarc=fail")]).dmarc == "fail"


# --- trust --------------------------------------------------------------------------------------------


def test_untrusted_mode_uses_only_topmost() -> None:
    ours = "mx.lbhf.gov.uk; dmarc=pass header.from=example.org"
    forged = "mx.lbhf.gov.uk; dmarc=fail header.from=example.org"
    assert verdict(ours, forged).dmarc == "pass"
    assert verdict(forged, ours).dmarc == "fail"


def test_untrusted_mode_topmost_garbage_is_unknown() -> None:
    assert verdict("(((", "mx.lbhf.gov.uk; dmarc=pass header.from=example.org").dmarc == "unknown"


def test_untrusted_mode_topmost_without_dmarc_is_unknown() -> None:
    v = verdict("mx.lbhf.gov.uk; spf=pass smtp.mailfrom=example.org", "mx.lbhf.gov.uk; dmarc=fail")
    assert (v.dmarc, v.spf, v.authserv_id) == ("unknown", "pass", "mx.lbhf.gov.uk")


def test_trusted_ids_skip_foreign_headers() -> None:
    v = verdict(
        "gateway.other.example; dmarc=fail header.from=example.org",
        "mx.lbhf.gov.uk; dmarc=pass header.from=example.org",
        trusted=("mx.lbhf.gov.uk",),
    )
    assert (v.dmarc, v.authserv_id) == ("pass", "mx.lbhf.gov.uk")


def test_trusted_topmost_beats_forged_copy_below() -> None:
    v = verdict(
        "mx.lbhf.gov.uk; dmarc=fail header.from=example.org",
        "mx.lbhf.gov.uk; dmarc=pass header.from=example.org",
        trusted=("mx.lbhf.gov.uk",),
    )
    assert v.dmarc == "fail"


def test_trusted_ids_none_match() -> None:
    v = verdict(GOOGLE, MICROSOFT_WITH_ID, trusted=("mx.lbhf.gov.uk",))
    assert v == AuthVerdict(dmarc="unknown", header_from_domain=None, authserv_id=None, spf=None, dkim=None)


def test_trusted_ids_never_match_missing_id() -> None:
    assert verdict(MICROSOFT, trusted=("mx.lbhf.gov.uk",)).dmarc == "unknown"


def test_trusted_id_comparison() -> None:
    value = "MX.LBHF.gov.uk.; dmarc=pass header.from=example.org"
    assert verdict(value, trusted=(" mx.lbhf.GOV.uk ",)).dmarc == "pass"
    assert verdict(value, trusted={"mx.lbhf.gov.uk"}).dmarc == "pass"
    assert verdict(value, trusted=["lbhf.gov.uk"]).dmarc == "unknown"


def test_trusted_split_headers_merged() -> None:
    # OpenDKIM, SPF policy daemon and OpenDMARC each add their own header with the same authserv-id.
    v = verdict(
        "mx.lbhf.gov.uk; dmarc=pass (p=quarantine dis=none) header.from=example.org",
        "mx.lbhf.gov.uk; spf=pass smtp.mailfrom=example.org",
        "mx.lbhf.gov.uk; dkim=pass (2048-bit key) header.d=example.org header.i=@example.org",
        "attacker.example; dmarc=fail",
        trusted=("mx.lbhf.gov.uk",),
    )
    assert v == AuthVerdict(
        dmarc="pass", header_from_domain="example.org", authserv_id="mx.lbhf.gov.uk", spf="pass", dkim="pass"
    )


# --- syntax -------------------------------------------------------------------------------------------


def test_quoted_authserv_id_and_values() -> None:
    v = verdict('"mx.lbhf.gov.uk"; dmarc="pass" header.from="example.org"', trusted=("mx.lbhf.gov.uk",))
    assert (v.dmarc, v.header_from_domain) == ("pass", "example.org")


def test_authres_version() -> None:
    v = verdict("mx.lbhf.gov.uk 1; dmarc=pass header.from=example.org", trusted=("mx.lbhf.gov.uk",))
    assert (v.dmarc, v.authserv_id) == ("pass", "mx.lbhf.gov.uk")


def test_comments_with_separators_nesting_and_escapes() -> None:
    value = (
        "mx.lbhf.gov.uk (a; b=c (nested; dmarc=fail) \\) still comment; dmarc=fail); "
        'dmarc=pass (reason; "quoted" (deep (deeper)) dmarc=fail) header.from=example.org'
    )
    v = verdict(value)
    assert (v.dmarc, v.header_from_domain, v.authserv_id) == ("pass", "example.org", "mx.lbhf.gov.uk")


def test_cfws_around_equals_dot_and_slash() -> None:
    v = verdict("mx.lbhf.gov.uk; dmarc / 1 = (c) pass header (c) . from = example.org; dkim/1=fail")
    assert (v.dmarc, v.header_from_domain, v.dkim) == ("pass", "example.org", "fail")


def test_reason_and_quoted_values_with_separators() -> None:
    v = verdict('mx.lbhf.gov.uk; dmarc=fail reason="policy; p=reject" header.from=example.org; spf=softfail')
    assert (v.dmarc, v.header_from_domain, v.spf) == ("fail", "example.org", "softfail")


def test_srs_mailfrom_with_equals() -> None:
    v = verdict(
        "mx.lbhf.gov.uk; spf=pass smtp.mailfrom=SRS0=ab12=XY=example.org=jane@fwd.example.net; "
        "dmarc=pass header.from=example.org"
    )
    assert (v.dmarc, v.spf, v.header_from_domain) == ("pass", "pass", "example.org")


def test_header_from_as_address_or_uppercase() -> None:
    assert verdict("mx; dmarc=pass header.from=jane@Example.ORG").header_from_domain == "example.org"
    assert verdict('mx; dmarc=pass header.from="j d"@example.org.').header_from_domain == "example.org"
    assert verdict("mx; DMARC=PASS Header.From=EXAMPLE.ORG").dmarc == "pass"
    assert verdict("mx; DMARC=PASS Header.From=EXAMPLE.ORG").header_from_domain == "example.org"


def test_header_from_falls_back_to_other_resinfo() -> None:
    v = verdict("mx; dkim=pass header.from=example.org; dmarc=pass")
    assert v.header_from_domain == "example.org"


def test_multiple_dkim_any_pass() -> None:
    v = verdict("mx; dkim=fail header.d=a.org; dkim=pass header.d=example.org; dkim=neutral")
    assert v.dkim == "pass"
    assert verdict("mx; dkim=fail header.d=a.org; dkim=neutral").dkim == "fail"


def test_first_dmarc_result_wins_within_header() -> None:
    assert verdict("mx; dmarc=fail; dmarc=pass").dmarc == "fail"


def test_trailing_semicolons_and_empty_resinfo() -> None:
    v = verdict("mx.lbhf.gov.uk;; ; dmarc=pass header.from=example.org;;")
    assert v.dmarc == "pass"


def test_junk_between_id_and_results_is_skipped() -> None:
    v = verdict("mx.lbhf.gov.uk junk here; dmarc=pass header.from=example.org")
    assert (v.dmarc, v.authserv_id) == ("pass", "mx.lbhf.gov.uk")


def test_sender_fails_dmarc_only_on_fail() -> None:
    for result in ("pass", "none", "temperror", "permerror", "bestguesspass", "unknown"):
        v = AuthVerdict(dmarc=result, header_from_domain=None, authserv_id=None, spf=None, dkim=None)
        assert not sender_fails_dmarc(v)
    assert sender_fails_dmarc(
        AuthVerdict(dmarc="fail", header_from_domain="x.org", authserv_id="mx", spf=None, dkim=None)
    )


# --- properties -----------------------------------------------------------------------------------

RFC_PIECES = st.sampled_from(
    [
        "(",
        ")",
        ";",
        "=",
        ".",
        "/",
        '"',
        "\\",
        " ",
        "\r\n ",
        "\t",
        "@",
        "dmarc",
        "spf",
        "dkim",
        "pass",
        "fail",
        "none",
        "header",
        "from",
        "header.from",
        "example.org",
        "mx.lbhf.gov.uk",
        "reason",
        "1",
        "é",
        "\x00",
    ]
)


@settings(max_examples=500)
@given(st.text(max_size=300), st.lists(st.text(max_size=30), max_size=3))
def test_property_never_raises_on_arbitrary_text(value: str, trusted: list[str]) -> None:
    for trust in ((), trusted):
        v = dmarc_verdict([(AR, value)], trusted_authserv_ids=trust)
        assert v.dmarc in {"pass", "fail", "none", "temperror", "permerror", "bestguesspass", "unknown"}


@settings(max_examples=500)
@given(st.lists(RFC_PIECES, max_size=60).map("".join))
def test_property_never_raises_on_rfc_like_text(value: str) -> None:
    v = dmarc_verdict([(AR, value), (AR, value)], trusted_authserv_ids=("mx.lbhf.gov.uk",))
    assert isinstance(v, AuthVerdict)
    v = dmarc_verdict([(AR, value)])
    assert isinstance(v, AuthVerdict)


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=100)), max_size=5))
def test_property_never_raises_on_arbitrary_headers(headers: list[tuple[str, str]]) -> None:
    assert isinstance(dmarc_verdict(headers), AuthVerdict)


comment = st.text(alphabet=st.characters(blacklist_characters="()\\", codec="utf-8"), max_size=20).map(
    lambda c: f" ({c})"
)


@settings(max_examples=300)
@given(
    result=st.sampled_from(["pass", "fail", "none", "temperror", "permerror", "bestguesspass"]),
    domain=st.from_regex(r"[a-z0-9]{1,10}\.(org|gov\.uk|nhs\.uk)", fullmatch=True),
    comments=st.lists(st.one_of(st.just(""), comment), min_size=4, max_size=4),
    separator=st.sampled_from([";", "; ", ";\r\n\t", " ;\r\n "]),
    upper=st.booleans(),
)
def test_property_well_formed_header_parsed(
    result: str, domain: str, comments: list[str], separator: str, upper: bool
) -> None:
    method = "DMARC" if upper else "dmarc"
    value = (
        f"mx.lbhf.gov.uk{comments[0]}{separator}spf=pass{comments[1]} smtp.mailfrom=x@{domain}{separator}"
        f"{method}={result.upper() if upper else result}{comments[2]} header.from={domain}{comments[3]}"
    )
    v = verdict(value, trusted=("mx.lbhf.gov.uk",))
    assert v == AuthVerdict(
        dmarc=result,  # type: ignore[arg-type]
        header_from_domain=domain,
        authserv_id="mx.lbhf.gov.uk",
        spf="pass",
        dkim=None,
    )
    assert sender_fails_dmarc(v) == (result == "fail")
