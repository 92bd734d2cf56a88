"""SMS segment counting: GSM-7 and UCS-2 limits, extension characters, surrogate pairs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.calls.segments import GSM7_BASIC, GSM7_EXTENSION, sms_segments

# The GSM 03.38 default alphabet in code order, 0x00 to 0x7F, with ESC (0x1B) as "\x1b".
GSM7_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)


def test_alphabet_is_the_gsm_default_table() -> None:
    assert len(GSM7_TABLE) == 128
    assert set(GSM7_TABLE) - {"\x1b"} == GSM7_BASIC
    assert {"\f", "^", "{", "}", "\\", "[", "~", "]", "|", "€"} == GSM7_EXTENSION


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("gsm7", 1)),  # an empty message is still one message
        ("Hello", ("gsm7", 1)),
        ("a" * 160, ("gsm7", 1)),
        ("a" * 161, ("gsm7", 2)),
        ("a" * 306, ("gsm7", 2)),
        ("a" * 307, ("gsm7", 3)),
        ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà\r\n", ("gsm7", 1)),
        # Extension characters take two septets.
        ("€" * 80, ("gsm7", 1)),
        ("€" * 81, ("gsm7", 2)),
        ("a" * 159 + "^", ("gsm7", 2)),
        ("a" * 158 + "{", ("gsm7", 1)),
        ("\f" * 80, ("gsm7", 1)),
        # 152 septets + an escape pair: the pair moves whole to the second segment.
        ("a" * 152 + "[" + "a" * 10, ("gsm7", 2)),
        ("a" * 152 + "[" * 77, ("gsm7", 3)),  # 306 septets, but no pair may straddle
        # Any non-GSM character switches the whole text to UCS-2.
        ("ç", ("ucs2", 1)),  # lower-case c-cedilla is not in the table; Ç is
        ("a" * 159 + "—", ("ucs2", 3)),
        ("\t", ("ucs2", 1)),
        ("` backtick", ("ucs2", 1)),
        ("я" * 70, ("ucs2", 1)),
        ("я" * 71, ("ucs2", 2)),
        ("я" * 134, ("ucs2", 2)),
        ("я" * 135, ("ucs2", 3)),
        # An emoji outside the BMP is a surrogate pair: two UTF-16 units.
        ("😀" * 35, ("ucs2", 1)),
        ("😀" * 36, ("ucs2", 2)),
        ("😀" + "я" * 68, ("ucs2", 1)),
        ("😀" + "я" * 69, ("ucs2", 2)),
        # 66 units + a pair: the pair is not split, so it starts the second segment.
        ("я" * 66 + "😀" + "я" * 4, ("ucs2", 2)),
        ("я" * 66 + "😀" * 34, ("ucs2", 3)),  # 134 units, yet three segments
        ("€" * 35 + "😀", ("ucs2", 1)),  # in UCS-2 the euro sign is one unit
    ],
)
def test_sms_segments(text: str, expected: tuple[str, int]) -> None:
    assert sms_segments(text) == expected


gsm_single = st.sampled_from(sorted(GSM7_BASIC))


@given(st.text(gsm_single, max_size=1000))
def test_plain_gsm7_follows_the_formula(text: str) -> None:
    n = len(text)
    assert sms_segments(text) == ("gsm7", 1 if n <= 160 else math.ceil(n / 153))


@given(st.text(st.sampled_from("яж€ü"), max_size=500))
def test_bmp_ucs2_follows_the_formula(text: str) -> None:
    text = "я" + text
    n = len(text)
    assert sms_segments(text) == ("ucs2", 1 if n <= 70 else math.ceil(n / 67))


@given(st.text(max_size=600))
def test_segments_are_bounded_by_the_formula(text: str) -> None:
    encoding, count = sms_segments(text)
    if encoding == "gsm7":
        units, single, part = sum(2 if c in GSM7_EXTENSION else 1 for c in text), 160, 153
    else:
        units, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    if units <= single:
        assert count == 1
    else:
        # Keeping pairs whole wastes at most one unit per segment.
        assert math.ceil(units / part) <= count <= math.ceil(units / (part - 1))
