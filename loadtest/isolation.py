"""Chaos phases of tenant isolation (issue 21): one tenant replaying a backlog on 50 event
streams, and a 2,000-connection slowloris, while the fleet's calls go on. Each prints the
call starts' p99 while the fault lasts beside the p99 before it (idle)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

from loadtest.stats import histogram

if TYPE_CHECKING:
    from loadtest.chaos import Chaos, Outcome

STREAMS = 50
BACKLOG = 20_000
SLOW_CONNECTIONS = 2_000


def _start_p99_ms(chaos: Chaos, first: int, last: int) -> float | None:
    """call_start p99 over the recorder's seconds [first, last)."""
    merged = histogram()
    for sec in chaos.rec.seconds[first:last]:
        merged.add(sec.start_latency)
    if not merged.get_total_count():
        return None
    return round(float(merged.get_value_at_percentile(99.0)) / 1000, 1)


def _now_s(chaos: Chaos) -> int:
    return int(time.monotonic() - chaos.rec.t0)


async def _hold(
    chaos: Chaos, out: Outcome, hold_s: float, opened: int, began: int, quiet: int | None = None
) -> None:
    """Hold the fault for hold_s; the starts' p99 during it beside the seconds before
    `quiet` (when the phase began to prepare the fault: default `began`)."""
    await asyncio.sleep(hold_s)
    now = _now_s(chaos)
    quiet = began if quiet is None else quiet
    idle_from = max(quiet - int(hold_s) - 1, 0)
    out.figures["start_p99_idle_ms"] = _start_p99_ms(chaos, idle_from, quiet)
    out.figures["start_p99_during_ms"] = _start_p99_ms(chaos, began + 1, now)
    out.figures["opened"] = opened
    idle, during = out.figures["start_p99_idle_ms"], out.figures["start_p99_during_ms"]
    if idle and during and during > 2 * max(idle, 5.0):
        out.problems.append(f"call start p99 {during} ms during the fault, idle {idle} ms")


async def stream_replay(chaos: Chaos, out: Outcome) -> None:
    """One tenant: 20,000 events in its stream, 50 streams replaying them from 0-0."""
    from gate.store import keys
    from gate.store.redis_client import connect

    assert chaos.gate is not None
    quiet = _now_s(chaos)
    # A tenant of its own, outside the phase's books: its 20,000 events go to no webhook.
    victim_id = await asyncio.to_thread(_new_workspace, chaos.gate.port, chaos.gate_key)
    client = await connect(chaos.redis_url)
    try:
        stream = keys.for_workspace(victim_id).events
        for first in range(0, BACKLOG, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(first, first + 1000):
                    pipe.xadd(stream, {"type": "wallet.low_balance", "at": 1, "seq": 10**9 + i})
                await pipe.execute()
    finally:
        await client.aclose()
    began = _now_s(chaos)
    received = 0

    async def one() -> None:
        nonlocal received
        reader, writer = await asyncio.open_connection("127.0.0.1", chaos.gate.port)  # type: ignore[union-attr]
        try:
            writer.write(
                (
                    f"GET /v1/events?workspace_id={victim_id} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {chaos.gate_key}\r\nLast-Event-ID: 0-0\r\n\r\n"
                ).encode()
            )
            while chunk := await reader.read(65536):
                received += chunk.count(b"\nevent: ")
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(STREAMS)]
    try:
        await _hold(chaos, out, chaos.opts.chaos_phase_s / 2, STREAMS, began, quiet)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.figures["events_replayed"] = received


def _new_workspace(port: int, platform_key: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/workspaces",
        data=json.dumps({"name": "isolation victim"}).encode(),
        headers={"Authorization": f"Bearer {platform_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["id"])


async def slowloris(chaos: Chaos, out: Outcome) -> None:
    """2,000 connections each sending a request head a byte a second, from a child process
    (the harness's own loop must stay free to time the fleet's starts)."""
    assert chaos.gate is not None
    began = _now_s(chaos)
    hold_s = chaos.opts.chaos_phase_s / 2
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.isolation", str(chaos.gate.port), str(hold_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _hold(chaos, out, hold_s, SLOW_CONNECTIONS, began)
        raw, _ = await asyncio.wait_for(child.communicate(), 30)
        out.figures |= json.loads(raw or b"{}")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def _loris(port: int, hold_s: float) -> dict[str, int]:
    """The child: open the connections, trickle, report how many Gate closed."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for _ in range(SLOW_CONNECTIONS):
        try:
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            refused += 1
    writers = [w for _, w in conns]
    head = b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n"
    deadline = time.monotonic() + hold_s
    i = 0
    while time.monotonic() < deadline and i < len(head):
        for w in writers:
            if not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(head[i : i + 1])
        i += 1
        await asyncio.sleep(1)
    await asyncio.sleep(0.5)
    closed = sum(
        1 for w in writers if w.is_closing() or w.transport.get_extra_info("socket") is None
    )
    for w in writers:
        w.close()
    return {"connects_refused": refused, "closed_by_gate": closed}


if __name__ == "__main__":
    port_arg, hold_arg = sys.argv[1], sys.argv[2]
    print(json.dumps(asyncio.run(_loris(int(port_arg), float(hold_arg)))))
