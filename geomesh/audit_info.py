"""What a unit of work carries to the audit chain, and the chain head's checkpoints.

``Workspace.transaction`` hands each unit of work the chain's HMAC key and the channel the
change came from in ``Session.info`` (:func:`keyed`, :data:`CHANNEL_INFO`); after a write
commits, it stores the new head as a write-once checkpoint (:func:`write_checkpoint`).
:mod:`geomesh.audit` appends and verifies the events themselves. Nothing here touches the
database, so opening a workspace loads no ORM (a read-only CLI call starts without it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from enum import StrEnum
from typing import Any, Final

from geomesh.errors import AuditKeyError
from geomesh.storage import ObjectStore

#: ``Session.info`` key of the audit chain's HMAC key (set by ``Workspace.transaction``)
KEY_INFO: Final = "geomesh.audit_key"
#: ``Session.info`` key of the newest (seq, hash) this unit of work appended
HEAD_INFO: Final = "geomesh.audit_head"
#: ``Session.info`` key of where the change came from (``{"name": "cli", "os_user", "host"}``,
#: set by ``Workspace.transaction``); recorded, hashed, as ``details["channel"]``
CHANNEL_INFO: Final = "geomesh.channel"
#: where checkpoints live in the object store's ``meta`` area
CHECKPOINT_PREFIX: Final = "audit/checkpoints/"
MIN_KEY_BYTES: Final = 32


class Channel(StrEnum):
    """Where a state change came from (recorded in each audit event's ``details``)."""

    app = "app"
    cli = "cli"
    webhook = "webhook"


def keyed(key: bytes) -> dict[str, Any]:
    """The ``Session.info`` that lets a unit of work append events."""
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"the audit key has {len(key)} bytes; it needs at least {MIN_KEY_BYTES}",
            hint="set GEOMESH_AUDIT_KEY to a long random value, or remove it to use the key "
            "file geomesh creates",
        )
    return {KEY_INFO: key}


def checkpoint_mac(key: bytes, seq: int, head_hash: str) -> str:
    return hmac.new(key, f"checkpoint:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


def checkpoint_key(seq: int) -> str:
    return f"{CHECKPOINT_PREFIX}{seq:012d}.json"


def checkpoint_bytes(key: bytes, seq: int, head_hash: str) -> bytes:
    body = {"seq": seq, "hash": head_hash, "mac": checkpoint_mac(key, seq, head_hash)}
    return json.dumps(body, sort_keys=True).encode()


def write_checkpoint(store: ObjectStore, key: bytes, seq: int, head_hash: str) -> None:
    """Store the chain head once (an existing checkpoint object is never replaced)."""
    store.put_bytes("meta", checkpoint_key(seq), checkpoint_bytes(key, seq, head_hash))
