"""Money as integer micros: strict parsing of USD inputs and exact rendering of outputs."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from gate.errors import ValidationFailed

MICROS_PER_USD = 1_000_000
_SIX_PLACES = Decimal("0.000001")
# Redis Lua numbers are doubles: every integer up to 2**53 is exact. Keep all money far below.
MAX_MICROS = 10**15  # one billion dollars


def parse_usd(value: object, field: str, *, allow_negative: bool = False) -> int:
    """Turn a JSON number or decimal string of USD into micros, or raise ValidationFailed.

    Rejects booleans, NaN, infinities, exponent tricks, more than 6 decimal places and
    magnitudes beyond MAX_MICROS, so a typo can never become money.
    """
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise ValidationFailed(f"{field} must be a decimal number of USD, like 10.50", field=field)
    if isinstance(value, float):
        # JSON numbers reach us as Decimal (msgspec decodes them exactly); a float only comes
        # from Python callers, where repr() is the shortest string that round-trips.
        value = repr(value)
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation as err:
        raise ValidationFailed(
            f"{field} must be a decimal number of USD, like 10.50", field=field
        ) from err
    if not amount.is_finite():
        raise ValidationFailed(f"{field} must be a finite amount", field=field)
    if abs(amount) >= Decimal(MAX_MICROS) / MICROS_PER_USD:
        raise ValidationFailed(f"{field} is out of range", field=field)
    scaled = amount.scaleb(6)
    if scaled != scaled.to_integral_value():
        raise ValidationFailed(f"{field} has more than 6 decimal places", field=field)
    micros = int(scaled)
    if micros < 0 and not allow_negative:
        raise ValidationFailed(f"{field} must not be negative", field=field)
    return micros


def usd(micros: int) -> float:
    """Render micros as a JSON number of USD (6 places, exact for every value we store)."""
    # micros / 1e6 is the nearest double to the 6-place decimal, which is what JSON shows.
    return float(Decimal(micros).scaleb(-6).quantize(_SIX_PLACES, rounding=ROUND_HALF_EVEN))


def usd_str(micros: int) -> str:
    """Render micros as a plain decimal string, for CSV and logs (e.g. "-0.200000")."""
    return str(Decimal(micros).scaleb(-6).quantize(_SIX_PLACES))


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for non-negative numerator and positive denominator."""
    return -(-numerator // denominator)
