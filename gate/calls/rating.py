"""The rate card and the exact integer arithmetic that turns call seconds into micros."""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.errors import ValidationFailed
from gate.money import ceil_div, parse_usd

SERVICES = ("voice", "ai_agent")
DIRECTIONS = ("outbound", "inbound", "any")
NUMBER_TYPES = ("local", "toll_free", "international", "any")
UNIT_NAMES = ("sms_segment", "mms", "fax_page", "chat_message", "number_rental_month")
# Services a plan's buckets may cover, and the unit a plan's allowance of each is written in
# (minutes for calls, kept in seconds in Redis so a call can use part of a minute).
PLAN_SERVICES = {
    "voice": "minutes",
    "ai_agent": "minutes",
    "sms": "segments",
    "mms": "messages",
    "fax": "pages",
    "chat": "messages",
}
_PLAN_NAME = re.compile(r"[a-z0-9_]{1,40}")
MAX_ALLOWANCE = 10**9  # units per cycle: far beyond any plan, far inside Lua's exact range

# What paid_seconds answers when money never runs out (a free rate). Far beyond any call's
# max_call_s, yet small enough to add to unix milliseconds without leaving Lua's exact range.
UNLIMITED_S = 10**9

# NANP toll-free area codes (a NANP number is +1 and ten digits); other countries' toll-free
# ranges are too irregular to guess from digits.
_NANP_TOLL_FREE = re.compile(r"\+1(800|888|877|866|855|844|833)[0-9]{7}")

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")
_INCREMENT = re.compile(r"([0-9]+)/([0-9]+)")
_COMPONENT = re.compile(r"[A-Za-z0-9_]{1,40}")


class RateCardError(Exception):
    """The rate card file is unreadable or wrong; the message names file, entry and field."""


class NoRate(LookupError):
    """No rate on the card prices this call or unit."""


def is_e164(s: str) -> bool:
    """True for a "+", a non-zero digit and 1 to 14 more digits, e.g. "+15551234567"."""
    return _E164.fullmatch(s) is not None


def classify_number(number: str) -> str | None:
    """Infer the number type that can be told from the digits alone: NANP toll-free, or None.

    "local" and "international" depend on where the workspace is, which the number cannot
    say, so the switch has to send those (the call's `number_type`).
    """
    if _NANP_TOLL_FREE.fullmatch(number):
        return "toll_free"
    return None


@dataclass(frozen=True, slots=True)
class Increment:
    """Billing increments: the first `first` seconds are billed whole, then blocks of `next`."""

    first: int
    next: int

    def __post_init__(self) -> None:
        if self.first <= 0 or self.next <= 0:
            raise ValueError(f"increment must be positive seconds, got {self.first}/{self.next}")

    @classmethod
    def parse(cls, text: str) -> Increment:
        """Read "60/6"; raise ValueError for anything else."""
        found = _INCREMENT.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} is not first/next seconds like '60/6'")
        return cls(int(found[1]), int(found[2]))

    def __str__(self) -> str:
        return f"{self.first}/{self.next}"


def billable_seconds(elapsed_s: int, inc: Increment) -> int:
    """Round elapsed talk time up to the increments: 0, then `first`, then steps of `next`."""
    if elapsed_s < 0:
        raise ValueError(f"elapsed_s must not be negative, got {elapsed_s}")
    if elapsed_s == 0:
        return 0
    if elapsed_s <= inc.first:
        return inc.first
    return inc.first + ceil_div(elapsed_s - inc.first, inc.next) * inc.next


def cost_micros(
    rate_per_min_micros: int,
    connect_fee_micros: int,
    inc: Increment,
    elapsed_s: int,
    *,
    covered_s: int = 0,
) -> int:
    """Price a call of `elapsed_s` seconds: connect fee + ceil(rate · billable / 60).

    A call of zero seconds (never answered, or hung up at once) costs nothing, connect fee
    included: the fee is for a connected call, and a failed attempt must never drain a wallet.
    Rounding goes up once per call, so the gate never bills less than the exact price and at
    most one micro more. `covered_s` billable seconds are a plan allowance's (lua/_plan.lua),
    not money; the connect fee is money always.
    """
    if elapsed_s == 0:
        return 0
    billable = billable_seconds(elapsed_s, inc)
    return connect_fee_micros + ceil_div(rate_per_min_micros * max(billable - covered_s, 0), 60)


def paid_seconds(
    rate_per_min_micros: int, connect_fee_micros: int, inc: Increment, budget_micros: int
) -> int:
    """The longest elapsed time t (whole seconds) with cost(t) ≤ budget, in O(1).

    Answers 0 when the budget does not cover the first increment and UNLIMITED_S when the
    money can never run out (a free rate whose connect fee fits the budget); every answer is
    capped at UNLIMITED_S.
    """
    if budget_micros < 0:
        return 0
    if rate_per_min_micros == 0:
        return UNLIMITED_S if connect_fee_micros <= budget_micros else 0
    # fee + ceil(rate·b/60) ≤ budget  ⇔  rate·b ≤ 60·(budget - fee), for integer b ≥ 0.
    spendable = budget_micros - connect_fee_micros
    if spendable < 0:
        return 0
    max_billable = spendable * 60 // rate_per_min_micros
    if max_billable < inc.first:
        return 0
    # Billable values are first + k·next; the largest that fits is itself an elapsed time
    # billed exactly at that value, and one second more bills the next block.
    steps = (max_billable - inc.first) // inc.next
    return min(inc.first + steps * inc.next, UNLIMITED_S)


@dataclass(frozen=True, slots=True)
class Rate:
    """One `[[rates]]` entry: where it applies and what a minute of it costs.

    `components` must not be mutated; per_min_micros is their sum, fixed at construction.
    """

    service: str
    direction: str
    prefix: str
    number_type: str
    components: dict[str, int] = field(hash=False)
    connect_fee_micros: int
    increment: Increment
    per_min_micros: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_min_micros", sum(self.components.values()))

    @property
    def increment_str(self) -> str:
        return str(self.increment)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes two entries the same slot on the card."""
        return (self.service, self.direction, self.prefix, self.number_type)

    def cost(self, elapsed_s: int) -> int:
        """cost_micros for a call of `elapsed_s` seconds at this rate."""
        return cost_micros(self.per_min_micros, self.connect_fee_micros, self.increment, elapsed_s)

    def paid_seconds(self, budget_micros: int) -> int:
        """paid_seconds for `budget_micros` at this rate."""
        return paid_seconds(
            self.per_min_micros, self.connect_fee_micros, self.increment, budget_micros
        )


# Per service: prefix → {(direction, number_type): rate}, and the prefix lengths present.
_Slots = dict[tuple[str, str], Rate]


@dataclass(frozen=True, slots=True)
class Commitment:
    """Money for a set of services, spent before universal credits, reset each cycle."""

    name: str
    micros: int
    services: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """A `[plans.<name>]` entry: allowances (bucket units: seconds for calls) and commitments."""

    name: str
    allowances: dict[str, int] = field(hash=False)
    commitments: tuple[Commitment, ...] = ()


class RateCard:
    """A validated rate card, indexed so that matching a call costs O(length of the number)."""

    def __init__(
        self,
        rates: tuple[Rate, ...],
        units: Mapping[str, int],
        *,
        currency: str = "USD",
        source: str = "<rate card>",
        number_types: Mapping[str, str] | None = None,
        plans: Mapping[str, Plan] | None = None,
        default_plan: str | None = None,
    ) -> None:
        self.rates = rates
        self.plans: dict[str, Plan] = dict(plans or {})
        self.default_plan = default_plan
        self.number_types: dict[str, str] = dict(number_types or {})
        self._type_lengths = tuple(sorted({len(p) for p in self.number_types}, reverse=True))
        self.units: dict[str, int] = dict(units)
        self.currency = currency
        self.source = source
        self._by_prefix: dict[str, dict[str, _Slots]] = {}
        self._lengths: dict[str, tuple[int, ...]] = {}
        for rate in rates:
            slots = self._by_prefix.setdefault(rate.service, {}).setdefault(rate.prefix, {})
            if (rate.direction, rate.number_type) in slots:
                raise ValueError(f"two rates for {rate.key}")
            slots[(rate.direction, rate.number_type)] = rate
        for service, prefixes in self._by_prefix.items():
            self._lengths[service] = tuple(sorted({len(p) for p in prefixes}, reverse=True))

    @classmethod
    def from_toml(cls, text: str, source: str = "rates.toml") -> RateCard:
        """Parse and validate card text; `source` names the file in every error message."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise RateCardError(f"{source}: not valid TOML: {err}") from err
        return _build(doc, source)

    def match(
        self, service: str, direction: str, number: str, number_type: str | None = None
    ) -> Rate:
        """The most specific rate for a call, or raise NoRate.

        Most specific means: the longest `prefix` that starts `number`, then the exact
        `direction` over "any", then the exact `number_type` over "any". `number` is the
        E.164 number the price depends on (the far end); it is not validated here, so an
        "anonymous" caller still finds the catch-all "" rate.

        When `number_type` is None it is inferred from `number` with classify_number; when
        that cannot tell (or "any" is passed), only rates with number_type "any" apply,
        because a "local" or "international" rate must not be guessed from digits. For an
        inbound call the type belongs to the dialled number, not the caller, so pass
        `classify_number(to)` (or the switch's `number_type`) explicitly.
        """
        if direction not in ("outbound", "inbound"):
            raise ValueError(f"direction must be 'outbound' or 'inbound', got {direction!r}")
        if number_type is None:
            number_type = classify_number(number)
        if number_type == "any":
            number_type = None
        if number_type is None:
            wanted = [(direction, "any"), ("any", "any")]
        else:
            wanted = [
                (direction, number_type),
                (direction, "any"),
                ("any", number_type),
                ("any", "any"),
            ]
        by_prefix = self._by_prefix.get(service, {})
        for length in self._lengths.get(service, ()):
            if length > len(number):
                continue
            slots = by_prefix.get(number[:length])
            if slots is None:
                continue
            for slot in wanted:
                rate = slots.get(slot)
                if rate is not None:
                    return rate
        raise NoRate(
            f"no {service} rate for {direction} calls to {number!r}"
            f" (number type {number_type or 'unknown'}) in {self.source}"
        )

    def number_type_of(self, number: str) -> str | None:
        """The type of a number as the card says (longest `[[number_types]]` prefix), else what
        the digits alone tell (NANP toll-free), else None ("any"). Gate's to decide, never the
        switch's: a switch calling a number "local" must not make it free."""
        for length in self._type_lengths:
            found = self.number_types.get(number[:length])
            if found is not None and length <= len(number):
                return found
        return classify_number(number)

    def unit_price(self, name: str) -> int:
        """Micros per unit of `name` (e.g. "sms_segment"), or raise NoRate."""
        try:
            return self.units[name]
        except KeyError:
            raise NoRate(f"no [units] price for {name!r} in {self.source}") from None


def load_rate_card(path: str | Path | None = None) -> RateCard:
    """Read the card at `path`, or the packaged default card when `path` is None."""
    if path is None:
        resource = importlib.resources.files("gate") / "default_rates.toml"
        return RateCard.from_toml(resource.read_text(encoding="utf-8"), "default_rates.toml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RateCardError(f"{path}: cannot read the rate card: {err}") from err
    return RateCard.from_toml(text, str(path))


# --- validation -------------------------------------------------------------------------

_TOP_KEYS = ("currency", "rates", "units", "number_types", "plans", "default_plan")
_PLAN_KEYS = ("description", "allowances", "commitments")
_COMMITMENT_KEYS = ("name", "amount", "services")
_COMMITMENT_EXAMPLE = 'a table like { name = "calling", amount = "50", services = ["voice"] }'
_TYPE_KEYS = ("prefix", "type")
_RATE_KEYS = (
    "service",
    "direction",
    "prefix",
    "number_type",
    "components",
    "connect_fee",
    "increment",
)


def _show(value: object) -> str:
    # Values as the user typed them in TOML (double-quoted strings, lower-case booleans).
    if isinstance(value, str | bool):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _choices(options: tuple[str, ...]) -> str:
    return ", ".join(_show(o) for o in options)


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise RateCardError(f"{where}unknown key {_show(key)}; allowed: {_choices(allowed)}")


def _table(
    entry: object, allowed: tuple[str, ...], source: str, where: str, what: str
) -> dict[str, Any]:
    """`entry` if it is a table of only `allowed` keys, else RateCardError naming `where`."""
    if not isinstance(entry, dict):
        raise RateCardError(f"{source}: {where}: must be {what}")
    _check_keys(entry, allowed, f"{source}: {where}: ")
    return entry


def _money(value: object, source: str, where: str) -> int:
    try:
        # parse_usd puts its `field` first in the message: "<where>: <value> has more ...".
        return parse_usd(value, f"{where}: {_show(value)}")
    except ValidationFailed as err:
        raise RateCardError(f"{source}: {err.message}") from err


def _one_of(value: object, options: tuple[str, ...], source: str, where: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise RateCardError(f"{source}: {where}: {_show(value)} is not one of {_choices(options)}")
    return value


def _rate(entry: object, source: str, where: str) -> Rate:
    if not isinstance(entry, dict):
        raise RateCardError(f"{source}: {where}: must be a [[rates]] table")
    _check_keys(entry, _RATE_KEYS, f"{source}: {where}: ")
    for required in ("service", "components", "increment"):
        if required not in entry:
            raise RateCardError(f"{source}: {where}: missing {required}; every rate needs one")

    service = _one_of(entry["service"], SERVICES, source, f"{where}.service")
    direction = _one_of(entry.get("direction", "any"), DIRECTIONS, source, f"{where}.direction")
    number_type = _one_of(
        entry.get("number_type", "any"), NUMBER_TYPES, source, f"{where}.number_type"
    )

    prefix = entry.get("prefix", "")
    if not isinstance(prefix, str) or not (prefix == "" or _PREFIX.fullmatch(prefix)):
        raise RateCardError(
            f'{source}: {where}.prefix: {_show(prefix)} is not "" or "+" followed by digits,'
            ' like "+44"'
        )

    raw_components = entry["components"]
    if not isinstance(raw_components, dict) or not raw_components:
        raise RateCardError(
            f"{source}: {where}.components: must be a table of USD per minute, like"
            ' { voice_base = "0.10", telephony = "0.05" }'
        )
    for name in raw_components:
        if not _COMPONENT.fullmatch(name):
            raise RateCardError(
                f"{source}: {where}.components: name {_show(name)} must be letters, digits "
                "and underscores, like voice_base"
            )
    components = {
        name: _money(value, source, f"{where}.components.{name}")
        for name, value in raw_components.items()
    }
    connect_fee = _money(entry.get("connect_fee", "0"), source, f"{where}.connect_fee")

    raw_increment = entry["increment"]
    try:
        if not isinstance(raw_increment, str):
            raise ValueError("not a string")
        increment = Increment.parse(raw_increment)
    except ValueError as err:
        raise RateCardError(
            f"{source}: {where}.increment: {_show(raw_increment)} is not first/next seconds like"
            ' "60/6" (both whole numbers above 0)'
        ) from err

    return Rate(service, direction, prefix, number_type, components, connect_fee, increment)


def _build(doc: dict[str, Any], source: str) -> RateCard:
    _check_keys(doc, _TOP_KEYS, f"{source}: ")

    currency = doc.get("currency", "USD")
    if currency != "USD":
        raise RateCardError(f'{source}: currency: {_show(currency)}; only "USD" is supported')

    entries = doc.get("rates", [])
    if not isinstance(entries, list):
        raise RateCardError(f"{source}: rates: must be [[rates]] tables, not {_show(entries)}")
    if not entries:
        raise RateCardError(
            f"{source}: rates: no [[rates]] entries; a card needs at least one, e.g. a"
            ' catch-all with prefix = ""'
        )
    rates: list[Rate] = []
    first_seen: dict[tuple[str, str, str, str], int] = {}
    for index, entry in enumerate(entries):
        where = f"rates[{index}]"
        rate = _rate(entry, source, where)
        earlier = first_seen.setdefault(rate.key, index)
        if earlier != index:
            raise RateCardError(
                f"{source}: {where}: same service, direction, prefix and number_type as"
                f" rates[{earlier}] ({rate.service}, {rate.direction}, {_show(rate.prefix)},"
                f" {rate.number_type}); merge them or delete one"
            )
        rates.append(rate)

    raw_units = doc.get("units", {})
    if not isinstance(raw_units, dict):
        raise RateCardError(f"{source}: units: must be a [units] table of USD per unit")
    _check_keys(raw_units, UNIT_NAMES, f"{source}: units: ")
    units = {name: _money(value, source, f"units.{name}") for name, value in raw_units.items()}

    raw_types = doc.get("number_types", [])
    if not isinstance(raw_types, list):
        raise RateCardError(f"{source}: number_types: must be [[number_types]] tables")
    number_types: dict[str, str] = {}
    for index, entry in enumerate(raw_types):
        where = f"number_types[{index}]"
        entry = _table(entry, _TYPE_KEYS, source, where, "a [[number_types]] table")
        prefix = entry.get("prefix")
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise RateCardError(
                f'{source}: {where}.prefix: {_show(prefix)} is not "+" followed by digits,'
                ' like "+1212"'
            )
        kind = _one_of(entry.get("type"), NUMBER_TYPES[:-1], source, f"{where}.type")
        if prefix in number_types:
            raise RateCardError(f"{source}: {where}: prefix {_show(prefix)} is listed twice")
        number_types[prefix] = kind

    plans = _plans(doc.get("plans", {}), source)
    default_plan = doc.get("default_plan")
    if default_plan is not None and default_plan not in plans:
        raise RateCardError(
            f"{source}: default_plan: {_show(default_plan)} is not a [plans.<name>] of this card;"
            f" plans: {_choices(tuple(plans)) or 'none'}"
        )
    return RateCard(
        tuple(rates),
        units,
        currency=currency,
        source=source,
        number_types=number_types,
        plans=plans,
        default_plan=default_plan,
    )


def _plans(raw: object, source: str) -> dict[str, Plan]:
    """`[plans.<name>]` tables: allowances per service, commitments scoped to services."""
    if not isinstance(raw, dict):
        raise RateCardError(f"{source}: plans: must be [plans.<name>] tables")
    services = tuple(PLAN_SERVICES)
    plans: dict[str, Plan] = {}
    for name, entry in raw.items():
        where = f"plans.{name}"
        if not _PLAN_NAME.fullmatch(name):
            raise RateCardError(
                f"{source}: {where}: a plan name is 1 to 40 lower-case letters, digits or _"
            )
        entry = _table(entry, _PLAN_KEYS, source, where, f"a [plans.{name}] table")
        raw_allowances = entry.get("allowances", {})
        if not isinstance(raw_allowances, dict):
            raise RateCardError(
                f"{source}: {where}.allowances: must be a table of units per cycle, like"
                " { ai_agent = 30, sms = 500 }"
            )
        allowances: dict[str, int] = {}
        for service, units in raw_allowances.items():
            _one_of(service, services, source, f"{where}.allowances")
            if (
                isinstance(units, bool)
                or not isinstance(units, int)
                or not (0 < units <= MAX_ALLOWANCE)
            ):
                raise RateCardError(
                    f"{source}: {where}.allowances.{service}: {_show(units)} is not a whole "
                    f"number of {PLAN_SERVICES[service]} from 1 to {MAX_ALLOWANCE}"
                )
            allowances[service] = units * 60 if PLAN_SERVICES[service] == "minutes" else units
        raw_commitments = entry.get("commitments", [])
        if not isinstance(raw_commitments, list):
            raise RateCardError(f"{source}: {where}.commitments: must be a list of tables")
        commitments: list[Commitment] = []
        covered: dict[str, str] = {}
        for index, item in enumerate(raw_commitments):
            at = f"{where}.commitments[{index}]"
            item = _table(item, _COMMITMENT_KEYS, source, at, _COMMITMENT_EXAMPLE)
            cname = item.get("name")
            if not isinstance(cname, str) or not _PLAN_NAME.fullmatch(cname):
                raise RateCardError(
                    f"{source}: {at}.name: {_show(cname)} must be 1 to 40 lower-case letters,"
                    " digits or _"
                )
            if any(c.name == cname for c in commitments):
                raise RateCardError(f"{source}: {at}.name: {_show(cname)} is used twice")
            micros = _money(item.get("amount"), source, f"{at}.amount")
            if micros <= 0:
                raise RateCardError(f"{source}: {at}.amount: must be above 0")
            scoped = item.get("services")
            if not isinstance(scoped, list) or not scoped:
                raise RateCardError(
                    f'{source}: {at}.services: must be a list of services, like ["voice"]'
                )
            for service in scoped:
                _one_of(service, services, source, f"{at}.services")
                if service in covered:
                    raise RateCardError(
                        f"{source}: {at}.services: {_show(service)} is covered by commitment "
                        f"{_show(covered[service])} already; a service draws from one "
                        "commitment per plan"
                    )
                covered[service] = cname
            commitments.append(Commitment(cname, micros, tuple(scoped)))
        plans[name] = Plan(name, allowances, tuple(commitments))
    return plans
