"""The PostgreSQL row-lock peer of --compare: a wallet row locked per change, a ledger row each."""

from __future__ import annotations

from typing import Any


class PgPeer:
    """The row-lock design: one wallet row locked per change, one ledger row inserted."""

    def __init__(self, pool: Any, prefix: str, buffer: int) -> None:
        self.pool = pool
        self.wallet = f"{prefix}_wallet"
        self.ledger = f"{prefix}_ledger"
        self.buffer = buffer

    async def create(self, wallets: int, balance: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"CREATE TABLE {self.wallet} (id int PRIMARY KEY, balance bigint NOT NULL, "
                f"reserved bigint NOT NULL DEFAULT 0)"
            )
            await conn.execute(
                f"CREATE TABLE {self.ledger} (id bigserial PRIMARY KEY, wallet_id int NOT NULL, "
                f"at timestamptz NOT NULL DEFAULT now(), type text NOT NULL, call_id text NOT "
                f"NULL, amount bigint NOT NULL, balance_after bigint NOT NULL)"
            )
            await conn.executemany(
                f"INSERT INTO {self.wallet} (id, balance) VALUES ($1, $2)",
                [(i, balance) for i in range(wallets)],
            )

    async def drop(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {self.wallet}, {self.ledger}")

    async def start(self, wallet: int, call_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT balance, reserved FROM {self.wallet} WHERE id = $1 FOR UPDATE", wallet
            )
            if row["balance"] - row["reserved"] < self.buffer:
                return False
            await conn.execute(
                f"UPDATE {self.wallet} SET reserved = reserved + $2 WHERE id = $1",
                wallet, self.buffer,
            )  # fmt: skip
            await conn.execute(
                f"INSERT INTO {self.ledger} (wallet_id, type, call_id, amount, balance_after) "
                f"VALUES ($1, 'hold', $2, 0, $3)",
                wallet, call_id, row["balance"],
            )  # fmt: skip
            return True

    async def end(self, wallet: int, call_id: str, cost: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT balance FROM {self.wallet} WHERE id = $1 FOR UPDATE", wallet
            )
            await conn.execute(
                f"UPDATE {self.wallet} SET balance = balance - $2, reserved = reserved - $3 "
                f"WHERE id = $1",
                wallet, cost, self.buffer,
            )  # fmt: skip
            await conn.execute(
                f"INSERT INTO {self.ledger} (wallet_id, type, call_id, amount, balance_after) "
                f"VALUES ($1, 'call', $2, $3, $4)",
                wallet, call_id, -cost, row["balance"] - cost,
            )  # fmt: skip

    async def check(self, balance: int, spent: dict[int, int]) -> tuple[list[str], int]:
        """Every wallet = opening - what the leg billed, nothing reserved, ledger sums match."""
        problems, off = [], 0
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT w.id, w.balance, w.reserved, coalesce(sum(l.amount), 0) AS total "
                f"FROM {self.wallet} w LEFT JOIN {self.ledger} l ON l.wallet_id = w.id "
                f"GROUP BY w.id, w.balance, w.reserved"
            )
        for r in rows:
            want = balance - spent.get(r["id"], 0)
            if r["balance"] != want or r["reserved"] != 0 or balance + r["total"] != want:
                off += abs(r["balance"] - want) + abs(r["reserved"])
                problems.append(f"pg wallet {r['id']}: {dict(r)} != balance {want}")
        return problems, off
