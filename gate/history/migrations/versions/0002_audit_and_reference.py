"""The audit log's archive, and an index to find any workspace's rows by reference.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ledger_rows_reference_any", "ledger_rows", ["reference"])
    op.create_table(
        "audit_entries",
        sa.Column("workspace_id", sa.String(40), primary_key=True),
        sa.Column("stream_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("stream_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("person", sa.Text, nullable=False),
        sa.Column("ip", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("before", sa.Text, nullable=False),
        sa.Column("after", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_entries_action", "audit_entries", ["workspace_id", "action"])


def downgrade() -> None:
    op.drop_table("audit_entries")
    op.drop_index("ix_ledger_rows_reference_any", "ledger_rows")
