"""Uploads from the app's Ingest page: role checked first, size-limited, private, removed.

* :func:`save_uploads` checks that the actor may ingest BEFORE a byte is written, refuses
  a file larger than ``GEOMESH_UPLOAD_MAX_MB`` (by its declared size, and again while
  copying), and writes each file to ``<storage root>/uploads/<user>/`` — folders of mode
  0700, files of mode 0600, written under a ``.tmp-`` name (which ``geomesh doctor``
  collects after a crash) and renamed. The file keeps its sanitised name, so uploading a
  reprocessed version of the same file later maps to the same source key (a new version
  of that tile).
* :func:`discard_uploads` removes them again; the page calls it after every dry run and
  every ingest, failed or not (the store holds the COGs).
* :func:`app_policy` is the opening policy of the app: untrusted (import directories and
  allowed URL prefixes only, the product's drivers) plus the user's own upload folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, Protocol

from geomesh import auth
from geomesh.config import ProductConfig
from geomesh.errors import UnsafePath, UploadRejected
from geomesh.opening import OpeningPolicy
from geomesh.storage import TMP_PREFIX
from geomesh.workspace import Workspace

#: folder under the storage root that holds uploads in flight (never an object store area)
UPLOADS_DIR: Final = "uploads"
CHUNK: Final = 1 << 20
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class Upload(Protocol):
    """What the page hands over (Streamlit's ``UploadedFile`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


def upload_limit_mb(ws: Workspace) -> int:
    return ws.settings.upload_max_mb


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; an old folder is fixed too
    return path


def user_upload_path(ws: Workspace, user: str) -> Path:
    """``<storage root>/uploads/<user>`` (not created)."""
    base = (ws.root / UPLOADS_DIR).resolve()
    folder = base / (_SAFE.sub("_", user).lstrip(".") or "_")
    if folder.parent != base:
        raise UnsafePath(f"user name {user!r} does not make a safe upload folder")
    return folder


def upload_dir(ws: Workspace, user: str) -> Path:
    """``<storage root>/uploads/<user>``: created with mode 0700 (and its parent)."""
    folder = user_upload_path(ws, user)
    _private_dir(folder.parent)
    return _private_dir(folder)


def safe_name(name: str) -> str:
    return _SAFE.sub("_", Path(name).name).lstrip(".") or "upload.tif"


def save_uploads(ws: Workspace, actor: str, files: Sequence[Upload]) -> list[Path]:
    """Check the role, then the sizes, then write each upload; return the paths.

    Nothing is written when the actor may not ingest or a file is over the limit; a
    failure half-way removes what this call wrote.
    """
    with ws.read() as session:
        auth.require(session, actor, "ingest")
    if not files:
        return []
    limit_mb = upload_limit_mb(ws)
    limit = limit_mb << 20
    for f in files:
        if f.size > limit:
            raise UploadRejected(
                f"upload {safe_name(f.name)!r} is {f.size / (1 << 20):.1f} MiB; the limit is "
                f"{limit_mb} MiB per file (GEOMESH_UPLOAD_MAX_MB)",
                hint="split the scene into tiles, or ask an operator to ingest it from the "
                "command line",
            )
    folder = upload_dir(ws, actor)
    written: list[Path] = []
    try:
        for f in files:
            written.append(_write_one(folder, f, limit, limit_mb))
    except BaseException:
        discard_uploads(ws, actor, written)
        raise
    return written


def _write_one(folder: Path, f: Upload, limit: int, limit_mb: int) -> Path:
    name = safe_name(f.name)
    target = folder / name
    tmp = folder / f"{TMP_PREFIX}upload-{os.getpid()}-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        total = 0
        f.seek(0)
        with os.fdopen(fd, "wb") as out:
            while chunk := f.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise UploadRejected(
                        f"upload {name!r} is larger than the limit of {limit_mb} MiB per file "
                        "(GEOMESH_UPLOAD_MAX_MB)"
                    )
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def discard_uploads(ws: Workspace, user: str, paths: Iterable[str | Path]) -> None:
    """Remove upload copies (only files inside the user's upload folder are touched)."""
    base = user_upload_path(ws, user)
    for p in paths:
        path = Path(p)
        if path.parent.resolve() == base and path.is_file() and not path.is_symlink():
            path.unlink()


def app_policy(ws: Workspace, config: ProductConfig, user: str) -> OpeningPolicy:
    """The app's opening policy: untrusted, plus the user's own upload folder."""
    return OpeningPolicy.untrusted(
        ws.settings, config, extra_dirs=(user_upload_path(ws, user),), context="the app"
    )
