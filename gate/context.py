"""What every domain service needs: Redis, the script registry, the clock and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster

from gate.clock import Clock
from gate.scripts import Scripts
from gate.settings import Settings


@dataclass(frozen=True, slots=True)
class Context:
    client: Redis | RedisCluster
    scripts: Scripts
    clock: Clock
    settings: Settings
