"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25

PRE-RELEASE: while no catalog has been deployed this revision creates the tables from
the current models. Before the first release it is regenerated as explicit operations
(`alembic revision --autogenerate`), and every change after that is a new revision.
"""

from __future__ import annotations

from alembic import op
from sqlmodel import SQLModel

import geomesh.models  # noqa: F401

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    SQLModel.metadata.create_all(bind=op.get_bind())
    # the audit chain head exists from the start, so concurrent first appenders lock it
    # instead of racing to insert it
    op.execute("INSERT INTO audithead (id, last_seq, last_hash) VALUES (1, 0, '" + "0" * 64 + "')")


def downgrade() -> None:
    SQLModel.metadata.drop_all(bind=op.get_bind())
