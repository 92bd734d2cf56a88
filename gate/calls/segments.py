"""Count the SMS segments a text is sent (and billed) as, in GSM-7 or UCS-2 encoding."""

from __future__ import annotations

from typing import Literal

# GSM 03.38 default alphabet (3GPP TS 23.038), without ESC, which only introduces the
# extension table below.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension-table characters travel as ESC + code: two septets each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153  # septets; a split message loses 7 to its UDH header
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units


def sms_segments(text: str) -> tuple[Literal["gsm7", "ucs2"], int]:
    """The encoding a text needs and how many segments it takes.

    GSM-7 when every character is in the default alphabet or its extension table, else
    UCS-2 (UTF-16; an emoji is a surrogate pair, two units). A text that fits one segment
    (160 septets / 70 units) is one; a longer one is packed 153 / 67 per segment the way
    handsets and carriers pack it: an escape pair or a surrogate pair is never split across
    two segments, so a two-unit character at a boundary starts the next segment. That is
    ceil(n / 153) (or 67) except at those boundaries, where it is one more, as billed.

    The empty text counts as one segment: an empty message is still one message sent.
    """
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        widths = [2 if c in GSM7_EXTENSION else 1 for c in text]
        return "gsm7", _pack(widths, GSM7_SINGLE, GSM7_PART)
    widths = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return "ucs2", _pack(widths, UCS2_SINGLE, UCS2_PART)


def _pack(widths: list[int], single: int, part: int) -> int:
    if sum(widths) <= single:
        return 1
    segments, used = 1, 0
    for width in widths:
        if used + width > part:
            segments, used = segments + 1, 0
        used += width
    return segments
