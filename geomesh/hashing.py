"""Streaming SHA-256 and the multihash form used by the STAC file extension."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from geomesh.errors import StacError

CHUNK = 1 << 20
SHA256_MULTIHASH_PREFIX = "1220"  # sha2-256 function code 0x12, digest length 0x20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_stream(fh: BinaryIO) -> tuple[str, int]:
    """Hex digest and byte count of a stream, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_mapped(fh: BinaryIO, *, started: Callable[[], object] | None = None) -> tuple[str, int]:
    """Hex digest and size of an open file, hashed through a memory map: one pass with no
    copy and the GIL released throughout (~15 % faster than :func:`sha256_stream`). Only for
    a file nobody else can truncate meanwhile (a file this process just wrote): a mapped
    file cut short under it kills the process (SIGBUS) instead of raising. ``started`` is
    called just before the hash runs."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        return hashlib.sha256().hexdigest(), 0
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        if started is not None:
            started()
        return hashlib.sha256(mapped).hexdigest(), size


def sha256_file(path: str | Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def to_multihash(hexdigest: str) -> str:
    return SHA256_MULTIHASH_PREFIX + hexdigest


def parse_multihash(value: str) -> str:
    """Return the sha256 hex digest inside a ``file:checksum`` multihash, or raise."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]+", value or ""):
        raise StacError(f"file:checksum {value!r} is not a hex multihash")
    v = value.lower()
    if not v.startswith("12"):
        raise StacError(
            f"file:checksum uses multihash function 0x{v[:2]}, not sha2-256 (0x12)",
            hint="recompute with sha256 and write '1220' + hexdigest",
        )
    if not v.startswith(SHA256_MULTIHASH_PREFIX) or not _HEX64.match(v[4:]):
        raise StacError(
            "file:checksum is not a complete sha2-256 multihash ('1220' + 64 hex digits)"
        )
    return v[4:]


def is_sha256_hex(value: str) -> bool:
    return bool(_HEX64.match(value))
