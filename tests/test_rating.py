"""Rating: increments, exact costs, paid time, rate-card loading, validation and matching."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.calls.rating import (
    UNLIMITED_S,
    Increment,
    NoRate,
    Rate,
    RateCard,
    RateCardError,
    billable_seconds,
    classify_number,
    cost_micros,
    is_e164,
    load_rate_card,
    paid_seconds,
)

increments = st.builds(Increment, st.integers(1, 120), st.integers(1, 120))


# --- increments and billable seconds ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "first", "next_"), [("60/60", 60, 60), ("60/6", 60, 6), ("6/6", 6, 6), ("1/1", 1, 1)]
)
def test_increment_parses(text: str, first: int, next_: int) -> None:
    inc = Increment.parse(text)
    assert (inc.first, inc.next) == (first, next_)
    assert str(inc) == text


@pytest.mark.parametrize(
    "text", ["60/0", "0/6", "60", "60/", "/6", "a/b", "60/6/6", " 60/6", "-1/6"]
)
def test_increment_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Increment.parse(text)


def test_increment_rejects_non_positive_fields() -> None:
    with pytest.raises(ValueError):
        Increment(60, 0)


@pytest.mark.parametrize(
    ("inc", "elapsed", "billable"),
    [
        ("60/60", 0, 0),
        ("60/60", 1, 60),
        ("60/60", 60, 60),
        ("60/60", 61, 120),
        ("60/6", 1, 60),
        ("60/6", 60, 60),
        ("60/6", 61, 66),
        ("60/6", 66, 66),
        ("60/6", 67, 72),
        ("6/6", 1, 6),
        ("6/6", 7, 12),
        ("1/1", 0, 0),
        ("1/1", 1, 1),
        ("1/1", 3599, 3599),
    ],
)
def test_billable_seconds_table(inc: str, elapsed: int, billable: int) -> None:
    assert billable_seconds(elapsed, Increment.parse(inc)) == billable


def test_billable_seconds_rejects_negative() -> None:
    with pytest.raises(ValueError):
        billable_seconds(-1, Increment(60, 6))


@given(st.integers(1, 100_000), increments)
def test_billable_seconds_covers_aligned_and_minimal(t: int, inc: Increment) -> None:
    b = billable_seconds(t, inc)
    assert b >= t
    assert b >= inc.first
    assert (b - inc.first) % inc.next == 0
    # Minimal: the next smaller billable value would not cover t.
    if b > inc.first:
        assert b - inc.next < t


# --- cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inc", "rate", "fee", "elapsed", "cost"),
    [
        # 60/60: a second into the call buys the whole first minute, then whole minutes.
        ("60/60", 200_000, 10_000, 1, 210_000),
        ("60/60", 200_000, 10_000, 60, 210_000),
        ("60/60", 200_000, 10_000, 61, 410_000),
        # 60/6: first minute whole, then 6-second blocks (66 s = 1.1 min).
        ("60/6", 200_000, 0, 30, 200_000),
        ("60/6", 200_000, 0, 61, 220_000),
        ("60/6", 200_000, 5_000, 67, 245_000),
        # 6/6: 7 s bills 12 s = 0.2 min; 890000 · 12 / 60 = 178000 exactly.
        ("6/6", 890_000, 0, 7, 178_000),
        ("6/6", 890_000, 1_000, 1, 90_000),
        # 1/1: per second; 890000 · 7 / 60 = 103833.33… rounds up to 103834.
        ("1/1", 890_000, 0, 7, 103_834),
        ("1/1", 7, 0, 1, 1),
        ("1/1", 7, 0, 61, 8),
        ("1/1", 7, 20_000, 61, 20_008),
        # Zero seconds costs nothing, connect fee included.
        ("60/60", 200_000, 10_000, 0, 0),
        ("1/1", 890_000, 50_000, 0, 0),
        # A free rate with a connect fee costs the fee.
        ("60/6", 0, 15_000, 3600, 15_000),
    ],
)
def test_cost_exact(inc: str, rate: int, fee: int, elapsed: int, cost: int) -> None:
    assert cost_micros(rate, fee, Increment.parse(inc), elapsed) == cost


@given(st.integers(0, 10_000_000), st.integers(0, 1_000_000), increments, st.integers(0, 50_000))
def test_cost_never_undercharges_and_overcharges_below_one_micro(
    rate: int, fee: int, inc: Increment, t: int
) -> None:
    cost = cost_micros(rate, fee, inc, t)
    if t == 0:
        assert cost == 0
        return
    exact = fee + Fraction(rate * billable_seconds(t, inc), 60)
    assert exact <= cost < exact + 1


@given(st.integers(0, 1_000_000), st.integers(0, 100_000), increments, st.integers(0, 20_000))
def test_cost_is_monotonic(rate: int, fee: int, inc: Increment, t: int) -> None:
    assert cost_micros(rate, fee, inc, t) <= cost_micros(rate, fee, inc, t + 1)


# --- paid seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inc", "rate", "fee", "budget", "paid"),
    [
        ("60/6", 200_000, 0, 200_000, 60),  # exactly the buffer: one minute
        ("60/6", 200_000, 0, 199_999, 0),  # a micro short of the first increment
        ("60/6", 200_000, 0, 219_999, 60),
        ("60/6", 200_000, 0, 220_000, 66),
        ("60/60", 200_000, 0, 399_999, 60),
        ("60/60", 200_000, 10_000, 410_000, 120),
        ("1/1", 890_000, 0, 103_834, 7),
        ("1/1", 890_000, 0, 103_833, 6),
        ("6/6", 100_000, 50_000, 49_999, 0),  # not even the connect fee
        ("60/6", 200_000, 0, 0, 0),
        ("60/6", 200_000, 0, -5, 0),
        ("60/6", 0, 0, 0, UNLIMITED_S),  # free local call
        ("60/6", 0, 0, -1, 0),
        ("60/6", 0, 10_000, 10_000, UNLIMITED_S),
        ("60/6", 0, 10_000, 9_999, 0),
        ("1/1", 1, 0, 10**15, UNLIMITED_S),  # capped
    ],
)
def test_paid_seconds_table(inc: str, rate: int, fee: int, budget: int, paid: int) -> None:
    assert paid_seconds(rate, fee, Increment.parse(inc), budget) == paid


@given(st.integers(0, 5_000_000), st.integers(0, 200_000), increments, st.integers(0, 20_000_000))
def test_paid_seconds_is_the_largest_affordable_time(
    rate: int, fee: int, inc: Increment, budget: int
) -> None:
    paid = paid_seconds(rate, fee, inc, budget)
    assert cost_micros(rate, fee, inc, paid) <= budget
    if paid < UNLIMITED_S:
        # cost is monotonic, so one second more being too dear means every longer time is.
        assert cost_micros(rate, fee, inc, paid + 1) > budget


@given(
    st.integers(1_000, 2_000_000),
    st.integers(0, 5_000),
    st.builds(Increment, st.integers(1, 61), st.integers(1, 61)),
    st.integers(0, 40_000),
)
def test_paid_seconds_matches_brute_force(rate: int, fee: int, inc: Increment, budget: int) -> None:
    t = 0
    while cost_micros(rate, fee, inc, t + 1) <= budget:
        t += 1
    assert paid_seconds(rate, fee, inc, budget) == t


# --- Rate -----------------------------------------------------------------------------------


def test_rate_sums_components_and_prices() -> None:
    rate = Rate(
        "voice",
        "outbound",
        "+1",
        "any",
        {"voice_base": 100_000, "telephony": 50_000, "recording": 50_000},
        10_000,
        Increment(60, 6),
    )
    assert rate.per_min_micros == 200_000
    assert rate.increment_str == "60/6"
    assert rate.cost(0) == 0
    assert rate.cost(61) == 230_000
    assert rate.paid_seconds(230_000) == 66
    assert hash(rate) == hash(rate)


# --- matching -------------------------------------------------------------------------------

CARD = """
currency = "USD"

[[rates]]  # 0: catch-all
service = "voice"
components = { base = "0.20" }
increment = "60/6"

[[rates]]  # 1
service = "voice"
prefix = "+1"
components = { base = "0.10" }
increment = "60/6"

[[rates]]  # 2
service = "voice"
direction = "inbound"
prefix = "+1"
components = { base = "0.09" }
increment = "60/6"

[[rates]]  # 3
service = "voice"
prefix = "+1"
number_type = "toll_free"
components = { base = "0.03" }
increment = "60/6"

[[rates]]  # 4
service = "voice"
direction = "inbound"
prefix = "+1"
number_type = "toll_free"
components = { base = "0.02" }
increment = "60/6"

[[rates]]  # 5
service = "voice"
direction = "outbound"
prefix = "+4420"
components = { base = "0.30" }
increment = "1/1"

[[rates]]  # 6: only inbound, so outbound calls to +44 fall back to the catch-all
service = "voice"
direction = "inbound"
prefix = "+44"
components = { base = "0.05" }
increment = "1/1"

[[rates]]  # 7
service = "voice"
number_type = "local"
components = { base = "0" }
increment = "60/60"

[[rates]]  # 8: direction beats number type
service = "voice"
direction = "outbound"
prefix = "+33"
components = { base = "0.40" }
increment = "60/60"

[[rates]]  # 9
service = "voice"
prefix = "+33"
number_type = "international"
components = { base = "0.50" }
increment = "60/60"

[[rates]]  # 10
service = "ai_agent"
prefix = "+1"
components = { agent = "0.89" }
increment = "60/6"
"""


@pytest.fixture(scope="module")
def card() -> RateCard:
    return RateCard.from_toml(CARD)


def _index(card: RateCard, rate: Rate) -> int:
    return card.rates.index(rate)


@pytest.mark.parametrize(
    ("service", "direction", "number", "number_type", "expected"),
    [
        ("voice", "outbound", "+15551234567", None, 1),  # longest prefix +1
        ("voice", "inbound", "+15551234567", None, 2),  # exact direction beats "any"
        ("voice", "outbound", "+18005551234", None, 3),  # toll-free inferred from the digits
        ("voice", "inbound", "+18005551234", None, 4),  # both exact
        ("voice", "inbound", "+15551234567", "toll_free", 4),  # told, not inferred
        ("voice", "outbound", "+18005551234", "any", 1),  # "any" means: do not specialise
        ("voice", "outbound", "+442071234567", None, 5),  # +4420 is longer than +44
        ("voice", "outbound", "+441611234567", None, 0),  # +44 is inbound only
        ("voice", "inbound", "+441611234567", None, 6),
        ("voice", "outbound", "+4915112345678", None, 0),  # nothing but the catch-all
        ("voice", "outbound", "+4915112345678", "local", 7),
        ("voice", "outbound", "+15551234567", "local", 1),  # longer prefix beats number type
        ("voice", "outbound", "+33612345678", "international", 8),  # direction beats type
        ("voice", "inbound", "+33612345678", "international", 9),
        ("voice", "inbound", "anonymous", None, 0),  # no caller id still prices the call
        ("voice", "outbound", "+4", None, 0),  # a number shorter than some prefixes
        ("ai_agent", "inbound", "+15551234567", None, 10),
    ],
)
def test_match_most_specific(
    card: RateCard,
    service: str,
    direction: str,
    number: str,
    number_type: str | None,
    expected: int,
) -> None:
    assert _index(card, card.match(service, direction, number, number_type)) == expected


def test_match_without_a_rate_raises_no_rate(card: RateCard) -> None:
    with pytest.raises(NoRate, match="no ai_agent rate for outbound calls to '\\+4420"):
        card.match("ai_agent", "outbound", "+442071234567")
    with pytest.raises(NoRate):
        card.match("fax", "outbound", "+15551234567")


def test_match_rejects_unknown_direction(card: RateCard) -> None:
    with pytest.raises(ValueError):
        card.match("voice", "any", "+15551234567")


def test_classify_and_e164() -> None:
    for prefix in ("800", "888", "877", "866", "855", "844", "833"):
        assert classify_number(f"+1{prefix}5551234") == "toll_free"
    assert classify_number("+15551234567") is None
    assert classify_number("+448001234567") is None
    assert classify_number("+1800") is None  # not a whole number
    assert classify_number("+180055512345") is None  # NANP numbers have ten digits after +1
    assert classify_number("+1800555123x") is None
    assert classify_number("+1800555123\u0663") is None  # a non-ASCII digit
    assert is_e164("+15551234567")
    assert is_e164("+12")
    assert not is_e164("+1")
    assert not is_e164("15551234567")
    assert not is_e164("+05551234567")
    assert not is_e164("+1555123456789012")
    assert not is_e164("+1555 1234")
    assert not is_e164("+15551234567\n")


# --- the default card -----------------------------------------------------------------------


def test_default_card_loads_and_prices() -> None:
    card = load_rate_card(None)
    assert card.currency == "USD"
    voice = card.match("voice", "outbound", "+15551234567")
    assert voice.per_min_micros == 200_000
    assert voice.components == {"voice_base": 100_000, "telephony": 50_000, "recording": 50_000}
    assert voice.increment_str == "60/6"
    assert voice.cost(60) == 200_000
    assert card.match("voice", "inbound", "+15551234567", "toll_free").per_min_micros == 20_000
    assert card.match("voice", "inbound", "+18005551234").per_min_micros == 20_000
    assert card.match("voice", "outbound", "+15551234567", "local").per_min_micros == 0
    assert card.match("voice", "outbound", "+447911123456").per_min_micros == 250_000
    assert card.match("voice", "outbound", "+919812345678").per_min_micros == 150_000
    assert card.match("ai_agent", "inbound", "+15551234567").per_min_micros == 890_000
    assert card.units == {
        "sms_segment": 7_900,
        "mms": 20_000,
        "fax_page": 70_000,
        "chat_message": 10_000,
        "number_rental_month": 1_150_000,
    }
    assert card.unit_price("sms_segment") == 7_900


def test_load_from_path_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rates.toml"
    path.write_text(CARD, encoding="utf-8")
    assert load_rate_card(path).source == str(path)
    assert len(load_rate_card(str(path)).rates) == 11

    path.write_text(CARD.replace('increment = "1/1"', 'increment = "60/0"', 1), encoding="utf-8")
    with pytest.raises(RateCardError) as info:
        load_rate_card(path)
    assert str(info.value) == (
        f'{path}: rates[5].increment: "60/0" is not first/next seconds like "60/6"'
        " (both whole numbers above 0)"
    )


def test_load_missing_or_undecodable_file(tmp_path: Path) -> None:
    with pytest.raises(RateCardError, match="cannot read the rate card"):
        load_rate_card(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'currency = "\xe9"\n')
    with pytest.raises(RateCardError, match="cannot read the rate card"):
        load_rate_card(bad)


def test_unit_price_missing() -> None:
    card = RateCard.from_toml(
        '[[rates]]\nservice = "voice"\ncomponents = {a = "0"}\nincrement = "1/1"\n'
    )
    assert card.units == {}
    with pytest.raises(NoRate, match="no \\[units\\] price for 'fax_page'"):
        card.unit_price("fax_page")


# --- every validation error -----------------------------------------------------------------

GOOD_RATE = """
service = "voice"
direction = "outbound"
prefix = "+44"
number_type = "any"
components = { base = "0.10" }
connect_fee = "0"
increment = "60/6"
"""


def _card_with(rate_text: str, extra: str = "") -> str:
    return f'currency = "USD"\n{extra}\n[[rates]]\n{GOOD_RATE}\n[[rates]]\n{rate_text}\n'


def _rate(**changes: str) -> str:
    """GOOD_RATE with some keys changed (value as TOML text) or dropped (value "")."""
    kept = {}
    for line in GOOD_RATE.strip().splitlines():
        key, _, value = line.partition(" = ")
        kept[key] = value
    kept["prefix"] = '"+33"'  # so the second rate is not a duplicate of the first
    for key, value in changes.items():
        if value:
            kept[key] = value
        else:
            kept.pop(key, None)
    return "\n".join(f"{k} = {v}" for k, v in kept.items())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("currency = ", "rates.toml: not valid TOML: "),
        ('currency = "EUR"\n', 'rates.toml: currency: "EUR"; only "USD" is supported'),
        (
            'curency = "USD"\n',
            'rates.toml: unknown key "curency"; allowed: "currency", "rates", "units"',
        ),
        ('currency = "USD"\n', "rates.toml: rates: no [[rates]] entries"),
        ('rates = "voice"\n', "rates.toml: rates: must be [[rates]] tables"),
        ("rates = [1]\n", "rates.toml: rates[0]: must be a [[rates]] table"),
        (_card_with(_rate(price='"0.1"')), 'rates.toml: rates[1]: unknown key "price"; allowed:'),
        (_card_with(_rate(service="")), "rates.toml: rates[1]: missing service"),
        (_card_with(_rate(components="")), "rates.toml: rates[1]: missing components"),
        (_card_with(_rate(increment="")), "rates.toml: rates[1]: missing increment"),
        (
            _card_with(_rate(service='"sms"')),
            'rates.toml: rates[1].service: "sms" is not one of "voice", "ai_agent"',
        ),
        (
            _card_with(_rate(direction='"both"')),
            'rates.toml: rates[1].direction: "both" is not one of "outbound", "inbound", "any"',
        ),
        (
            _card_with(_rate(number_type='"mobile"')),
            'rates.toml: rates[1].number_type: "mobile" is not one of "local", "toll_free",',
        ),
        (
            _card_with(_rate(prefix='"44"')),
            'rates.toml: rates[1].prefix: "44" is not "" or "+" followed by digits, like "+44"',
        ),
        (_card_with(_rate(prefix='"+"')), 'rates.toml: rates[1].prefix: "+" is not'),
        (_card_with(_rate(prefix='"+0"')), 'rates.toml: rates[1].prefix: "+0" is not'),
        (_card_with(_rate(prefix='"+4 4"')), 'rates.toml: rates[1].prefix: "+4 4" is not'),
        (_card_with(_rate(prefix="44")), "rates.toml: rates[1].prefix: 44 is not"),
        (
            _card_with(_rate(components="{}")),
            "rates.toml: rates[1].components: must be a table of USD per minute",
        ),
        (
            _card_with(_rate(components='"0.10"')),
            "rates.toml: rates[1].components: must be a table of USD per minute",
        ),
        (
            _card_with(_rate(components='{ base = "ten" }')),
            'rates.toml: rates[1].components.base: "ten" must be a decimal number of USD',
        ),
        (
            _card_with(_rate(components='{ base = "-0.10" }')),
            'rates.toml: rates[1].components.base: "-0.10" must not be negative',
        ),
        (
            _card_with(_rate(components='{ base = "0.1234567" }')),
            'rates.toml: rates[1].components.base: "0.1234567" has more than 6 decimal places',
        ),
        (
            _card_with(_rate(components='{ base = "NaN" }')),
            'rates.toml: rates[1].components.base: "NaN" must be a finite amount',
        ),
        (
            _card_with(_rate(components='{ base = "1e12" }')),
            'rates.toml: rates[1].components.base: "1e12" is out of range',
        ),
        (
            _card_with(_rate(components="{ base = true }")),
            "rates.toml: rates[1].components.base: true must be a decimal number of USD",
        ),
        (
            _card_with(_rate(connect_fee='"0.01.0"')),
            'rates.toml: rates[1].connect_fee: "0.01.0" must be a decimal number of USD',
        ),
        (
            _card_with(_rate(increment='"60/0"')),
            'rates.toml: rates[1].increment: "60/0" is not first/next seconds like "60/6"',
        ),
        (_card_with(_rate(increment='"0/6"')), 'rates.toml: rates[1].increment: "0/6" is not'),
        (_card_with(_rate(increment='"60"')), 'rates.toml: rates[1].increment: "60" is not'),
        (_card_with(_rate(increment="60")), "rates.toml: rates[1].increment: 60 is not"),
        (
            _card_with(_rate(prefix='"+44"')),
            "rates.toml: rates[1]: same service, direction, prefix and number_type as rates[0]"
            ' (voice, outbound, "+44", any); merge them or delete one',
        ),
        (
            _card_with(_rate(), extra='units = "0.01"'),
            "rates.toml: units: must be a [units] table of USD per unit",
        ),
        (
            _card_with(_rate()) + '[units]\nsms = "0.01"\n',
            'rates.toml: units: unknown key "sms"; allowed: "sms_segment", "mms",',
        ),
        (
            _card_with(_rate()) + '[units]\nmms = "-1"\n',
            'rates.toml: units.mms: "-1" must not be negative',
        ),
    ],
)
def test_rate_card_errors(text: str, message: str) -> None:
    with pytest.raises(RateCardError) as info:
        RateCard.from_toml(text)
    assert str(info.value).startswith(message)


def test_the_error_fixtures_are_otherwise_valid() -> None:
    card = RateCard.from_toml(_card_with(_rate()) + "[units]\nmms = 0.02\nfax_page = 1\n")
    assert [r.prefix for r in card.rates] == ["+44", "+33"]
    # TOML numbers work too; floats go through their shortest repr, so 0.02 stays exact.
    assert card.units == {"mms": 20_000, "fax_page": 1_000_000}


TYPED = """
[[number_types]]
prefix = "+1212"
type = "local"
[[number_types]]
prefix = "+12125"
type = "international"
[[rates]]
service = "voice"
components = { voice_base = "0.10" }
increment = "60/6"
"""


def test_number_types_come_from_the_card_longest_prefix_first() -> None:
    card = RateCard.from_toml(TYPED)
    assert card.number_type_of("+12124440000") == "local"
    assert card.number_type_of("+12125550123") == "international"
    assert card.number_type_of("+18005550100") == "toll_free"  # known without an entry
    assert card.number_type_of("+14155550123") is None
    assert card.number_type_of("+121") is None  # shorter than every prefix


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('prefix = "1212"\ntype = "local"', r'number_types\[0\]\.prefix: "1212" is not "\+"'),
        ('prefix = "+1212"\ntype = "cheap"', r'number_types\[0\]\.type: "cheap" is not one of'),
        ('prefix = "+1212"\ntype = "any"', r'number_types\[0\]\.type: "any" is not one of'),
        ('prefix = "+1212"\nkind = "local"', r"number_types\[0\]: unknown key \"kind\""),
    ],
)
def test_number_types_are_validated(entry: str, message: str) -> None:
    text = TYPED.replace('prefix = "+1212"\ntype = "local"', entry, 1)
    with pytest.raises(RateCardError, match=message):
        RateCard.from_toml(text)


def test_a_number_type_listed_twice_is_refused() -> None:
    text = TYPED.replace('"+12125"', '"+1212"')
    with pytest.raises(RateCardError, match=r'number_types\[1\]: prefix "\+1212" is listed twice'):
        RateCard.from_toml(text)
