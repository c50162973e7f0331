"""The CLI starts light: `geomesh --help` imports no heavy library, every command still loads.

The root group lists commands from a registry (`geomesh.cli._base.COMMANDS`) and imports a
command's module only when it runs; these tests keep the registry equal to the commands.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from geomesh.cli import cli
from geomesh.cli._base import COMMANDS

#: what `geomesh --help` must not import (each costs from tens of ms to a second)
HEAVY = (
    "rasterio",
    "rio_cogeo",
    "rio_tiler",
    "pystac",
    "pystac_client",
    "sqlmodel",
    "sqlalchemy",
    "dask",
    "distributed",
    "obstore",
    "pyproj",
    "shapely",
    "numpy",
    "jsonschema",
    "starlette",
    "uvicorn",
)


def _modules_loaded_by(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    code = (
        "import json, sys\n"
        "from geomesh.cli import cli\n"
        "try:\n"
        f"    cli.main({argv!r}, prog_name='geomesh', standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_help_imports_no_heavy_library() -> None:
    loaded = _modules_loaded_by(["--help"])
    assert {m.split(".")[0] for m in loaded} & set(HEAVY) == set()
    assert not any(m.startswith("geomesh.services") for m in loaded)


#: what a read-only command such as `geomesh items list` must not import: GDAL, STAC,
#: geometry and the identity, migration and delivery stacks belong to other commands
NOT_FOR_READING = (
    "rasterio",
    "rio_cogeo",
    "pystac",
    "rustac",
    "pyproj",
    "shapely",
    "alembic",
    "httpx",
    "tenacity",
    "dask",
)


#: what `items list` must not load: the ORM and the tables it maps (the list reads Core
#: statements over ``geomesh.tables``), nor the audit chain or the identity stack.
#: ``sqlmodel`` itself is in ``sys.modules`` as ``lazy_loader``'s stub (``geomesh.db``),
#: so its submodules tell whether it was imported.
NO_ORM = (
    "sqlmodel.main",
    "sqlalchemy.orm",
    "geomesh.models",
    "geomesh.audit",
    "geomesh.auth",
    "argon2",
)


def test_items_list_reads_without_the_orm(tmp_path: Path) -> None:
    """`items list` opens a workspace and reads with Core statements: no ORM, no more."""
    env = {**os.environ, "GEOMESH_STORAGE_ROOT": str(tmp_path / "root")}
    env.pop("GEOMESH_DATABASE_URL", None)
    env.pop("GEOMESH_OBJECT_STORE", None)
    subprocess.run(  # the first call creates and migrates the catalog (alembic, once)
        [sys.executable, "-m", "geomesh.cli", "items", "list"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    loaded = _modules_loaded_by(["items", "list"], env=env)
    assert {"sqlalchemy", "geomesh.services.queries.item_list"} <= loaded
    assert {m.split(".")[0] for m in loaded} & set(NOT_FOR_READING) == set()
    assert loaded & set(NO_ORM) == set()
    others = {m for m in loaded if m.startswith("geomesh.services.queries.")}
    assert others == {"geomesh.services.queries.item_list"}
    assert "geomesh.services.auth_session" not in loaded  # no proof needed to read


def test_the_orm_check_sees_a_command_that_reads_with_it(tmp_path: Path) -> None:
    """The same probe sees the ORM when `items show` (an ORM read) runs."""
    env = {**os.environ, "GEOMESH_STORAGE_ROOT": str(tmp_path / "root")}
    env.pop("GEOMESH_DATABASE_URL", None)
    env.pop("GEOMESH_OBJECT_STORE", None)
    loaded = _modules_loaded_by(["items", "show", "no-such-item"], env=env)
    assert {"sqlmodel.main", "sqlalchemy.orm", "geomesh.models"} <= loaded


def test_the_check_can_fail_a_command_that_loads_the_stack() -> None:
    """The same probe sees the heavy stack when a command that needs it runs."""
    loaded = _modules_loaded_by(["inspect", "--help"])
    assert {"rasterio", "sqlmodel"} <= {m.split(".")[0] for m in loaded}


def test_the_registry_names_every_command_with_its_own_help() -> None:
    for module in {m for m, _ in COMMANDS.values()}:
        importlib.import_module(f"geomesh.cli.{module}")
    assert set(cli.commands) == set(COMMANDS)
    for name, command in cli.commands.items():
        module, help_line = COMMANDS[name]
        assert command.callback is not None
        assert command.callback.__module__ == f"geomesh.cli.{module}", name
        assert command.get_short_help_str(limit=1000) == help_line, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_loads_on_demand(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name}" in result.output or f"Usage: geomesh {name}" in result.output
