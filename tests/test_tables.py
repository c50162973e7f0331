"""`geomesh.tables` (the Core clauses read paths use without the ORM) matches the models."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, TableClause, column, table
from sqlmodel import SQLModel

import geomesh.models  # noqa: F401  (registers every table in SQLModel.metadata)
from geomesh import tables
from geomesh.enums import ItemState, Severity

CLAUSES = [tables.ITEM, tables.FINDING]


@pytest.mark.parametrize("clause", CLAUSES, ids=lambda c: c.name)
def test_every_column_is_the_models_in_name_and_type(clause: TableClause) -> None:
    model = SQLModel.metadata.tables[clause.name]
    for col in clause.c:
        assert col.name in model.c, f"{clause.name}.{col.name} is not a model column"
        mapped = model.c[col.name].type
        mapped = getattr(mapped, "impl_instance", mapped)  # SQLModel's AutoString: a String
        # the model's type is the clause's or a subclass (an Enum column is a String)
        assert isinstance(mapped, type(col.type)), (col.name, mapped, col.type)
        if getattr(col.type, "timezone", None) is not None:
            assert mapped.timezone == col.type.timezone, col.name


def test_the_check_fails_on_a_column_the_model_does_not_have() -> None:
    wrong = table("item", column("no_such_column", Integer))
    with pytest.raises(AssertionError, match="not a model column"):
        test_every_column_is_the_models_in_name_and_type(wrong)


def test_enum_columns_store_the_names_the_core_reads_compare() -> None:
    """Core reads compare and parse the stored text as enum names; the names equal the
    values, so the ORM (names) and JSON (values) agree."""
    assert all(s.name == s.value for s in ItemState)
    assert all(s.name == s.value for s in Severity)
