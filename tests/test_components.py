"""A call's cost split by its rate's components (seed 003), adding up to the cost exactly."""

from __future__ import annotations

from pathlib import Path

from gate.clock import ManualClock
from tests.conftest import Client, MakeClient, auth, new_switch_key, new_workspace
from tests.helpers import all_rows

START = {"call_id": "c1", "direction": "outbound", "from": "+14155550100", "to": "+14155550123"}

ODD = """
[[rates]]
service = "voice"
components = { platform = "0.000007", carrier = "0.000011" }
connect_fee = "0.01"
increment = "1/1"
"""


async def test_the_default_voice_rate_splits_into_its_three_parts(
    client: Client, clock: ManualClock
) -> None:
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    assert (await client.post("/v1/calls", json=START, headers=sw)).status == 201
    clock.advance(90)
    end = await (await client.post("/v1/calls/c1/end", json={"duration_s": 90},
                                   headers=sw)).json()  # fmt: skip
    assert end["cost_micros"] == 300_000
    assert {k: v["cost_micros"] for k, v in end["components"].items()} == {
        "voice_base": 150_000, "telephony": 75_000, "recording": 75_000}  # fmt: skip
    row = (await all_rows(client, ws["key"], "type=call"))[0]
    assert row["component_voice_base_micros"] == 150_000
    assert row["component_recording_usd"] == 0.075


async def test_rounding_goes_to_the_largest_part_so_the_parts_add_up(
    make_client: MakeClient, tmp_path: Path, clock: ManualClock
) -> None:
    card = tmp_path / "odd.toml"
    card.write_text(ODD)
    client = await make_client(rates=str(card))
    ws = await new_workspace(client)
    sw = auth(await new_switch_key(client, ws["id"]))
    for n, seconds in enumerate((7, 59, 61, 3599)):
        body = START | {"call_id": f"c{n}"}
        assert (await client.post("/v1/calls", json=body, headers=sw)).status == 201
        clock.advance(seconds)
        end = await (await client.post(f"/v1/calls/c{n}/end", json={"duration_s": seconds},
                                       headers=sw)).json()  # fmt: skip
        parts = {k: v["cost_micros"] for k, v in end["components"].items()}
        assert sum(parts.values()) + 10_000 == end["cost_micros"], (seconds, parts)
        assert parts["platform"] == 7 * seconds // 60, "the smaller part is never rounded up"
    # 7 s: cost 10,000 + ceil(18 x 7 / 60) = 10,003; carrier floor(77/60) = 1, plus the 2 left
    rows = await all_rows(client, ws["key"], "type=call")
    first = next(r for r in rows if r["reference"] == "c0")
    assert first["amount_micros"] == -10_003 and first["component_carrier_micros"] == 3
