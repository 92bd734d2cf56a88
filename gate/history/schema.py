"""The SQL tables of the ledger archive (SQLAlchemy Core), shared by queries and migrations.

`ledger_rows` holds every ledger row once, keyed by workspace and stream id (`at_ms`, `seq`
are the two halves of the Redis entry id `<at ms>-<n>`), so a second copy of a row is a
primary-key conflict, never a duplicate. The usage fields that filters use have their own
columns and indexes; every extra field is also kept, as text, in `extra` (a JSON object),
so a row read back is exactly the row that left Redis.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text

metadata = MetaData()

ledger_rows = Table(
    "ledger_rows",
    metadata,
    Column("workspace_id", String(40), primary_key=True),
    Column("at_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("balance_after_micros", BigInteger, nullable=False),
    Column("reference", Text, nullable=False),
    Column("user_name", Text),
    Column("group_name", Text),
    Column("contact", Text),
    Column("from_number", Text),
    Column("to_number", Text),
    Column("direction", String(16)),
    Column("source", Text),
    Column("extra", Text, nullable=False),
)
# One index per filter of the history, each ending in the time order the pages read in.
Index("ix_ledger_rows_reference", ledger_rows.c.workspace_id, ledger_rows.c.reference)
Index(
    "ix_ledger_rows_type",
    ledger_rows.c.workspace_id,
    ledger_rows.c.type,
    ledger_rows.c.at_ms,
    ledger_rows.c.seq,
)
for _name, _column in (
    ("user", ledger_rows.c.user_name),
    ("group", ledger_rows.c.group_name),
    ("from", ledger_rows.c.from_number),
    ("to", ledger_rows.c.to_number),
    ("contact", ledger_rows.c.contact),
):
    Index(f"ix_ledger_rows_{_name}", ledger_rows.c.workspace_id, _column, ledger_rows.c.at_ms)

# Per workspace: the newest row committed, and the balance after it (the running sum the next
# row continues). Updated in the transaction that inserts the rows, only ever forward.
archive_cursor = Table(
    "archive_cursor",
    metadata,
    Column("workspace_id", String(40), primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("balance_after_micros", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Any workspace's rows naming a reference: the operator finds the workspace behind a call id.
Index("ix_ledger_rows_reference_any", ledger_rows.c.reference)

# The audit log (gate/tenancy/audit.py) once it leaves Redis: every change that is not a
# ledger row, keyed by workspace and stream id like the ledger, so a copy is a conflict.
audit_entries = Table(
    "audit_entries",
    metadata,
    Column("workspace_id", String(40), primary_key=True),
    Column("stream_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("stream_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("action", String(64), nullable=False),
    Column("key_id", Text, nullable=False),
    Column("person", Text, nullable=False),
    Column("ip", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("before", Text, nullable=False),
    Column("after", Text, nullable=False),
)
Index("ix_audit_entries_action", audit_entries.c.workspace_id, audit_entries.c.action)
