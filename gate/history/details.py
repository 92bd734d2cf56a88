"""One ledger row as seed 001's transaction side panel shows it: the row, and the facts of its
service (a call's numbers, duration, location, rate and increment; a message's segments, rate
and delivery status; a fax's pages, rate and status; an AI agent's conversation and duration).

Only what Gate knows is shown; a fact the switch never sent is left out, not guessed.
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from phonenumbers import geocoder

from gate.history.ledger import Row
from gate.money import usd

# The number a row's location is read from: the far end of the call or message.
_FAR = {"outbound": "to", "inbound": "from"}
_MODES = {"voice": "Voice AI", "digital": "Digital AI"}
_PER = {"sms": "segment", "mms": "message", "chat": "message", "fax": "page"}


def location(number: str | None) -> str | None:
    """Where a number is, from its country calling code and prefix ("California, US")."""
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if not region or region == "001":  # unknown, or a non-geographic (global) number
        return None
    place = geocoder.description_for_number(parsed, "en")
    country = geocoder.country_name_for_number(parsed, "en") or region
    return f"{place}, {region}" if place and place != country else country


def of(row: Row) -> dict[str, Any]:
    """GET /v1/wallet/transactions/{id}: the row as listed, plus `details` for its service."""
    body = row.to_json()
    x = row.extra
    details: dict[str, Any] = {}
    far = x.get(_FAR.get(x.get("direction", ""), "to"))
    if row.type in ("call", "ai_agent"):
        details = {
            "call_id" if row.type == "call" else "conversation_id": row.reference,
            "mode": _MODES.get(x.get("ai_mode", "voice")) if row.type == "ai_agent" else None,
            "from": x.get("from"),
            "to": x.get("to"),
            "direction": x.get("direction"),
            "duration_s": body.get("duration_s"),
            "billable_s": body.get("billable_s"),
            "location": location(far),
            "rate_per_min_usd": body.get("rate_per_min_usd"),
            "billing_increment": _increment(x.get("increment")),
            "hangup_cause": x.get("hangup_cause") or None,
            "call_quality": f"{x['quality_mos']} MOS" if x.get("quality_mos") else None,
            "skills": x["skills"].split(",") if x.get("skills") else None,
            "actions": _int(x.get("actions")),
            "sessions": _int(x.get("sessions")),
        }
    elif row.type in _PER:
        unit = _PER[row.type]
        price = body.get("unit_price_micros")
        details = {
            ("fax_id" if row.type == "fax" else "message_id"): x.get("message_id") or row.reference,
            "from": x.get("from"),
            "to": x.get("to"),
            "direction": x.get("direction"),
            "location": location(far),
            ("pages" if row.type == "fax" else "segments"): body.get(
                "pages" if row.type == "fax" else "segments", body.get("messages")
            ),
            f"rate_per_{unit}_usd": usd(price) if isinstance(price, int) else None,
            ("status" if row.type == "fax" else "delivery_status"): x.get("status"),
        }
        if row.type == "fax":
            details["fax_line"] = x.get("from") if x.get("direction") == "outbound" else x.get("to")
    elif row.type == "number_rental":
        details = {"number": x.get("number"), "period": x.get("period")}
    elif row.type in ("recharge", "refund"):
        details = {"payment_id": row.reference, "payment_method_id": x.get("payment_method_id")}
    body["details"] = {k: v for k, v in details.items() if v is not None and v != ""}
    return body


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _increment(text: str | None) -> str | None:
    """ "60/6" (first interval / next ones, in seconds) as a person reads it: "60 s, then 6 s"."""
    if not text or "/" not in text:
        return None
    first, _, then = text.partition("/")
    return f"{first} s, then {then} s" if first != then else f"per {first} s"
