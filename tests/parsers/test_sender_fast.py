"""parsers/sender: the plain-From fast path reads exactly what the RFC 5322 parser reads, or stands aside."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from escalations.parsers.sender import _PLAIN_FROM, _mailboxes, _parsed_mailboxes, strict_sender

_atext = st.text(alphabet="abcXYZ0189_%+-", min_size=1, max_size=6)
_address = st.builds(lambda local, dom: ".".join(local) + "@" + ".".join(dom),
                     st.lists(_atext, min_size=1, max_size=3),
                     st.lists(st.text(alphabet="abcXYZ019-", min_size=1, max_size=6), min_size=1, max_size=3))
_word = st.text(alphabet="abcXYZ019_'-", min_size=1, max_size=8)
_name = st.one_of(st.just(""), st.lists(_word, min_size=1, max_size=3).map(" ".join),
                  st.text(alphabet="abc XYZ_',.()-", max_size=12).map(lambda t: f'"{t}"'))
_space = st.sampled_from(["", " ", "  ", "\t"])
_plain = st.one_of(
    st.builds(lambda a, b, n, c, addr, d: f"{a}{n}{b if n else ''}<{addr}>{d}" if n else f"{a}<{addr}>{d}",
              _space, _space, _name, _space, _address, _space),
    st.builds(lambda a, addr, b: f"{a}{addr}{b}", _space, _address, _space))


@settings(max_examples=600, deadline=None)
@given(_plain)
@example('"Smith, Sam" <sam.smith@school.example.org>')
@example("Sam O'Brien <sam@x.org>")
@example("a@b")
def test_every_plain_from_is_taken_by_the_fast_path_and_read_as_the_parser_reads_it(value: str) -> None:
    assert _PLAIN_FROM.fullmatch(value), value
    assert _mailboxes(value) == _parsed_mailboxes(value)


# Any text at all made of the characters that matter to the parser: where the fast path takes it, it agrees.
_tricky = st.text(alphabet="aZ09 \t.@<>\"'(),:;\\[]=?_-%+!\r\n", max_size=30)


@settings(max_examples=3000, deadline=None)
@given(_tricky)
@example("Sam Smith <a@b> <c@d>")
@example("=?utf-8?q?Sam?= <a@b>")
@example("Sam (comment) <a@b>")
@example("a@b, c@d")
@example("<@route:a@b>")
@example("Group: a@b;")
@example('"Sam\\" <a@b>')
def test_where_the_fast_path_reads_a_value_the_parser_reads_the_same(value: str) -> None:
    if _PLAIN_FROM.fullmatch(value):
        assert _mailboxes(value) == _parsed_mailboxes(value)


def test_what_the_fast_path_leaves_to_the_parser() -> None:
    for value in ("Sam Smith <a@b> <c@d>", "=?utf-8?q?Sam?= <a@b>", "Sam (comment) <a@b>", "a@b, c@d",
                  "Group: a@b;", "Sam.Smith <a@b>", "Sam\r\n Smith <a@b>", "<a@b>x"):
        assert not _PLAIN_FROM.fullmatch(value), value
    assert strict_sender(["a@b, c@d"]).problem is not None
    assert strict_sender(["Sam Smith <Sam.Smith@School.Example.org>"]).address == "sam.smith@school.example.org"
