"""Money as integer micros: strict parsing of USD inputs and exact rendering of outputs."""

from __future__ import annotations

import re
from decimal import Decimal

from gate.errors import ValidationFailed

MICROS_PER_USD = 1_000_000
_SIX_PLACES = Decimal("0.000001")
# Redis Lua numbers are doubles: every integer up to 2**53 is exact. Keep all money far below.
MAX_MICROS = 10**15  # one billion dollars
_MAX_USD = Decimal(MAX_MICROS) / MICROS_PER_USD
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_SPECIAL = re.compile(r"^[+-]?(?:inf|infinity|s?nan[0-9]*)$", re.IGNORECASE)


def parse_usd(value: object, field: str, *, allow_negative: bool = False) -> int:
    """Turn a JSON number or decimal string of USD into micros, or raise ValidationFailed.

    Rejects booleans, NaN, infinities, exponent tricks, more than 6 decimal places and
    magnitudes beyond MAX_MICROS, so a typo can never become money. The arithmetic is exact
    integer arithmetic on the decimal digits: Decimal operations round to 28 digits, which
    would quietly turn 0.1000000000000000000000000000001 into 0.1.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise ValidationFailed(f"{field} must be a decimal number of USD, like 10.50", field=field)
    if isinstance(value, float):
        # JSON numbers reach us as Decimal (msgspec decodes them exactly); a float only comes
        # from Python callers, where repr() is the shortest string that round-trips.
        value = repr(value)
    if isinstance(value, str):
        # Strings (query parameters, settings) are plain ASCII decimals: no "1_000", no
        # non-ASCII digits, no hex; exponents are allowed and checked like any other number.
        if not _DECIMAL_TEXT.match(value.strip()):
            if _SPECIAL.match(value.strip()):
                raise ValidationFailed(f"{field} must be a finite amount", field=field)
            raise ValidationFailed(
                f"{field} must be a decimal number of USD, like 10.50", field=field
            )
        value = value.strip()
    try:
        amount = Decimal(value)
    except ArithmeticError as err:  # an exponent beyond Decimal's own limits: 1e99999999999999
        raise ValidationFailed(f"{field} is out of range", field=field) from err
    if not amount.is_finite():
        raise ValidationFailed(f"{field} must be a finite amount", field=field)
    # Exact comparison (Decimal compares without rounding), before any big power of ten.
    if amount.copy_abs() >= _MAX_USD:
        raise ValidationFailed(f"{field} is out of range", field=field)
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    significant = "".join(map(str, digits)).lstrip("0")
    if not significant:
        return 0
    stripped = significant.rstrip("0")  # 1.5000000 has six places, not seven
    exponent += len(significant) - len(stripped)
    if exponent < -6:
        raise ValidationFailed(f"{field} has more than 6 decimal places", field=field)
    # |amount| < 1e9 and exponent >= -6 leave at most 15 digits in all.
    micros = int(stripped + "0" * (exponent + 6)) * (-1 if sign else 1)
    if micros < 0 and not allow_negative:
        raise ValidationFailed(f"{field} must not be negative", field=field)
    return micros


def usd(micros: int) -> float:
    """Render micros as a JSON number of USD (6 places, exact for every value we store)."""
    # IEEE division is correctly rounded and both operands are exact (|micros| < 2**53), so
    # this is the double nearest the 6-place decimal: what float("47.230000") would give.
    return micros / MICROS_PER_USD


def usd_str(micros: int) -> str:
    """Render micros as a plain decimal string, for CSV and logs (e.g. "-0.200000")."""
    return str(Decimal(micros).scaleb(-6).quantize(_SIX_PLACES))


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for non-negative numerator and positive denominator."""
    return -(-numerator // denominator)
