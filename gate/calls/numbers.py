"""Phone numbers as switches send them, normalised to E.164 by one documented rule.

A SIP switch hands over what it has: a URI (`sip:+14155550123@pbx.example;user=phone`), a
URI user part, `tel:` URIs, numbers with or without `+`, with `00` in front, or with visual
separators. The rule, in order:

1. Drop a `sip:`, `sips:` or `tel:` scheme, then everything from the first `@` or `;`
   (host and URI parameters): what is left is the user part.
2. Drop the visual separators space, `-`, `.`, `(` and `)`.
3. `+` and digits: kept. `00` and digits: the `00` becomes `+`. Digits only: read as a full
   international number (country code first) and given a `+`. Gate never guesses a country
   for a national number: a switch that has them rewrites them first.
4. The result must be E.164 (`+`, a first digit 1-9, 2 to 15 digits in all); anything else
   is refused with the distinct code `invalid_number`.
"""

from __future__ import annotations

import re

from gate.errors import InvalidNumber

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_SCHEME = re.compile(r"^(?:sips?|tel):", re.IGNORECASE)
_SEPARATORS = str.maketrans("", "", " -.()")


def to_e164(raw: str, field: str) -> str:
    """The E.164 form of a number as a switch gives it; InvalidNumber when there is none."""
    user = _SCHEME.sub("", raw.strip(), count=1)
    user = re.split(r"[@;]", user, maxsplit=1)[0].translate(_SEPARATORS)
    if user.startswith("00"):
        user = "+" + user[2:]
    elif user[:1].isdigit():
        user = "+" + user
    if not E164.match(user):
        raise InvalidNumber(
            f"{field} {raw[:64]!r} is not a phone number Gate can read as E.164: send +<country "
            "code><number>, the same without +, with 00, or a sip:/tel: URI whose user part is "
            "one (national numbers are not guessed)",
            field=field,
        )
    return user
