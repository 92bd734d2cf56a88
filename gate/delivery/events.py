"""Events as the outside world sees them: ids, and JSON rendered from the event stream entries.

Scripts write each event to the workspace's stream (lua/_post.lua `emit`) with the fields
`type`, `at` (ms), `seq` and `d:<name>` data strings. The public id is
`evt_<workspace hex>_<stream id>`: the same on every webhook retry, usable as the SSE `id:`
for Last-Event-ID, and unique across workspaces, so a receiver behind one global webhook URL
can de-duplicate by `webhook-id` alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.asyncio import Redis, RedisCluster

from gate.errors import ValidationFailed
from gate.money import usd
from gate.store import keys
from gate.store.redis_client import entries, text

STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
# Each half of a Redis stream id is an unsigned 64-bit number: an id beyond it can never
# come, so resuming after it is refused rather than answered with an empty stream forever.
_MAX_ID_PART = 2**64 - 1
# Data fields that are whole numbers whatever their suffix.
_INT_NAMES = frozenset({"seq", "count", "attempts", "segments", "pages"})


def event_id(workspace_id: str, entry_id: str) -> str:
    return f"evt_{workspace_id.removeprefix('ws_')}_{entry_id}"


def parse_event_id(workspace_id: str, value: str) -> str:
    """The stream id inside a public event id (a bare stream id is accepted too)."""
    value = value.strip()
    prefix = event_id(workspace_id, "")
    bare = value[len(prefix) :] if value.startswith(prefix) else value
    if STREAM_ID.match(bare) and all(int(part) <= _MAX_ID_PART for part in bare.split("-")):
        return bare
    example = event_id(workspace_id, "0-0")
    raise ValidationFailed(
        f"{value[:80]!r} is not an event id of this workspace (like {example}); resume from "
        "the id of the last event received, or leave Last-Event-ID out for new events only",
        field="last_event_id",
    )


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        # Lua may print a large number as "1.8e+12"; it is still a whole number.
        try:
            return int(Decimal(raw))
        except (InvalidOperation, ValueError):
            raise ValueError(f"not a whole number: {raw!r}") from None


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds, e.g. ...T12:00:00.250Z."""
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def render_data(data: Mapping[str, str]) -> dict[str, Any]:
    """Type the data strings of an entry: money, times and durations become numbers."""
    out: dict[str, Any] = {}
    for name, raw in data.items():
        if name.endswith("_micros"):
            micros = None if raw == "" else _int(raw)
            out[name] = micros
            out[name.removesuffix("_micros") + "_usd"] = None if micros is None else usd(micros)
        elif name.endswith("_ms"):
            ms = None if raw == "" else _int(raw)
            out[name] = ms
            out[name.removesuffix("_ms")] = None if ms is None else round(ms / 1000, 3)
        elif name.endswith("_s") or name in _INT_NAMES:
            out[name] = None if raw == "" else _int(raw)
        else:
            out[name] = raw
    return out


def at_ms(fields: Mapping[str, str]) -> int:
    """When the event happened (ms), from its decoded stream fields."""
    return _int(fields["at"])


def render(
    workspace_id: str,
    entry_id: str,
    fields: Mapping[bytes, bytes] | Mapping[str, str],
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The public JSON of one event stream entry; with `now_ms` (a webhook being sent) a
    call.* event also says how far its hangup time is from now (see `relative`)."""
    plain = {text(k): text(v) for k, v in fields.items()}
    data = {k[2:]: v for k, v in plain.items() if k.startswith("d:")}
    at = at_ms(plain)
    rendered = render_data(data)
    if now_ms is not None and plain["type"].startswith("call."):
        rendered.update(relative(plain["type"], rendered, now_ms))
    return {
        "id": event_id(workspace_id, entry_id),
        "type": plain["type"],
        "workspace_id": workspace_id,
        "at": iso_ms(at),
        "seq": _int(plain["seq"]),
        "data": rendered,
    }


def relative(kind: str, data: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """`hangup_in_ms` (never null: 0 = now) and `limited` (0|1) for a switch script.

    Kamailio's integers are 32-bit (epoch ms overflow) and its JSON reader turns null into
    0, so a switch re-arms its timer from these two alone. A cut means now.
    """
    at = data.get("hangup_at_ms")
    if kind == "call.cut" or not isinstance(at, int):
        return {"hangup_in_ms": 0, "limited": 1}
    limited = kind == "call.limit" and data.get("max_duration_s") is not None
    return {"hangup_in_ms": max(at - now_ms, 0), "limited": int(limited)}


async def read_after(
    client: Redis | RedisCluster, workspace_id: str, after_id: str, count: int
) -> list[dict[str, Any]]:
    """Up to `count` rendered events after `after_id` (a stream id or public event id)."""
    start = parse_event_id(workspace_id, after_id)
    raw = await client.xrange(
        keys.for_workspace(workspace_id).events, f"({start}", "+", count=count
    )
    return [render(workspace_id, text(entry_id), fields) for entry_id, fields in entries(raw)]
