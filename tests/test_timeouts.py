"""gate.timeouts behaves as asyncio.timeout does, with one loop timer for many deadlines."""

from __future__ import annotations

import asyncio

import pytest

from gate import timeouts


async def test_expiry_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        async with timeouts.timeout(0.01) as deadline:
            await asyncio.sleep(1)
    assert deadline.expired()


async def test_a_block_done_in_time_is_left_alone() -> None:
    async with timeouts.timeout(0.05) as deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()
    await asyncio.sleep(0.08)  # its entry was dropped: nothing fires into this task later


async def test_none_never_expires() -> None:
    async with timeouts.timeout_at(None) as deadline:
        await asyncio.sleep(0.02)
    assert not deadline.expired()


async def test_an_outside_cancel_propagates_as_cancelled() -> None:
    async def body() -> None:
        async with timeouts.timeout(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reschedule_moves_it_both_ways() -> None:
    loop = asyncio.get_running_loop()
    async with timeouts.timeout(0.02) as later:
        later.reschedule(loop.time() + 0.1)
        await asyncio.sleep(0.05)  # past the first deadline: no expiry
    assert not later.expired()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with timeouts.timeout(5) as sooner:
            sooner.reschedule(loop.time() + 0.02)
            await asyncio.sleep(5)
    assert loop.time() - started < 1


async def test_many_deadlines_each_fire_for_their_own_task_only() -> None:
    expired: list[int] = []

    async def one(i: int, delay: float, work: float) -> None:
        try:
            async with timeouts.timeout(delay):
                await asyncio.sleep(work)
        except TimeoutError:
            expired.append(i)

    # Out of order, some finishing in time (their entries stay in the heap, cancelled).
    jobs = [(i, 0.01 * (i % 5 + 1), 0.2 if i % 2 else 0.0) for i in range(40)]
    await asyncio.gather(*(one(i, d, w) for i, d, w in jobs))
    assert sorted(expired) == [i for i, _, w in jobs if w]


def test_under_uvloop_as_gate_serves() -> None:
    import uvloop

    async def main() -> list[bool]:
        async def one(delay: float, work: float) -> bool:
            try:
                async with timeouts.timeout(delay):
                    await asyncio.sleep(work)
            except TimeoutError:
                return True
            return False

        return await asyncio.gather(*(one(0.01 * (i % 3 + 1), 0.1 * (i % 2)) for i in range(20)))

    assert uvloop.run(main()) == [i % 2 == 1 for i in range(20)]
