"""What a read costs in SQL: every statement an engine runs inside a block (issue 16 tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextmanager
def executed(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every (SQL statement, parameters) ``engine`` runs inside the block."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((sql, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` runs inside the block (what a read model costs);
    the list is filled when the block ends."""
    sql: list[str] = []
    with executed(engine) as seen:
        yield sql
    sql.extend(s for s, _ in seen)
