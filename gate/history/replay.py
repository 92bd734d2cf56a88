"""Answers to replays whose Redis record is gone, from the ledger archive.

Redis forgets an ended call's result after 24 h and trims archived ledger rows; a switch or
a client that retries later must still get the first answer, not a second charge. These
look the first answer up in the archive (by reference, or by row id).
"""

from __future__ import annotations

from typing import Any

from gate.context import Context
from gate.history.ledger import Row
from gate.store import keys
from gate.store.redis_client import entries

CALL_ROW_TYPES = ("call", "ai_agent")


async def call_end(ctx: Context, workspace_id: str, call_id: str) -> dict[str, Any] | None:
    """The fields of call_end's first result for a call billed before, or None.

    Only for a call Redis no longer knows (call_end answered "never seen"): its ledger row,
    found in the archive by the call id, is the first result.
    """
    if ctx.archive is None:
        return None
    row = await ctx.archive.by_reference(workspace_id, call_id, CALL_ROW_TYPES)
    if row is None:
        return None
    x = row.extra
    parts: list[str | int] = []
    for name, value in x.items():  # the cost by component, in the order call_end wrote it
        if name.startswith("component_"):
            parts += [name, int(value)]
    return {
        "cost": -row.amount_micros,
        "row": row.id,
        "balance": row.balance_after_micros,
        "duration": int(x.get("duration_s", "0")),
        "leak": int(x.get("leak_s", "0")),
        "flag": x.get("flag", ""),
        "clamped": 1 if x.get("duration_clamped") == "true" else 0,
        "raised": 1 if x.get("duration_raised") == "true" else 0,
        "parts": parts,
    }


async def row(ctx: Context, workspace_id: str, row_id: str) -> Row | None:
    """One ledger row by id: from Redis while it is there, from the archive after."""
    found = entries(
        await ctx.client.xrange(keys.for_workspace(workspace_id).ledger, row_id, row_id)
    )
    if found:
        return Row.parse(*found[0])
    if ctx.archive is None:
        return None
    return await ctx.archive.row(workspace_id, row_id)
