"""Core table clauses for the read paths that start without the ORM.

``sqlalchemy.table`` / ``column`` name the columns a statement reads, with the types that
convert them (JSON paths, timestamps); nothing is mapped and SQLModel is not imported, so
``geomesh items list`` reads the catalog in a process that never loads the ORM (issue 19:
a CLI that starts fast). :mod:`geomesh.models` stays the schema that Alembic migrates;
``tests/test_tables.py`` keeps every column here equal in name and type to the model's.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, TableClause, Text, column, table

#: ``Item``: the columns of a list of items
ITEM: Final[TableClause] = table(
    "item",
    column("id", String),
    column("product_id", String),
    column("state", String),
    column("source", Text),
    column("content_digest", String),
    column("size", Integer),
    column("submitted_by", String),
    column("supersedes", String),
    column("worst_severity", String),
    column("quarantine_reason", Text),
    column("stac", JSON),
    column("created_at", DateTime(timezone=True)),
    column("updated_at", DateTime(timezone=True)),
)

#: ``FindingRecord``: what counting open findings per item and severity reads
FINDING: Final[TableClause] = table(
    "finding",
    column("item_id", String),
    column("product_id", String),
    column("severity", String),
    column("open", Boolean),
)
