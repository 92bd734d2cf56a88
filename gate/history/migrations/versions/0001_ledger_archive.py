"""The ledger archive: ledger_rows and archive_cursor.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_rows",
        sa.Column("workspace_id", sa.String(40), primary_key=True),
        sa.Column("at_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("balance_after_micros", sa.BigInteger, nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("user_name", sa.Text),
        sa.Column("group_name", sa.Text),
        sa.Column("contact", sa.Text),
        sa.Column("from_number", sa.Text),
        sa.Column("to_number", sa.Text),
        sa.Column("direction", sa.String(16)),
        sa.Column("source", sa.Text),
        sa.Column("extra", sa.Text, nullable=False),
    )
    op.create_index("ix_ledger_rows_reference", "ledger_rows", ["workspace_id", "reference"])
    op.create_index("ix_ledger_rows_type", "ledger_rows", ["workspace_id", "type", "at_ms", "seq"])
    for name, column in (
        ("user", "user_name"),
        ("group", "group_name"),
        ("from", "from_number"),
        ("to", "to_number"),
        ("contact", "contact"),
    ):
        op.create_index(f"ix_ledger_rows_{name}", "ledger_rows", ["workspace_id", column, "at_ms"])
    op.create_table(
        "archive_cursor",
        sa.Column("workspace_id", sa.String(40), primary_key=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("balance_after_micros", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("archive_cursor")
    op.drop_table("ledger_rows")
