"""The `geomesh` command line: each command parses options and calls one service function.

Errors are mapped at the edge: a ``GeomeshError`` prints one clear line on stderr and
exits with status 2 (validation uses 0-3 by worst severity); anything else is a bug.
"""

from __future__ import annotations

# command modules register themselves on `cli`
from geomesh.cli import audit as _audit  # noqa: F401
from geomesh.cli import demo as _demo  # noqa: F401
from geomesh.cli import doctor as _doctor  # noqa: F401
from geomesh.cli import governance as _governance  # noqa: F401
from geomesh.cli import ingest as _ingest  # noqa: F401
from geomesh.cli import quarantine as _quarantine  # noqa: F401
from geomesh.cli import sources as _sources  # noqa: F401
from geomesh.cli import users as _users  # noqa: F401
from geomesh.cli import validate as _validate  # noqa: F401
from geomesh.cli._base import cli, main

__all__ = ["cli", "main"]
