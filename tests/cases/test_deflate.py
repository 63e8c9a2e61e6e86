"""cases/deflate: what is stored inflates to what was given, whichever window deflated it."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from escalations.cases import deflate as stored

DEMO = Path(__file__).resolve().parents[2] / "escalations" / "demo"


@pytest.mark.parametrize("value", [b"", b"x", (DEMO / "sutton.eml").read_bytes(), b"Subject: a\r\n" * 341,
                                   os.urandom(stored.SMALL), os.urandom(stored.SMALL + 1),
                                   (DEMO / "havering.eml").read_bytes() * 40])
def test_round_trip(value: bytes) -> None:
    assert stored.inflate(stored.deflate(value)) == value


def test_a_small_value_takes_the_small_window_and_a_large_one_the_default() -> None:
    mail = (DEMO / "city-and-hackney.eml").read_bytes()
    assert len(mail) <= stored.SMALL
    # the zlib header's first byte: CINFO (log2 of the window, minus 8) in its high four bits
    assert stored.deflate(mail)[2] >> 4 == 13 - 8
    assert stored.deflate(mail * 10)[2] >> 4 == 15 - 8


def test_the_small_window_loses_nothing_on_a_mail() -> None:
    mail = (DEMO / "city-and-hackney.eml").read_bytes()
    default = zlib.compressobj(6, zdict=stored._DICT_V1)
    assert len(stored.deflate(mail)) - len(stored._V1) <= len(default.compress(mail) + default.flush())


def test_rows_written_before_the_small_window_still_inflate() -> None:
    """Values stored by earlier releases: the default window with the dictionary, plain deflate, raw."""
    mail = (DEMO / "wiltshire.eml").read_bytes()
    old = zlib.compressobj(6, zdict=stored._DICT_V1)
    assert stored.inflate(stored._V1 + old.compress(mail) + old.flush()) == mail
    assert stored.inflate(stored._PLAIN + zlib.compress(mail)) == mail
    assert stored.inflate(mail) == mail
