"""Where a CLI command acts: its workspace and the channel its audit events record.

Imported by the commands that touch a workspace (the database and the object store);
``geomesh --help`` never loads it. Proving who acts is :mod:`geomesh.cli._identity`, loaded
only by the commands that change state.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import TYPE_CHECKING

from geomesh.audit_info import Channel
from geomesh.settings import load_settings
from geomesh.workspace import Workspace

if TYPE_CHECKING:  # a config is given by commands that loaded one
    from geomesh.config import ProductConfig


def cli_channel() -> dict[str, str]:
    """The channel every audit event of this CLI process records: OS user and host."""
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        os_user = f"uid:{os.getuid()}"
    return {"name": Channel.cli.value, "os_user": os_user, "host": socket.gethostname()}


def open_workspace(config: ProductConfig | None = None) -> Workspace:
    ws = Workspace.open(load_settings(), config=config)
    ws.channel = cli_channel()
    return ws
