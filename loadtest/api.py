"""Gate's HTTP API as the harness calls it: each request timed, classified and retried safely."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from loadtest.stats import Recorder
from loadtest.wire import Client, WireError

# The refusals the API promises (docs/design.md §3): timed like answers, counted apart from errors.
REFUSALS = frozenset({"insufficient_balance", "workspace_suspended", "concurrency_limit"})


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: status 0 means no HTTP answer at all (after every retry)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str:
        error = self.body.get("error")
        if isinstance(error, dict):
            return str(error.get("code", ""))
        return ""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Api:
    """Sends requests through one wire.Client and records each in the Recorder."""

    def __init__(self, client: Client, rec: Recorder) -> None:
        self.client = client
        self.rec = rec

    async def call(
        self,
        route: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        key: str,
        *,
        headers: Mapping[str, str] | None = None,
        retries: int = 0,
        refusals: Collection[str] = REFUSALS,
    ) -> Answer:
        """One request; transport failures and 5xx are retried `retries` times.

        Only idempotent requests are retried (call ids, Idempotency-Keys and references make
        every harness request idempotent), so a retry never changes what the books expect.
        """
        raw = self.client.encode(
            method,
            path,
            None if body is None else orjson.dumps(body),
            bearer(key) | dict(headers or {}),
        )
        answer = Answer(0, {})
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            started = time.perf_counter_ns()
            try:
                resp = await self.client.send(raw)
            except (WireError, TimeoutError, OSError) as err:
                self.rec.error(route, 0, type(err).__name__)
                continue
            us = (time.perf_counter_ns() - started) / 1000
            try:
                parsed = orjson.loads(resp.body) if resp.body else {}
            except orjson.JSONDecodeError:
                parsed = {"error": {"code": "not_json", "message": resp.body[:200].decode()}}
            answer = Answer(resp.status, parsed if isinstance(parsed, dict) else {"data": parsed})
            if answer.ok:
                self.rec.ok(route, us)
                return answer
            if answer.code in refusals:
                self.rec.refused(route, answer.status, answer.code, us)
                return answer
            self.rec.error(route, answer.status, answer.code or "-")
            if answer.status < 500:
                return answer
        return answer
