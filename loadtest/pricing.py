"""The harness's own reading of the rate card and of docs/design.md §2's price formula,
apart from gate."""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

# A card with connect fees and every kind of increment, so a run prices more than 60/6.
# `--rates mixed` writes it next to result.json and gives it to Gate as GATE_RATES.
MIXED_CARD = """\
# Load-test rate card: connect fees and every billing increment (written by loadtest).
currency = "USD"

[[rates]]
service = "voice"
direction = "any"
prefix = ""
number_type = "any"
components = { voice_base = "0.10", telephony = "0.05", recording = "0.05" }
connect_fee = "0"
increment = "60/6"

[[rates]]
service = "voice"
direction = "inbound"
prefix = ""
number_type = "toll_free"
components = { telephony = "0.02" }
connect_fee = "0.001"
increment = "6/6"

[[rates]]
service = "voice"
direction = "any"
prefix = ""
number_type = "local"
components = { voice_base = "0" }
connect_fee = "0"
increment = "60/60"

[[rates]]
service = "voice"
direction = "outbound"
prefix = "+44"
number_type = "any"
components = { voice_base = "0.10", telephony = "0.10", recording = "0.05" }
connect_fee = "0.015"
increment = "1/1"

[[rates]]
service = "voice"
direction = "outbound"
prefix = "+4420"
number_type = "any"
components = { voice_base = "0.10", telephony = "0.013333" }
connect_fee = "0"
increment = "30/6"

[[rates]]
service = "voice"
direction = "outbound"
prefix = "+91"
number_type = "any"
components = { voice_base = "0.10", telephony = "0.05" }
connect_fee = "0.005"
increment = "60/60"

[[rates]]
service = "ai_agent"
direction = "any"
prefix = ""
number_type = "any"
components = { ai_agent = "0.89" }
connect_fee = "0"
increment = "60/6"

[[rates]]
service = "ai_agent"
direction = "inbound"
prefix = "+44"
number_type = "any"
components = { ai_agent = "0.89", telephony = "0.011" }
connect_fee = "0.002"
increment = "1/1"
"""


class CardError(ValueError):
    """The rate card cannot be read the way the harness needs it."""


def micros(value: object) -> int:
    """USD (decimal string or number, at most 6 places) as integer micros, exactly."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CardError(f"{value!r} is not an amount of USD")
    scaled = Decimal(str(value)) * 1_000_000
    if scaled != scaled.to_integral_value():
        raise CardError(f"{value!r} has more than 6 decimal places")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class Price:
    """One rate entry as the harness prices calls with it."""

    service: str
    direction: str
    prefix: str
    number_type: str
    per_min: int  # micros per minute, the components summed
    fee: int  # connect fee, micros
    first: int  # billing increment, seconds
    next: int

    def billable(self, seconds: int) -> int:
        """0 for 0, `first` up to `first`, then `first` plus whole blocks of `next`."""
        if seconds <= 0:
            return 0
        if seconds <= self.first:
            return self.first
        blocks = (seconds - self.first + self.next - 1) // self.next
        return self.first + blocks * self.next

    def cost(self, seconds: int, covered: int = 0) -> int:
        """Connect fee + ceil(rate · billable / 60) micros; a zero-second call costs nothing.
        A plan allowance covering `covered` billable seconds takes them off the minutes."""
        billable = self.billable(seconds)
        if billable == 0:
            return 0
        return self.fee + (self.per_min * max(billable - covered, 0) + 59) // 60

    @property
    def increment(self) -> str:
        return f"{self.first}/{self.next}"


class Card:
    """The `[[rates]]` of a rate card file and the most-specific-rate rule of docs/design.md §2."""

    def __init__(self, prices: list[Price], source: str, sms_segment: int = 0) -> None:
        self.prices = prices
        self.source = source
        self.sms_segment = sms_segment  # micros per SMS segment ([units] sms_segment)

    @classmethod
    def load(cls, path: str | Path | None) -> Card:
        """Read the card at `path`, or the one Gate ships when `path` is None."""
        if path is None:
            resource = importlib.resources.files("gate") / "default_rates.toml"
            return cls.parse(resource.read_text(encoding="utf-8"), "gate/default_rates.toml")
        return cls.parse(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<card>") -> Card:
        doc: dict[str, Any] = tomllib.loads(text)
        prices = []
        for i, entry in enumerate(doc.get("rates", [])):
            try:
                first, nxt = (int(p) for p in str(entry["increment"]).split("/"))
                prices.append(
                    Price(
                        service=entry["service"],
                        direction=entry.get("direction", "any"),
                        prefix=entry.get("prefix", ""),
                        number_type=entry.get("number_type", "any"),
                        per_min=sum(micros(v) for v in entry["components"].values()),
                        fee=micros(entry.get("connect_fee", "0")),
                        first=first,
                        next=nxt,
                    )
                )
            except (KeyError, ValueError, TypeError, AttributeError) as err:
                raise CardError(f"{source}: rates[{i}]: {err!r}") from err
        if not prices:
            raise CardError(f"{source}: no [[rates]]")
        sms = micros(doc.get("units", {}).get("sms_segment", "0"))
        return cls(prices, source, sms)

    def match(self, service: str, direction: str, number: str, number_type: str | None) -> Price:
        """The longest prefix of `number`, then exact direction, then exact number type.

        Without a number type only rates for "any" number type apply (the harness always
        names the type of the numbers it dials when it matters, so it never has to guess).
        """
        best: tuple[int, int, int] | None = None
        found: Price | None = None
        for p in self.prices:
            if p.service != service or not number.startswith(p.prefix):
                continue
            if p.direction not in (direction, "any"):
                continue
            if p.number_type != "any" and p.number_type != number_type:
                continue
            rank = (len(p.prefix), p.direction == direction, p.number_type != "any")
            if best is None or rank > best:
                best, found = rank, p
        if found is None:
            raise CardError(f"{self.source}: no {service} {direction} rate for {number}")
        return found

    def for_call(
        self, service: str, direction: str, from_: str, to: str, number_type: str | None
    ) -> Price:
        """The price of a call: the far end is the dialled number outbound, the caller inbound."""
        far_end = to if direction == "outbound" else from_
        return self.match(service, direction, far_end, number_type)


def gsm_segments(text: str) -> int:
    """SMS segments of a text of the GSM-7 basic characters the harness sends: 160 in one,
    153 a part when split (the harness never sends extension or non-GSM characters)."""
    return 1 if len(text) <= 160 else -(-len(text) // 153)
