"""S3-compatible object storage (AWS S3, SeaweedFS, MinIO, …) behind ``ObjectStore``.

Each area (``staging``, ``quarantine``, ``production``, ``meta``) is a prefix in the main
bucket; ``quarantine`` may live in a bucket of its own. Keys are the same relative,
content-addressed POSIX keys as in the local store (``check_s3_key``: ``storage.check_key``
plus canonical form, since S3 does not normalise ``a/./b``).

Writes never expose a partial object:

- objects up to ``single_put_limit`` bytes go up in one PUT; without ``overwrite`` it is a
  conditional PUT (``If-None-Match: *``), so an existing object is kept as it is;
- larger files go up as a multipart upload, which becomes visible only when it completes.
  A HEAD first skips the upload when the key exists (keys are content-addressed, so an
  object under a key always has the same bytes).

Rasterio/GDAL read objects through ``/vsis3/`` (``gdal_path``) inside
``rasterio.Env(**store.gdal_env())``, or from a temporary local copy (``open_local``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store as _ObS3Store
from pydantic import SecretStr
from rasterio.session import Session as _RasterioSession

from geomesh.errors import ConfigError, StorageError, StoreUnavailable, UnsafePath
from geomesh.redact import redact, redact_url
from geomesh.storage import AREAS, Area, ObjectStore, check_key

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from geomesh.settings import Settings

#: files up to this size are uploaded in one (conditional) PUT, larger ones as multipart
SINGLE_PUT_LIMIT = 64 * 1024 * 1024
#: PUTs in flight in one put_many (many small published documents)
_PUT_WORKERS = 16
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}


def check_s3_key(key: str) -> str:
    """``storage.check_key`` plus canonical form: no empty, '.' or '..' segment at all.

    S3 does not normalise paths, so ``a/./b`` or ``a//b`` would name a different object
    than ``a/b``; refuse them instead of creating aliases.
    """
    check_key(key)
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(
                f"storage key {key!r} is not in canonical form (empty, '.' or '..' part); "
                "use plain relative paths like 'sha256/ab/cdef.tif'"
            )
    return key


@dataclass(frozen=True)
class _Place:
    """Where one area lives: a bucket and a prefix inside it ('' = the bucket root)."""

    bucket: str
    prefix: str

    def path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def contains(self, other: _Place) -> bool:
        if self.bucket != other.bucket:
            return False
        if not self.prefix:
            return True
        return other.prefix == self.prefix or other.prefix.startswith(self.prefix + "/")


class _StaticS3Credentials(_RasterioSession):  # type: ignore[misc]
    """A rasterio session handing fixed S3 credentials to GDAL (no boto3 needed).

    rasterio refuses ``AWS_SECRET_ACCESS_KEY`` as a plain ``rasterio.Env`` option; a session
    object is its sanctioned way to pass credentials.
    """

    def __init__(self, options: Mapping[str, str]) -> None:
        self._options = dict(options)

    @classmethod
    def hascreds(cls, config: Mapping[str, Any]) -> bool:
        return "AWS_ACCESS_KEY_ID" in config and "AWS_SECRET_ACCESS_KEY" in config

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._options)

    def __repr__(self) -> str:
        return "<S3 credentials (redacted)>"


def _secret(value: SecretStr | str | None) -> SecretStr | None:
    if value is None or isinstance(value, SecretStr):
        return value
    return SecretStr(value)


class S3Store:
    """Objects under ``s3://<bucket>/<area prefix>/<key>`` (see the module docstring)."""

    adopts_files = False  # put_file uploads a copy of the bytes

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: SecretStr | str | None = None,
        secret_access_key: SecretStr | str | None = None,
        quarantine_bucket: str | None = None,
        allow_http: bool = False,
        prefixes: Mapping[Area, str] | None = None,
        tmp_dir: Path | None = None,
        single_put_limit: int = SINGLE_PUT_LIMIT,
        max_retries: int = 3,
        timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        for var, name in (
            ("GEOMESH_S3_BUCKET", bucket),
            ("GEOMESH_S3_QUARANTINE_BUCKET", quarantine_bucket),
        ):
            if name is not None and not _BUCKET.match(name):
                raise ConfigError(
                    f"{var}={name!r} is not a valid S3 bucket name; use 3-63 lower-case "
                    "letters, digits, '.' and '-', starting and ending with a letter or digit"
                )
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self._gdal_endpoint: str | None = None
        self._https = True
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"GEOMESH_S3_ENDPOINT={redact_url(self.endpoint)!r} is not an http(s) URL; "
                    "use e.g. https://s3.example.org or http://127.0.0.1:8333"
                )
            if parts.username or parts.password:
                raise ConfigError(
                    f"GEOMESH_S3_ENDPOINT={redact_url(self.endpoint)!r} contains credentials; "
                    "put them in GEOMESH_S3_ACCESS_KEY_ID and GEOMESH_S3_SECRET_ACCESS_KEY"
                )
            if parts.scheme == "http" and not allow_http:
                raise ConfigError(
                    f"GEOMESH_S3_ENDPOINT={self.endpoint!r} is plain http; "
                    "use https or set GEOMESH_S3_ALLOW_HTTP=true (trusted networks only)"
                )
            self._https = parts.scheme == "https"
            self._gdal_endpoint = parts.netloc + parts.path
        self.bucket = bucket
        self.quarantine_bucket = quarantine_bucket or bucket
        self.region = region
        self._access_key_id = _secret(access_key_id)
        self._secret_access_key = _secret(secret_access_key)
        if (self._access_key_id is None) != (self._secret_access_key is None):
            raise ConfigError(
                "S3 credentials are incomplete; set both GEOMESH_S3_ACCESS_KEY_ID and "
                "GEOMESH_S3_SECRET_ACCESS_KEY (or neither, to use the AWS environment)"
            )
        self.tmp_dir = tmp_dir
        self.single_put_limit = single_put_limit
        self.places = self._places(prefixes or {})

        config: S3Config = {"region": region}
        if self.endpoint is not None:
            config["endpoint"] = self.endpoint
            config["virtual_hosted_style_request"] = False
        if self._access_key_id is not None and self._secret_access_key is not None:
            config["access_key_id"] = self._access_key_id.get_secret_value()
            config["secret_access_key"] = self._secret_access_key.get_secret_value()
        client: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=10),
            "timeout": timeout,
        }
        retry: RetryConfig = {"max_retries": max_retries, "retry_timeout": timedelta(seconds=60)}
        self._stores: dict[str, _ObS3Store] = {
            b: _ObS3Store(b, config=config, client_options=client, retry_config=retry)
            for b in {p.bucket for p in self.places.values()}
        }

    def _places(self, prefixes: Mapping[Area, str]) -> dict[Area, _Place]:
        places: dict[Area, _Place] = {}
        for area in AREAS:
            prefix = prefixes.get(area, area).strip("/")
            if prefix:
                try:
                    check_s3_key(prefix)
                except UnsafePath as exc:
                    raise ConfigError(
                        f"the S3 prefix {prefix!r} of the {area} area is not a safe key prefix "
                        f"({exc.message}); fix GEOMESH_{area.upper()}_PREFIX"
                    ) from exc
            bucket = self.quarantine_bucket if area == "quarantine" else self.bucket
            places[area] = _Place(bucket, prefix)
        for a, pa in places.items():
            for b, pb in places.items():
                if a != b and pa.contains(pb):
                    raise ConfigError(
                        f"the S3 areas {a!r} (s3://{pa.bucket}/{pa.prefix}) and {b!r} "
                        f"(s3://{pb.bucket}/{pb.prefix}) overlap; give each area its own prefix"
                    )
        return places

    @classmethod
    def from_settings(cls, settings: Settings, *, tmp_dir: Path | None = None) -> S3Store:
        """The store described by the ``GEOMESH_S3_*`` and ``GEOMESH_*_PREFIX`` settings."""
        if not settings.s3_bucket:
            raise ConfigError(
                "GEOMESH_OBJECT_STORE=s3 needs a bucket; set GEOMESH_S3_BUCKET "
                "(and GEOMESH_S3_ENDPOINT for a store other than AWS S3)"
            )
        return cls(
            bucket=settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            quarantine_bucket=settings.s3_quarantine_bucket,
            allow_http=settings.s3_allow_http,
            prefixes={
                "staging": settings.staging_prefix,
                "quarantine": settings.quarantine_prefix,
                "production": settings.production_prefix,
                "meta": "meta",
            },
            tmp_dir=tmp_dir,
        )

    # ------------------------------------------------------------------ naming

    def describe(self) -> str:
        where = f" at {redact_url(self.endpoint)}" if self.endpoint else ""
        buckets = f"S3 bucket {self.bucket!r}"
        if self.quarantine_bucket != self.bucket:
            buckets += f" (quarantine in {self.quarantine_bucket!r})"
        return buckets + where

    def url(self, area: Area, key: str) -> str:
        """``s3://bucket/prefix/key`` of an object (for messages and STAC hrefs)."""
        place = self.places[area]
        return f"s3://{place.bucket}/{place.path(check_s3_key(key))}"

    def _locate(self, area: Area, key: str) -> tuple[_ObS3Store, str]:
        check_s3_key(key)
        place = self.places[area]
        return self._stores[place.bucket], place.path(key)

    # ------------------------------------------------------------------ errors

    def _redact(self, text: str) -> str:
        for secret in (self._secret_access_key, self._access_key_id):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "***")
        return redact(text)

    def _fail(self, op: str, area: Area, key: str, exc: BaseException) -> NoReturn:
        place = self.places[area]
        target = place.path(key) if key else (f"{place.prefix}/" if place.prefix else "")
        where = f"s3://{place.bucket}/{target}"
        text = str(exc)
        code = _S3_CODE.search(text)
        if code and code.group(1) == "NoSuchBucket":
            raise StorageError(
                f"S3 bucket {place.bucket!r} does not exist at {self.describe()}",
                hint="create it, or fix GEOMESH_S3_BUCKET / GEOMESH_S3_QUARANTINE_BUCKET",
            ) from None
        if isinstance(exc, FileNotFoundError | NotFoundError):
            raise StorageError(f"object {area}/{key} is missing from {where}") from None
        denied = (code is not None and code.group(1) in _DENIED_CODES) or " 403 " in text
        if denied or isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            raise StorageError(
                f"cannot {op} {where}: access denied" + (f" ({code.group(1)})" if code else ""),
                hint="check GEOMESH_S3_ACCESS_KEY_ID / GEOMESH_S3_SECRET_ACCESS_KEY "
                "and the bucket policy",
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        reason = self._redact(first)
        if len(reason) > 300:
            reason = reason[:300] + "…"
        # `from None`: the obstore exception's text may echo request details verbatim
        raise StoreUnavailable(
            f"cannot {op} {where} ({type(exc).__name__}): {reason}",
            hint=f"is {self.describe()} reachable?",
        ) from None

    # ------------------------------------------------------------------ reads

    def _head(self, area: Area, key: str) -> int | None:
        """Size of the object, or None when it does not exist."""
        store, path = self._locate(area, key)
        try:
            return int(obstore.head(store, path)["size"])
        except (FileNotFoundError, NotFoundError) as exc:
            if _S3_CODE.search(str(exc)):  # a NoSuchBucket body, not a plain 404
                self._fail("read", area, key, exc)
            return None
        except (BaseError, OSError) as exc:
            self._fail("read", area, key, exc)

    def exists(self, area: Area, key: str) -> bool:
        return self._head(area, key) is not None

    def size(self, area: Area, key: str) -> int:
        n = self._head(area, key)
        if n is None:
            self._fail("read", area, key, FileNotFoundError(key))
        return n

    def stamp(self, area: Area, key: str) -> str:
        store, path = self._locate(area, key)
        try:
            meta = obstore.head(store, path)
        except (FileNotFoundError, NotFoundError, BaseError, OSError) as exc:
            self._fail("read", area, key, exc)
        tag = meta.get("e_tag") or meta.get("version") or str(meta.get("last_modified"))
        return f"{meta['size']}:{tag}"

    def get_bytes(self, area: Area, key: str) -> bytes:
        store, path = self._locate(area, key)
        try:
            return bytes(obstore.get(store, path).bytes())
        except (BaseError, OSError) as exc:
            self._fail("read", area, key, exc)

    def list(self, area: Area, prefix: str = "") -> Iterator[str]:
        """Keys in ``area`` starting with ``prefix`` (a plain string prefix), sorted."""
        place = self.places[area]
        # obstore prefixes match whole path segments: list the enclosing "directory"
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        listing = place.path(directory) if directory else place.prefix
        strip = len(place.prefix) + 1 if place.prefix else 0
        keys: list[str] = []
        try:
            for chunk in obstore.list(self._stores[place.bucket], listing or None, chunk_size=1000):
                for meta in chunk:
                    rel = meta["path"][strip:]
                    if rel.startswith(prefix):
                        keys.append(rel)
        except (BaseError, OSError) as exc:
            self._fail("list", area, prefix, exc)
        yield from sorted(keys)

    def gdal_path(self, area: Area, key: str) -> str:
        place = self.places[area]
        return f"/vsis3/{place.bucket}/{place.path(check_s3_key(key))}"

    def gdal_config(self) -> dict[str, str]:
        """GDAL configuration options for ``/vsis3/`` (credentials included: never log it)."""
        opts: dict[str, str] = {
            "AWS_REGION": self.region,
            # opening a COG must not list its "directory" (slow, and may be forbidden)
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        }
        if self._gdal_endpoint is not None:
            opts["AWS_S3_ENDPOINT"] = self._gdal_endpoint
            opts["AWS_HTTPS"] = "YES" if self._https else "NO"
            opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
        if self._access_key_id is not None and self._secret_access_key is not None:
            opts["AWS_ACCESS_KEY_ID"] = self._access_key_id.get_secret_value()
            opts["AWS_SECRET_ACCESS_KEY"] = self._secret_access_key.get_secret_value()
        return opts

    def gdal_env(self) -> dict[str, Any]:
        """Keyword arguments for ``rasterio.Env(**store.gdal_env())`` to read ``gdal_path``.

        rasterio only accepts credentials through a session object, so they travel in
        ``session``; the other GDAL options are plain ``rasterio.Env`` options.
        """
        opts = self.gdal_config()
        creds: dict[str, str] = {
            k: opts.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in opts
        }
        env: dict[str, Any] = dict(opts)
        if creds:
            env["session"] = _StaticS3Credentials(creds)
        return env

    @contextlib.contextmanager
    def open_local(self, area: Area, key: str) -> Iterator[Path]:
        """Download the object to a temporary file, yield its path, remove it afterwards."""
        store, path = self._locate(area, key)
        suffix = PurePosixPath(key).suffix
        fd, tmp = tempfile.mkstemp(prefix="geomesh-s3-", suffix=suffix, dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    for chunk in obstore.get(store, path):
                        fh.write(chunk)
                except (BaseError, OSError) as exc:
                    self._fail("read", area, key, exc)
            yield Path(tmp)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # ------------------------------------------------------------------ writes

    def _put_once(self, area: Area, key: str, data: bytes | Path) -> None:
        """One conditional PUT: creates the object or keeps the existing one."""
        store, path = self._locate(area, key)
        try:
            obstore.put(store, path, data, mode="create", use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return  # someone stored it first; content-addressed, so the same bytes
        except NotSupportedError:
            # a store without conditional PUT: check, then a plain (atomic) PUT
            if not self.exists(area, key):
                try:
                    obstore.put(store, path, data, mode="overwrite", use_multipart=False)
                except (BaseError, OSError) as exc:
                    self._fail("write", area, key, exc)
        except (BaseError, OSError) as exc:
            self._fail("write", area, key, exc)

    def put_bytes(self, area: Area, key: str, data: bytes, *, overwrite: bool = False) -> None:
        if not overwrite:
            self._put_once(area, key, data)
            return
        store, path = self._locate(area, key)
        try:
            obstore.put(store, path, data, mode="overwrite", use_multipart=False)
        except (BaseError, OSError) as exc:
            self._fail("write", area, key, exc)

    def put_many(self, area: Area, entries: Iterable[tuple[str, bytes]]) -> None:
        """Conditional PUTs, several in flight (each atomic; existing keys are kept)."""
        batch = list(entries)
        if not batch:
            return
        with ThreadPoolExecutor(max_workers=min(_PUT_WORKERS, len(batch))) as pool:
            list(pool.map(lambda e: self._put_once(area, e[0], e[1]), batch))

    def put_file(self, area: Area, key: str, path: Path) -> None:
        if self.exists(area, key):
            return
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise StorageError(
                f"cannot store {key}: local file {path} is not readable ({exc.strerror})"
            ) from exc
        if size <= self.single_put_limit:
            self._put_once(area, key, path)
            return
        # multipart: invisible until complete, so readers never see a partial object
        store, target = self._locate(area, key)
        try:
            obstore.put(store, target, path, use_multipart=True)
        except (BaseError, OSError) as exc:
            self._fail("write", area, key, exc)

    def copy(self, src_area: Area, dst_area: Area, key: str) -> None:
        """Copy between areas (server-side within a bucket); no-op if the target exists."""
        if self.exists(dst_area, key):
            return
        size = self._head(src_area, key)
        if size is None:
            self._fail("copy", src_area, key, FileNotFoundError(key))
        src_store, src_path = self._locate(src_area, key)
        dst_store, dst_path = self._locate(dst_area, key)
        try:
            if src_store is dst_store:
                # CopyObject is atomic; "copy if not exists" is not portable, but the
                # key is content-addressed, so overwriting a racing copy changes nothing
                obstore.copy(src_store, src_path, dst_path, overwrite=True)
            elif size <= self.single_put_limit:
                data = bytes(obstore.get(src_store, src_path).bytes())
                self._put_once(dst_area, key, data)
            else:
                # big object to another bucket: through a temporary file, not through memory
                with self.open_local(src_area, key) as tmp:
                    obstore.put(dst_store, dst_path, tmp, use_multipart=True)
        except (BaseError, OSError) as exc:
            self._fail("copy", src_area, key, exc)

    def delete(self, area: Area, key: str) -> None:
        store, path = self._locate(area, key)
        try:
            obstore.delete(store, path)
        except (FileNotFoundError, NotFoundError):
            return
        except (BaseError, OSError) as exc:
            self._fail("delete", area, key, exc)

    # ------------------------------------------------------------------ health

    def check(self) -> None:
        """Raise ``StorageError`` unless every bucket is reachable with the credentials."""
        for area, place in self.places.items():
            try:
                stream = obstore.list(
                    self._stores[place.bucket], place.prefix or None, chunk_size=1
                )
                next(iter(stream), None)
            except (BaseError, OSError) as exc:
                self._fail("list", area, "", exc)


def gdal_env_for(store: ObjectStore) -> dict[str, Any]:
    """``rasterio.Env`` keyword arguments to read ``store.gdal_path(...)`` (empty for local)."""
    env = getattr(store, "gdal_env", None)
    return dict(env()) if callable(env) else {}
