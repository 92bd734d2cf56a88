"""The ledger archive: every ledger row, once, in SQL (PostgreSQL, or SQLite when embedded).

SQLAlchemy 2 Core on its asyncio engines (asyncpg for PostgreSQL, aiosqlite for SQLite) and
Alembic migrations: one query builder for both databases, filters that reach SQL only as
bound parameters, and a schema that migrates forward at start-up (`Archive.open`).
The archiver (`gate.history.archiver`) writes here; the history queries, the export, replays
and `gate check` read here for rows that have left Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, event, func, or_, select, tuple_
from sqlalchemy import Row as SqlRow
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from gate.errors import ArchiveUnavailable
from gate.history.ledger import Filters, Row
from gate.history.schema import archive_cursor, audit_entries, ledger_rows

log = logging.getLogger("gate.history.archive")
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_C = ledger_rows.c


class ArchiveUnreachable(RuntimeError):
    """The archive database did not answer at boot; the message names the URL, never a password."""


def redacted(url: str) -> str:
    """GATE_DATABASE_URL as it may be logged: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing of it but its scheme
        return url.split("://", 1)[0] + "://…"


class ArchiveURLError(ValueError):
    """GATE_DATABASE_URL is not a database the archive can use."""


def engine_url(url: str) -> str:
    """The SQLAlchemy URL (with its asyncio driver) of a GATE_DATABASE_URL."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ArchiveURLError(
        "expected a postgresql:// URL or sqlite:///path/to/file.sqlite3 (unset: embedded SQLite)"
    )


def _unreachable(err: BaseException) -> bool:
    """Whether a failed first connect means the database is not there (not a schema error)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError | ConnectionError | TimeoutError):
            return True
        if type(seen).__name__ in ("InvalidCatalogNameError", "InvalidPasswordError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def sqlite_url(data_dir: str) -> str:
    """The embedded archive's URL: a SQLite file under the data directory."""
    path = Path(data_dir).resolve() / "ledger.sqlite3"
    return f"sqlite:///{path}"


def _upgrade(connection: Connection) -> None:
    # Alembic narrates every plugin at INFO; a migration that runs is worth one line of ours.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def to_record(workspace_id: str, row: Row) -> dict[str, Any]:
    at_ms, seq = row.id.split("-", 1)
    x = row.extra
    return {
        "workspace_id": workspace_id,
        "at_ms": int(at_ms),
        "seq": int(seq),
        "type": row.type,
        "description": row.description,
        "amount_micros": row.amount_micros,
        "balance_after_micros": row.balance_after_micros,
        "reference": row.reference,
        "user_name": x.get("user"),
        "group_name": x.get("group"),
        "contact": x.get("contact"),
        "from_number": x.get("from"),
        "to_number": x.get("to"),
        "direction": x.get("direction"),
        "source": x.get("source"),
        "extra": orjson.dumps(x).decode(),
    }


def from_record(r: SqlRow[Any]) -> Row:
    return Row(
        id=f"{r.at_ms}-{r.seq}",
        at_ms=r.at_ms,
        type=r.type,
        description=r.description,
        amount_micros=r.amount_micros,
        balance_after_micros=r.balance_after_micros,
        reference=r.reference,
        extra=orjson.loads(r.extra),
    )


def split_id(row_id: str) -> tuple[int, int]:
    at_ms, seq = row_id.split("-", 1)
    return int(at_ms), int(seq)


def _before(row_id: str) -> ColumnElement[bool]:
    """Rows older than row_id, written so every database walks the (at_ms, seq) index."""
    at_ms, seq = split_id(row_id)
    return and_(_C.at_ms <= at_ms, or_(_C.at_ms < at_ms, _C.seq < seq))


def _after(row_id: str) -> ColumnElement[bool]:
    at_ms, seq = split_id(row_id)
    return and_(_C.at_ms >= at_ms, or_(_C.at_ms > at_ms, _C.seq > seq))


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where(workspace_id: str, f: Filters) -> list[ColumnElement[bool]]:
    """The SQL form of Filters.keep; every value is a bound parameter."""
    conds: list[ColumnElement[bool]] = [_C.workspace_id == workspace_id]
    if f.types:
        conds.append(_C.type.in_(sorted(f.types)))
    if f.user is not None:
        conds.append(_C.user_name == f.user)
    if f.group is not None:
        conds.append(_C.group_name == f.group)
    if f.source is not None:
        s = _like_escape(f.source)
        conds.append(
            or_(
                _C.source == f.source,
                _C.source.like(f"{s}+%", escape="\\"),
                _C.source.like(f"%+{s}", escape="\\"),
                _C.source.like(f"%+{s}+%", escape="\\"),
            )
        )
    if f.direction is not None:
        conds.append(_C.direction == f.direction)
    if f.number is not None:
        conds.append(or_(_C.from_number == f.number, _C.to_number == f.number))
    if f.contact is not None:
        conds.append(
            or_(_C.user_name == f.contact, _C.group_name == f.contact, _C.contact == f.contact)
        )
    if f.start_ms is not None:
        conds.append(_C.at_ms >= f.start_ms)
    if f.end_ms is not None:
        conds.append(_C.at_ms < f.end_ms)
    if f.min_micros is not None:
        conds.append(func.abs(_C.amount_micros) >= f.min_micros)
    if f.max_micros is not None:
        conds.append(func.abs(_C.amount_micros) <= f.max_micros)
    return conds


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far a workspace is archived: its newest archived row and the balance after it."""

    row_id: str
    balance_after_micros: int


class Archive:
    """Reads and writes of the SQL archive; one per process, opened by `Archive.open`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.down_since: float | None = None  # monotonic time of an outage's first failure

    @contextlib.asynccontextmanager
    async def _connect(self, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection (a transaction when `write`); a database that fails answers
        ArchiveUnavailable (503 archive_unavailable), with one log line per outage."""
        try:
            async with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError, TimeoutError) as err:
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("ledger archive unavailable (%s): history, summary and replays "
                            "answer 503 archive_unavailable until it is back",
                            type(err).__name__)  # fmt: skip
            raise ArchiveUnavailable(
                "the ledger archive (GATE_DATABASE_URL) does not answer; retry in a minute "
                "(nothing was billed or changed)"
            ) from err
        if self.down_since is not None:
            log.info("ledger archive back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None

    @classmethod
    async def open(cls, url: str) -> Archive:
        """Connect and migrate the schema to the newest revision."""
        sa_url = make_url(engine_url(url))
        if sa_url.drivername.startswith("sqlite"):
            if sa_url.database:
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(sa_url, connect_args={"timeout": 30})

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the archiver
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        else:
            engine = create_async_engine(sa_url, pool_size=5, max_overflow=5, pool_pre_ping=True)
        archive = cls(engine)
        log.info("ledger archive: %s, migrating to the newest schema", archive.dialect)
        for attempt in range(3):  # several processes may start at once; one migrates
            try:
                async with engine.begin() as conn:
                    if archive.dialect == "postgresql":
                        await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4702)")
                    await conn.run_sync(_upgrade)
                break
            except Exception as err:
                if attempt == 2:
                    await engine.dispose()
                    if isinstance(err, OSError | ConnectionError) or _unreachable(err):
                        raise ArchiveUnreachable(
                            f"the ledger archive at {redacted(url)} cannot be reached "
                            f"({type(err).__name__}: {err}); start the database or fix "
                            "GATE_DATABASE_URL (unset: an embedded SQLite file)"
                        ) from err
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        return archive

    async def close(self) -> None:
        await self.engine.dispose()

    def _insert(self) -> Any:
        return (postgresql if self.dialect == "postgresql" else sqlite).insert

    async def cursors(self) -> dict[str, Cursor]:
        async with self._connect() as conn:
            result = await conn.execute(select(archive_cursor))
            return {
                r.workspace_id: Cursor(f"{r.at_ms}-{r.seq}", r.balance_after_micros) for r in result
            }

    async def cursor(self, workspace_id: str) -> Cursor | None:
        async with self._connect() as conn:
            r = (
                await conn.execute(
                    select(archive_cursor).where(archive_cursor.c.workspace_id == workspace_id)
                )
            ).first()
        return None if r is None else Cursor(f"{r.at_ms}-{r.seq}", r.balance_after_micros)

    async def append(self, workspace_id: str, rows: Sequence[Row], now_ms: int) -> int:
        """Store rows (oldest first) in one transaction; rows stored before are skipped.

        The primary key makes a second copy of a row a no-op, so a batch re-read after a
        crash, or copied by two archivers at once, lands once. Returns rows written new.
        """
        if not rows:
            return 0
        insert = self._insert()
        last = rows[-1]
        at_ms, seq = split_id(last.id)
        async with self._connect(write=True) as conn:
            before = await self._count(conn, workspace_id, rows[0].id, last.id)
            await conn.execute(
                insert(ledger_rows).on_conflict_do_nothing(),
                [to_record(workspace_id, r) for r in rows],
            )
            after = await self._count(conn, workspace_id, rows[0].id, last.id)
            stmt = insert(archive_cursor).values(
                workspace_id=workspace_id,
                at_ms=at_ms,
                seq=seq,
                balance_after_micros=last.balance_after_micros,
                updated_ms=now_ms,
            )
            excluded = stmt.excluded
            # Only ever forward: a slower archiver holding an older batch cannot move it back.
            stmt = stmt.on_conflict_do_update(
                index_elements=[archive_cursor.c.workspace_id],
                set_={
                    "at_ms": excluded.at_ms,
                    "seq": excluded.seq,
                    "balance_after_micros": excluded.balance_after_micros,
                    "updated_ms": excluded.updated_ms,
                },
                where=tuple_(archive_cursor.c.at_ms, archive_cursor.c.seq)
                < tuple_(excluded.at_ms, excluded.seq),
            )
            await conn.execute(stmt)
        return after - before

    @staticmethod
    async def _count(conn: Any, workspace_id: str, low: str, high: str) -> int:
        lo, hi = split_id(low), split_id(high)
        key = tuple_(_C.at_ms, _C.seq)
        q = select(func.count()).where(
            _C.workspace_id == workspace_id, key >= tuple_(*lo), key <= tuple_(*hi)
        )
        return int((await conn.execute(q)).scalar_one())

    async def rows_before(
        self, workspace_id: str, filters: Filters, before: str | None, limit: int
    ) -> list[Row]:
        """Up to `limit` matching rows older than the row id `before`, newest first."""
        conds = where(workspace_id, filters)
        if before is not None:
            conds.append(_before(before))
        q = (
            select(ledger_rows)
            .where(and_(*conds))
            .order_by(_C.at_ms.desc(), _C.seq.desc())
            .limit(limit)
        )
        async with self._connect() as conn:
            return [from_record(r) for r in await conn.execute(q)]

    async def rows_after(
        self, workspace_id: str, after: str | None, until: str | None, limit: int
    ) -> list[Row]:
        """Up to `limit` rows after `after` and up to `until` (ids), oldest first."""
        conds: list[ColumnElement[bool]] = [_C.workspace_id == workspace_id]
        if after is not None:
            conds.append(_after(after))
        if until is not None:
            at_ms, seq = split_id(until)
            conds.append(and_(_C.at_ms <= at_ms, or_(_C.at_ms < at_ms, _C.seq <= seq)))
        q = select(ledger_rows).where(and_(*conds)).order_by(_C.at_ms, _C.seq).limit(limit)
        async with self._connect() as conn:
            return [from_record(r) for r in await conn.execute(q)]

    async def scan_oldest_first(
        self, workspace_id: str, until: str | None, batch: int = 5000
    ) -> AsyncIterator[Row]:
        after: str | None = None
        while True:
            rows = await self.rows_after(workspace_id, after, until, batch)
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def row(self, workspace_id: str, row_id: str) -> Row | None:
        at_ms, seq = split_id(row_id)
        q = select(ledger_rows).where(
            _C.workspace_id == workspace_id, _C.at_ms == at_ms, _C.seq == seq
        )
        async with self._connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else from_record(r)

    async def audit_cursor(self, owner: str) -> str | None:
        """The newest audit entry archived of a workspace (or "platform"), as a stream id."""
        a = audit_entries.c
        q = (
            select(a.stream_ms, a.stream_seq)
            .where(a.workspace_id == owner)
            .order_by(a.stream_ms.desc(), a.stream_seq.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else f"{r[0]}-{r[1]}"

    async def append_audit(self, owner: str, found: Sequence[dict[str, Any]]) -> int:
        """Store audit entries (records of `audit_entries`); ones stored before are skipped."""
        if not found:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                self._insert()(audit_entries).on_conflict_do_nothing(),
                [{"workspace_id": owner, **e} for e in found],
            )
        return max(int(result.rowcount or 0), 0)

    async def audit_rows(self, owner: str) -> list[dict[str, Any]]:
        """Every archived audit entry of a workspace, oldest first (tests, exports)."""
        a = audit_entries.c
        q = select(audit_entries).where(a.workspace_id == owner).order_by(a.stream_ms, a.stream_seq)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def workspaces_of_reference(self, reference: str, limit: int = 20) -> list[str]:
        """The workspaces with an archived row naming `reference` (a call id, a payment id)."""
        q = select(_C.workspace_id).where(_C.reference == reference).distinct().limit(limit)
        async with self.engine.connect() as conn:
            return sorted(str(r[0]) for r in await conn.execute(q))

    async def by_reference(
        self, workspace_id: str, reference: str, types: Sequence[str]
    ) -> Row | None:
        """The first archived row of one of `types` that carries `reference`."""
        q = (
            select(ledger_rows)
            .where(
                _C.workspace_id == workspace_id,
                _C.reference == reference,
                _C.type.in_(list(types)),
            )
            .order_by(_C.at_ms, _C.seq)
            .limit(1)
        )
        async with self._connect() as conn:
            r = (await conn.execute(q)).first()
        return None if r is None else from_record(r)
