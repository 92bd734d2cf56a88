"""lua/_rating.lua and gate/calls/rating.py are the same arithmetic, checked case by case."""

from __future__ import annotations

import random

from redis.asyncio import Redis

from gate.calls.rating import Increment, cost_micros, paid_seconds
from gate.store.scripts import lua_dir

# Runs the include on a batch of cases: ARGV = rate, fee, first, next, t, budget, cap, ...
PROBE = (
    "local rcall = redis.call\n"
    + (lua_dir() / "_rating.lua").read_text()
    + """
local out = {}
for i = 1, #ARGV, 7 do
  local c = {rate = tonumber(ARGV[i]), fee = tonumber(ARGV[i + 1]), f = tonumber(ARGV[i + 2]),
    n = tonumber(ARGV[i + 3])}
  out[#out + 1] = cost(c, tonumber(ARGV[i + 4]))
  out[#out + 1] = paid_seconds(c, tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]))
end
return out
"""
)


def cases(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    out = []
    for _ in range(n):
        rate = rng.choice([0, 1, 7, 20_000, 200_000, 890_000, 1_234_567, 100_000_000])
        fee = rng.choice([0, 0, 1, 13_000, 50_000])
        first, nxt = rng.choice([(60, 60), (60, 6), (6, 6), (1, 1), (30, 6), (90, 15)])
        t = rng.choice([0, 1, 5, 59, 60, 61, 66, 3599, 3600, 14_400, 604_800])
        t = max(0, t + rng.randint(-3, 3))
        cap = rng.choice([60, 3600, 14_400, 604_800])
        budget = rng.choice([-5, 0, 1, 3_333, 200_000, 10_000_000, 10**12, 10**15])
        out.append((rate, fee, first, nxt, t, budget + rng.randint(0, 999), cap))
    return out


async def test_lua_pricing_matches_python(redis: Redis) -> None:
    rng = random.Random(20261123)
    for _ in range(20):
        batch = cases(rng, 200)
        args = [v for case in batch for v in case]
        reply = await redis.eval(PROBE, 0, *args)
        for i, (rate, fee, first, nxt, t, budget, cap) in enumerate(batch):
            inc = Increment(first, nxt)
            assert int(reply[2 * i]) == cost_micros(rate, fee, inc, t), (rate, fee, inc, t)
            expected = min(paid_seconds(rate, fee, inc, budget), cap)
            if cost_micros(rate, fee, inc, cap) <= budget:
                expected = cap  # the Lua caps first: a horizon never passes max_call_s
            assert int(reply[2 * i + 1]) == expected, (rate, fee, inc, budget, cap)
