"""The `geomesh` command line: each command parses options and calls one service function.

Errors are mapped at the edge: a ``GeomeshError`` prints one clear line on stderr and
exits with status 2 (validation uses 0-3 by worst severity); anything else is a bug.
Each command's module is imported when that command runs (``geomesh.cli._base.COMMANDS``).
"""

from __future__ import annotations

from geomesh.cli._base import cli, main

__all__ = ["cli", "main"]
