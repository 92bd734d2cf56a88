"""Scripts.submit, the task-less way a call start rides the auto-pipeline: a reply, a
refusal, an error and a SCRIPT FLUSH all reach the caller as `call` delivers them."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gate.calls.service import Calls, RateBook, StartParams
from gate.clock import ManualClock
from gate.settings import Settings
from gate.store import keys
from gate.store.scripts import Code, ScriptError
from gate.tenancy.workspaces import Workspaces
from tests.helpers import make_ctx


def _params(call_id: str) -> StartParams:
    return StartParams(call_id, "outbound", "+14155550100", "+14155550123", "voice",
                       None, None, None, True)  # fmt: skip


async def test_a_start_after_script_flush_reloads_and_runs(
    redis: Redis, settings: Settings
) -> None:
    ctx = await make_ctx(redis, ManualClock(), settings)
    ws = (await Workspaces(ctx).create("Submit")).id
    calls = Calls(ctx, RateBook(None))
    await redis.script_flush()
    new, answer = await calls.start(ws, _params("sub-1"), deadline_ms=ctx.clock.now_ms() + 5000)
    assert new and answer["call_id"] == "sub-1"
    await calls.end(ws, "sub-1", 0, None, _params("sub-1"))


async def test_submit_delivers_replies_and_errors(redis: Redis, settings: Settings) -> None:
    ctx = await make_ctx(redis, ManualClock(), settings)
    k = keys.for_workspace("ws_00000000000000ff")  # no such workspace: a refusal
    args = [ctx.clock.now_ms(), "sub-2", "outbound", "voice", "+1415", "+1415", "", "", "any",
            1, 0, 60, 6, 60, 10, 30, 14400, 1, 0, 60, 100, 120, "", 0]  # fmt: skip
    reply = await ctx.scripts.submit("call_start", k.call_keys, args)
    assert reply[0] == Code.NO_WORKSPACE
    with pytest.raises(ScriptError):
        ctx.scripts.submit("call_start", k.call_keys[:3], args)
    with pytest.raises(ResponseError):  # a bad argument: the script's own error
        await ctx.scripts.submit("call_start", k.call_keys, args[:2])
    # Many at once share batches; each gets its own reply.
    replies = await asyncio.gather(
        *(ctx.scripts.submit("call_start", k.call_keys, args) for _ in range(50))
    )
    assert {r[0] for r in replies} == {Code.NO_WORKSPACE}
