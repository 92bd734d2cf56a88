"""Money: strict parsing of USD inputs into integer micros, and exact rendering back."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.api.schemas import Topup
from gate.errors import ValidationFailed
from gate.money import MAX_MICROS, ceil_div, parse_usd, usd, usd_str


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (Decimal("10.5"), 10_500_000),
        (Decimal("0.000001"), 1),
        (Decimal("1E+2"), 100_000_000),  # a JSON number 1e2: an exponent that fits is fine
        (Decimal("1.500000000"), 1_500_000),  # trailing zeros are not places of value
        ("25.50", 25_500_000),
        (" 3.1 ", 3_100_000),
        (".5", 500_000),
        ("+7", 7_000_000),
        ("0", 0),
        ("-0", 0),
        ("0.000000", 0),
        (12, 12_000_000),
        (0, 0),
        (1.25, 1_250_000),  # Python callers only: repr() is exact for this one
        ("999999999.999999", MAX_MICROS - 1),
    ],
)
def test_parse_usd_accepts(value: object, micros: int) -> None:
    assert parse_usd(value, "amount_usd") == micros


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "decimal number"),
        (False, "decimal number"),
        (None, "decimal number"),
        ([1], "decimal number"),
        ({"usd": 1}, "decimal number"),
        (b"10", "decimal number"),
        ("", "decimal number"),
        ("ten", "decimal number"),
        ("0x10", "decimal number"),
        ("1_000", "decimal number"),  # Decimal() itself would take it
        ("\uff11\uff10", "decimal number"),  # full-width digits: Decimal() would take them too
        ("1,50", "decimal number"),
        ("NaN", "finite"),
        ("nan", "finite"),
        ("sNaN", "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
        ("inf", "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("-Infinity"), "finite"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("1e400", "out of range"),
        ("1e999999999999999999", "out of range"),  # beyond Decimal's own exponent limit
        (Decimal("1E+99999999999"), "out of range"),
        ("1000000000", "out of range"),
        ("-1000000000", "out of range"),
        (10**9, "out of range"),
        ("1.0000001", "more than 6 decimal places"),
        ("0.0000001", "more than 6 decimal places"),
        ("1e-7", "more than 6 decimal places"),
        ("1e-99999999999", "more than 6 decimal places"),
        # 34 places: Decimal arithmetic at 28 digits would have rounded this to 0.1
        (Decimal("0.1000000000000000000000000000000001"), "more than 6 decimal places"),
        ("1." + "0" * 6000 + "1", "more than 6 decimal places"),  # longer than int() takes
        ("-5", "must not be negative"),
        (-1, "must not be negative"),
        (Decimal("-0.000001"), "must not be negative"),
    ],
)
def test_parse_usd_rejects(value: object, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_usd(value, "amount_usd")
    assert message in caught.value.message
    assert caught.value.details == {"field": "amount_usd"}
    assert caught.value.status == 400


def test_negative_amounts_only_when_allowed() -> None:
    assert parse_usd("-2.5", "amount_usd", allow_negative=True) == -2_500_000
    assert parse_usd(Decimal("-999999999.999999"), "a", allow_negative=True) == -(MAX_MICROS - 1)
    with pytest.raises(ValidationFailed, match="out of range"):
        parse_usd("-1e9", "a", allow_negative=True)


def test_json_numbers_reach_parse_usd_exactly() -> None:
    """msgspec decodes JSON numbers into Decimal without a detour through float."""
    raw = b'{"amount_usd": 0.1000000000000000000000000000000001, "payment_method_id": "pm"}'
    body = msgspec.json.decode(raw, type=Topup)
    with pytest.raises(ValidationFailed, match="6 decimal places"):
        parse_usd(body.amount_usd, "amount_usd")
    exact = msgspec.json.decode(b'{"amount_usd": 0.29, "payment_method_id": "pm"}', type=Topup)
    assert parse_usd(exact.amount_usd, "amount_usd") == 290_000  # 0.29 is not a float here
    for bad in (b"true", b"[1]", b"null", b'"0x1"'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"amount_usd": %s, "payment_method_id": "pm"}' % bad, type=Topup)


@pytest.mark.parametrize(
    ("micros", "number", "text"),
    [
        (0, 0.0, "0.000000"),
        (1, 0.000001, "0.000001"),
        (-1, -0.000001, "-0.000001"),
        (-200_000, -0.2, "-0.200000"),
        (47_230_000, 47.23, "47.230000"),
        (123_456_789, 123.456789, "123.456789"),
        (MAX_MICROS - 1, 999999999.999999, "999999999.999999"),
    ],
)
def test_usd_and_usd_str(micros: int, number: float, text: str) -> None:
    assert usd(micros) == number
    assert isinstance(usd(micros), float)
    assert usd_str(micros) == text


def test_usd_is_the_nearest_double_of_the_decimal() -> None:
    # 0.1 + 0.2 style drift never shows: the number is the double nearest the exact decimal.
    assert usd(300_000) == 0.3
    assert usd(100_000) + usd(200_000) != 0.3  # float arithmetic drifts; usd() does not
    assert repr(usd(10_010_000)) == "10.01"


def test_ceil_div() -> None:
    assert ceil_div(0, 60) == 0
    assert ceil_div(1, 60) == 1
    assert ceil_div(60, 60) == 1
    assert ceil_div(61, 60) == 2


@given(st.integers(min_value=-(MAX_MICROS - 1), max_value=MAX_MICROS - 1))
def test_usd_str_round_trips(micros: int) -> None:
    assert parse_usd(usd_str(micros), "amount_usd", allow_negative=True) == micros


@given(st.integers(min_value=-(MAX_MICROS - 1), max_value=MAX_MICROS - 1))
def test_usd_number_round_trips_through_json(micros: int) -> None:
    """What GET /v1/wallet shows as a number parses back to the same micros."""
    shown = msgspec.json.encode({"amount_usd": usd(micros), "payment_method_id": "pm"})
    body = msgspec.json.decode(shown, type=Topup)
    assert parse_usd(body.amount_usd, "amount_usd", allow_negative=True) == micros
