"""Object storage behind one interface: a local directory (default) or S3-compatible.

Keys are relative POSIX paths inside an *area* (``staging``, ``quarantine``,
``production`` or ``meta``). Writes never expose a partial object: the local store
writes a temporary file in the target directory, fsyncs and renames; S3 PUTs are
atomic by the protocol. Content-addressed keys come from :func:`object_key`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from geomesh import faults
from geomesh.errors import StorageError, UnsafePath

Area = Literal["staging", "quarantine", "production", "meta"]
AREAS: tuple[Area, ...] = ("staging", "quarantine", "production", "meta")
TMP_PREFIX = ".tmp-"
#: put_many fsyncs each file of a batch this small; a larger one gets one barrier (sync)
_FSYNC_EACH_UP_TO = 16
_KEY_PART = re.compile(r"^[A-Za-z0-9._=+-]{1,200}$")


def object_key(hexdigest: str, suffix: str = ".tif") -> str:
    """Content-addressed key: ``sha256/ab/cdef….tif``."""
    if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise UnsafePath(f"{hexdigest!r} is not a sha256 hex digest")
    return f"sha256/{hexdigest[:2]}/{hexdigest[2:]}{suffix}"


def check_key(key: str) -> str:
    """Reject keys that could escape their area: absolute, '..', empty or odd parts."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise UnsafePath(f"storage key {key!r} is not a relative POSIX path")
    for part in key.split("/"):
        if part in (".", "..") or not _KEY_PART.match(part) or part.startswith(TMP_PREFIX):
            raise UnsafePath(
                f"storage key {key!r} has an unsafe part {part!r}; "
                "use letters, digits, '.', '_', '-', '=' and '+' only"
            )
    return key


class ObjectStore(Protocol):
    """What geomesh needs from object storage."""

    #: ``put_file`` links the given file itself into place (no copy of its bytes), so a
    #: file written to disk (fsync) before it is staged costs staging nothing more
    adopts_files: bool

    def put_file(self, area: Area, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` atomically (no-op if it exists)."""

    def put_bytes(self, area: Area, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` atomically; without ``overwrite`` an existing key is kept."""

    def put_many(self, area: Area, entries: Iterable[tuple[str, bytes]]) -> None:
        """Store many new objects (key, bytes); each appears atomically, existing keys are
        kept, and all are durable when the call returns."""

    def get_bytes(self, area: Area, key: str) -> bytes: ...

    def exists(self, area: Area, key: str) -> bool: ...

    def size(self, area: Area, key: str) -> int: ...

    def stamp(self, area: Area, key: str) -> str:
        """What changes whenever the object's bytes may have: ``<size>:<mtime ns>`` (local)
        or ``<size>:<ETag>`` (S3); the key of cached checks of the object."""
        ...

    def copy(self, src_area: Area, dst_area: Area, key: str) -> None:
        """Copy an object between areas (no-op if the destination exists)."""

    def delete(self, area: Area, key: str) -> None:
        """Delete if present."""

    def list(self, area: Area, prefix: str = "") -> Iterator[str]: ...

    def gdal_path(self, area: Area, key: str) -> str:
        """A path rasterio/GDAL can open (a local path or ``/vsis3/…``)."""

    def open_local(self, area: Area, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local file with the object's bytes for the duration of the context."""

    def describe(self) -> str: ...

    def url(self, area: Area, key: str) -> str:
        """A URL naming the object (a local path, or ``s3://bucket/key``) for hrefs."""

    def gdal_env(self) -> dict[str, Any]:
        """``rasterio.Env`` keyword arguments needed to read :meth:`gdal_path` (may be empty)."""


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_dirs(path: Path) -> None:
    """Create the folder ``path`` and its missing parents, each made durable in its own
    parent (fsynced after the mkdir): without that, a power loss could drop a new folder,
    and with it a file that was fsynced into it and that a committed row points at (a
    folder that exists costs one stat)."""
    missing: list[Path] = []
    folder = path
    while not folder.is_dir() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # a concurrent writer made it (or a file is in the way)
            if not folder.is_dir():
                raise
        fsync_dir(folder.parent)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` via a temp file in the same directory, fsync, rename."""
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            faults.point("write_bytes.partial")
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("write_bytes.before_rename")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_copy_file(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` through a temp file in the target directory."""
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            out.write(inp.read(1 << 16))
            faults.point("copy_file.partial")
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        faults.point("copy_file.before_rename")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def _link_into_place(src: Path, target: Path) -> bool:
    """Hard-link a complete, fsynced file into place (free on one filesystem); False if not possible."""
    make_dirs(target.parent)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"
    try:
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
    except OSError:
        return False
    faults.point("put_file.before_rename")
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return True


class LocalStore:
    """Objects as files under ``root/<area>/<key>``."""

    adopts_files = True

    def __init__(self, root: Path, prefixes: dict[Area, str] | None = None) -> None:
        self.root = root.resolve()
        self.prefixes: dict[Area, str] = {a: a for a in AREAS}
        if prefixes:
            self.prefixes.update(prefixes)
        self._bases: dict[Area, Path] = {}

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _base(self, area: Area) -> Path:
        """The resolved folder of ``area`` (resolved once: it is ours, under the root)."""
        base = self._bases.get(area)
        if base is None:
            base = self._bases[area] = (self.root / self.prefixes[area]).resolve()
        return base

    def path(self, area: Area, key: str) -> Path:
        check_key(key)
        base = self._base(area)
        p = (base / key).resolve()
        if base not in p.parents:
            raise UnsafePath(f"storage key {key!r} resolves outside {base}")
        return p

    def put_file(self, area: Area, key: str, path: Path) -> None:
        target = self.path(area, key)
        if target.exists():
            return
        try:
            if not _link_into_place(path, target):
                atomic_copy_file(path, target)
        except OSError as exc:
            raise StorageError(f"cannot store {key} in {target.parent}: {exc.strerror}") from exc

    def put_bytes(self, area: Area, key: str, data: bytes, *, overwrite: bool = False) -> None:
        target = self.path(area, key)
        if target.exists() and not overwrite:
            return
        try:
            atomic_write_bytes(target, data)
        except OSError as exc:
            raise StorageError(f"cannot store {key} in {target.parent}: {exc.strerror}") from exc

    def put_many(self, area: Area, entries: Iterable[tuple[str, bytes]]) -> None:
        """Temp file per object (not fsynced one by one: 100k fsyncs take minutes), one
        durability barrier for the batch, then the renames: a crash before the barrier
        leaves only temporary files, and a visible file is always complete and durable."""
        pending: list[tuple[Path, Path]] = []
        try:
            for key, data in entries:
                target = self.path(area, key)
                if target.exists():
                    continue
                make_dirs(target.parent)
                fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
                pending.append((Path(tmp_name), target))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    if len(pending) <= _FSYNC_EACH_UP_TO:
                        fh.flush()
                        os.fsync(fh.fileno())
            faults.point("put_many.written")
            if len(pending) > _FSYNC_EACH_UP_TO:
                os.sync()  # one barrier for the whole batch
            for n, (src, dst) in enumerate(pending):
                os.replace(src, dst)
                if n == 0:
                    faults.point("put_many.partly_renamed")
            for folder in {dst.parent for _, dst in pending}:
                fsync_dir(folder)
        except OSError as exc:
            for src, _ in pending:
                with contextlib.suppress(OSError):
                    src.unlink()
            raise StorageError(f"cannot store objects in {self.root}: {exc.strerror}") from exc
        except BaseException:
            for src, _ in pending:
                with contextlib.suppress(OSError):
                    src.unlink()
            raise

    def get_bytes(self, area: Area, key: str) -> bytes:
        try:
            return self.path(area, key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"object {area}/{key} is missing from {self.root}") from exc

    def exists(self, area: Area, key: str) -> bool:
        return self.path(area, key).is_file()

    def size(self, area: Area, key: str) -> int:
        try:
            return self.path(area, key).stat().st_size
        except FileNotFoundError as exc:
            raise StorageError(f"object {area}/{key} is missing from {self.root}") from exc

    def stamp(self, area: Area, key: str) -> str:
        try:
            st = self.path(area, key).stat()
        except FileNotFoundError as exc:
            raise StorageError(f"object {area}/{key} is missing from {self.root}") from exc
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def copy(self, src_area: Area, dst_area: Area, key: str) -> None:
        src = self.path(src_area, key)
        dst = self.path(dst_area, key)
        if dst.exists():
            return
        if not src.exists():
            raise StorageError(f"object {src_area}/{key} is missing from {self.root}")
        make_dirs(dst.parent)
        # a hard link is atomic and free; fall back to a copy across filesystems
        tmp = dst.parent / f"{TMP_PREFIX}{os.getpid()}-{dst.name}"
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.link(src, tmp)
            faults.point("copy.before_rename")
            os.replace(tmp, dst)
            fsync_dir(dst.parent)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            atomic_copy_file(src, dst)

    def delete(self, area: Area, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(area, key).unlink()

    def list(self, area: Area, prefix: str = "") -> Iterator[str]:
        base = self.root / self.prefixes[area]
        if not base.exists():
            return
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.name.startswith(TMP_PREFIX):
                rel = p.relative_to(base).as_posix()
                if rel.startswith(prefix):
                    yield rel

    def gdal_path(self, area: Area, key: str) -> str:
        return str(self.path(area, key))

    def url(self, area: Area, key: str) -> str:
        return str(self.path(area, key))

    def gdal_env(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def open_local(self, area: Area, key: str) -> Iterator[Path]:
        p = self.path(area, key)
        if not p.exists():
            raise StorageError(f"object {area}/{key} is missing from {self.root}")
        yield p

    def temp_files(self) -> Iterator[Path]:
        """Leftover temporary files from interrupted writes (for `geomesh doctor`)."""
        if self.root.exists():
            yield from (p for p in self.root.rglob(f"{TMP_PREFIX}*") if p.is_file())
