"""The archive database down (issue 21 item 8): history, summary and replays answer 503
archive_unavailable, an export is refused before its headers or says in its last line that
it broke, and the log has one line per outage, not one per archiver pass."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gate.api.http import CTX
from gate.api.wallet import EXPORT_BROKEN
from gate.clock import ManualClock
from gate.errors import ArchiveUnavailable
from tests.archive_fixtures import database_url, pg_database
from tests.conftest import auth, new_workspace
from tests.test_archive import Client, archive_pass, archive_redis, client, redis, settings
from tests.test_replay import CALL, switch_key

__all__ = ["archive_redis", "client", "database_url", "pg_database", "redis", "settings"]


@pytest.fixture
async def outage(client: Client) -> AsyncIterator[Any]:
    """Call it to take the archive down (its engine points at nothing); back after the test."""
    archive = client.app[CTX].archive
    assert archive is not None
    real = archive.engine
    dead = create_async_engine("postgresql+asyncpg://gate@127.0.0.1:1/none")

    def down() -> None:
        archive.engine = dead

    yield down
    archive.engine = real
    await dead.dispose()


async def test_history_summary_and_replay_answer_503_while_the_archive_is_down(
    client: Client, clock: ManualClock, outage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await new_workspace(client)
    sw = await switch_key(client, ws)
    await client.post("/v1/calls", json={"call_id": "c1", **CALL}, headers=sw)
    clock.advance(30)
    await client.post("/v1/calls/c1/end", json={"duration_s": 30}, headers=sw)
    await archive_pass(client)
    admin = auth(ws["key"])
    outage()
    caplog.set_level(logging.INFO)
    for path in ("/v1/wallet/transactions", "/v1/usage/summary", "/v1/usage/export"):
        resp = await client.get(path, headers=admin)
        assert resp.status == 503, (path, await resp.text())
        body = await resp.json()
        assert (
            body["error"]["code"] == "archive_unavailable" and "retry" in body["error"]["message"]
        )
    # a replay of an end Redis forgot: 503, never a second charge as an unseen call
    resp = await client.post("/v1/calls/gone/end", json={"duration_s": 30, **CALL}, headers=sw)
    assert resp.status == 503
    for _ in range(5):  # the archiver's passes fail too, silently after the first line
        with pytest.raises(ArchiveUnavailable):
            await archive_pass(client)
    lines = [r for r in caplog.records if "archive" in r.getMessage()]
    assert len([r for r in lines if r.levelno >= logging.WARNING]) == 1, lines


async def test_an_export_that_breaks_midway_says_so_in_its_last_line(
    client: Client, clock: ManualClock, outage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await new_workspace(client)
    archive = client.app[CTX].archive
    assert archive is not None
    real_rows_before = archive.rows_before

    async def breaks(*args: Any, **kwargs: Any) -> Any:
        outage()  # the cursor check passed; the database goes away as rows are read
        return await real_rows_before(*args, **kwargs)

    monkeypatch.setattr(archive, "rows_before", breaks)
    resp = await client.get("/v1/usage/export", headers=auth(ws["key"]))
    assert resp.status == 200
    text = await resp.text()
    assert text.splitlines()[-1].startswith(EXPORT_BROKEN), text
    assert "archive_unavailable" in text.splitlines()[-1]
