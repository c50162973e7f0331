"""Uploaded rasters are written to a temporary folder OUTSIDE the storage root.

Ingest then reads them like any local path. The folder is per signed-in user and the file
keeps its (sanitised) name, so uploading a reprocessed version of the same file later
maps to the same source key: ingest records it as a new version of that tile.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from streamlit.runtime.uploaded_file_manager import UploadedFile

from geomesh.errors import UnsafePath
from geomesh.workspace import Workspace

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def upload_dir(ws: Workspace, user: str) -> Path:
    base = Path(tempfile.gettempdir()).resolve() / "geomesh-uploads" / _SAFE.sub("_", user)
    root = ws.root.resolve()
    if base == root or root in base.parents:
        raise UnsafePath(f"the upload folder {base} would be inside the storage root {root}")
    base.mkdir(parents=True, exist_ok=True)
    return base


def save(ws: Workspace, user: str, files: Iterable[UploadedFile]) -> list[Path]:
    """Write each upload as <upload dir>/<safe name> (atomically) and return the paths."""
    folder = upload_dir(ws, user)
    paths: list[Path] = []
    for f in files:
        name = _SAFE.sub("_", Path(f.name).name).lstrip(".") or "upload.tif"
        target = folder / name
        tmp = folder / f".part-{name}"
        tmp.write_bytes(f.getvalue())
        tmp.replace(target)
        paths.append(target)
    return paths


def discard(paths: Iterable[str]) -> None:
    """Remove uploaded copies once ingested (the store holds the COGs now)."""
    for p in paths:
        path = Path(p)
        if path.parent.parent.name == "geomesh-uploads" and path.is_file():
            path.unlink()
