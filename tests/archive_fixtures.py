"""SQL archives for the tests: a fresh PostgreSQL database per run, and SQLite files."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

PG_ADMIN = os.environ.get("GATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

PG_HINT = (
    "start it: apt-get install postgresql, then "
    "pg_ctlcluster --skip-systemctl-redirect 15 main start"
)


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str | None]:
    """A PostgreSQL database made for this test run and dropped after it (None: no server)."""
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as err:
        print(f"PostgreSQL at {PG_ADMIN} is not reachable ({err}): its archive tests skip")
        yield None
        return
    name = f"gate_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None
) -> Iterator[str]:
    """Each archive test runs on an embedded SQLite file and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    if pg_database is None:
        pytest.skip(f"no PostgreSQL service at 127.0.0.1:5432: {PG_HINT}")
    yield pg_database
