"""Secrets stay secret: passwords only as argon2id hashes; webhook secrets, database and S3
credentials never in logs, audit events, outbox rows, exports or error messages.

Each test plants recognisable secret strings, runs real operations (the CLI in a child
process, with JSON logs also on stderr) and then greps everything the catalog keeps
(``_backend_clone.stored_bytes``: every byte under the storage root, the SQLite file and its
WAL, logs and exports included; on PostgreSQL + S3 also every column of every table and
every object of both buckets) and every line the commands printed. On PostgreSQL + S3 the
catalog's own credentials are planted too: a password in the database URL (trust
authentication ignores it) and the S3 secret key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from _backend_clone import Place, Places, child_env, stored_bytes
from _forkserver import ForkServer, Result
from identity_support import token_env
from rasterio.transform import from_origin
from sqlalchemy.engine import make_url
from sqlmodel import select

from geomesh.config import load_config
from geomesh.errors import PermissionDenied
from geomesh.models import User
from geomesh.services import auth_session, users

from conftest import EXAMPLE_CONFIG

INLINE_SECRET = "whsec-INLINE-5b1e0c7d9a"
ENV_SECRET = "whsec-ENV-8c2f41aa37"
CONFIG_DB_PASSWORD = "CfgDbPassw0rd-73ac"
ENV_DB_PASSWORD = "SuperSecret"
S3_SECRET = "S3SecretKey-9d8f7e6a5b"
PASSWORD = "Correct-Horse-Battery-42"
WRONG_PASSWORD = "Wrong-Guess-Password-17"
#: planted in the PostgreSQL URL of each catalog (trust authentication: never checked)
BACKEND_DB_PASSWORD = "PgUrlPassw0rd-6e2b"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    scratch = tmp_path_factory.mktemp("forkserver")
    srv = ForkServer(child_env(), scratch, scratch)
    yield srv
    srv.close()


@dataclass
class Catalog:
    place: Place
    places: Places
    #: the catalog's own credentials (postgres-s3: the database URL's password and the S3
    #: secret key; none on sqlite-local): they must not leak either
    credentials: list[str]

    @property
    def root(self) -> Path:
        return self.place.root

    def stored(self) -> bytes:
        """Everything the catalog keeps (``_backend_clone.stored_bytes``)."""
        return stored_bytes(self.places, self.place)


@pytest.fixture
def catalog(places: Places, tmp_path: Path) -> Iterator[Catalog]:
    """An empty catalog on the selected backend (the storage root is tmp_path/root)."""
    place = places.fresh(tmp_path / "root")
    credentials = []
    if place.database is not None:
        url = make_url(place.env["GEOMESH_DATABASE_URL"]).set(password=BACKEND_DB_PASSWORD)
        place.env["GEOMESH_DATABASE_URL"] = url.render_as_string(hide_password=False)
        credentials.append(BACKEND_DB_PASSWORD)
    if "GEOMESH_S3_SECRET_ACCESS_KEY" in place.env:
        credentials.append(place.env["GEOMESH_S3_SECRET_ACCESS_KEY"])
    yield Catalog(place, places, credentials)
    places.drop(place)


def run(server: ForkServer, catalog: Catalog, argv: list[str], **env: str) -> Result:
    full = catalog.place.process_env(GEOMESH_LOG_STDERR="1", **env)
    stdin = full.pop("STDIN", None)
    return server.run(argv, env=full, cwd=catalog.root.parent, stdin=stdin)


def assert_absent(secrets: list[str], *haystacks: bytes | str) -> None:
    for hay in haystacks:
        data = hay.encode() if isinstance(hay, str) else hay
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} leaked"


def _nocrs_tile(path: Path) -> Path:
    data = np.random.default_rng(7).integers(1, 10000, (1, 128, 128)).astype("uint16")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=128,
        height=128,
        count=1,
        dtype="uint16",
        nodata=0,
        transform=from_origin(545000.0, 4185000.0, 10, 10),
    ) as ds:
        ds.write(data)
        ds.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
    return path


class Receiver:
    """A loopback webhook receiver that answers 503 (so messages are retried and the error
    is recorded) and keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append((dict(self.headers.items()), body))
                self.send_response(503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------ passwords


def test_passwords_are_stored_only_as_argon2id_hashes(catalog: Catalog, server: ForkServer) -> None:
    ws = catalog.place.open()
    users.add_user(ws, actor="system", name="root", role="admin", password=PASSWORD)
    assert auth_session.sign_in(ws, "root", PASSWORD).role == "admin"
    with pytest.raises(PermissionDenied) as wrong:
        auth_session.sign_in(ws, "root", WRONG_PASSWORD)
    assert WRONG_PASSWORD not in str(wrong.value)
    with pytest.raises(PermissionDenied):
        auth_session.sign_in(ws, "nobody", WRONG_PASSWORD)
    token = token_env(ws, "root")["GEOMESH_TOKEN"]  # an API token is a secret too
    ws.close()
    # and through the CLI, the password on stdin (root proves who acts with its token)
    res = run(
        server,
        catalog,
        ["users", "add", "carol", "--role", "steward", "--password-stdin", "--actor", "root"],
        STDIN=PASSWORD + "2\n",
        GEOMESH_TOKEN=token,
    )
    assert res.returncode == 0, res.stderr
    # root proves who acts with its password on stdin; a wrong one is refused
    proven = run(
        server,
        catalog,
        ["users", "role", "carol", "analyst", "--actor", "root", "--password-stdin"],
        STDIN=PASSWORD + "\n",
    )
    assert proven.returncode == 0, proven.stderr
    refused = run(
        server,
        catalog,
        ["users", "role", "carol", "viewer", "--actor", "root", "--password-stdin"],
        STDIN=WRONG_PASSWORD + "\n",
    )
    assert refused.returncode == 2 and "wrong password" in refused.stderr
    listed = run(server, catalog, ["users", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    assert {u["name"]: u["role"] for u in json.loads(listed.stdout)}["carol"] == "analyst"

    ws = catalog.place.open(migrate=False)
    with ws.read() as s:
        rows = s.exec(select(User)).all()
    ws.close()
    hashes = {u.name: u.password_hash for u in rows}
    assert hashes["root"] is not None and hashes["root"].startswith("$argon2id$")
    assert hashes["carol"] is not None and hashes["carol"].startswith("$argon2id$")
    assert "password_hash" not in listed.stdout and "$argon2" not in listed.stdout
    stored = catalog.stored()
    assert hashes["carol"].encode() in stored  # the grep reads the users' table
    assert_absent(
        [PASSWORD, WRONG_PASSWORD, token, *catalog.credentials],
        stored,
        res.stdout + res.stderr + listed.stdout + listed.stderr + proven.stderr + refused.stderr,
    )


# ------------------------------------------------------------------ webhook and database secrets


def test_secrets_never_reach_logs_audit_outbox_exports_or_output(
    tmp_path: Path, catalog: Catalog, server: ForkServer, receiver: Receiver
) -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["storage"] = {
        # the environment's URL wins, but the config (with its password) is stored
        "database_url": f"postgresql+psycopg://geomesh:{CONFIG_DB_PASSWORD}@db.internal/geomesh"
    }
    data["governance"] = {
        "escalation": [
            {"name": "inline", "url": receiver.url, "secret": INLINE_SECRET},
            {"name": "fromenv", "url": receiver.url, "secret_env": "GEOMESH_TEST_HOOK_SECRET"},
        ]
    }
    cfg = tmp_path / "product.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {
        "GEOMESH_DATABASE_URL": catalog.place.database_url,
        "GEOMESH_TEST_HOOK_SECRET": ENV_SECRET,
    }
    tile = _nocrs_tile(tmp_path / "nocrs.tif")
    outputs: list[Result] = []

    def cli(*argv: str) -> Result:
        res = run(server, catalog, list(argv), **env)
        assert "Traceback" not in res.stderr, res.stderr
        outputs.append(res)
        return res

    assert cli("ingest", str(cfg), str(tile)).returncode == 0  # P2: quarantined + 2 webhooks
    delivered = cli("outbox", "deliver", "--config", str(cfg))
    assert delivered.returncode == 0, delivered.stderr
    cli("outbox", "deliver")  # without the config: the inline secret is not in the database
    cli("outbox", "list", "--json")
    export = tmp_path / "audit.jsonl"
    assert cli("audit", "export", str(cfg), "-o", str(export)).returncode == 0
    cli("items", "list", "--json")
    cli("quarantine", "list", "--json")
    cli("doctor", "--json")

    # the secrets were used: both deliveries were signed with them
    signatures = {h.get("X-Geomesh-Signature") for h, _ in receiver.requests}
    bodies = {body for _, body in receiver.requests}
    expected = {
        "sha256=" + hmac.new(s.encode(), b, hashlib.sha256).hexdigest()
        for s in (INLINE_SECRET, ENV_SECRET)
        for b in bodies
    }
    assert len(receiver.requests) >= 2 and signatures <= expected and len(signatures) >= 2
    rows = json.loads(outputs[3].stdout)
    assert rows and all(r["last_error"] for r in rows)

    stored = catalog.stored()
    assert b"II*\x00" in stored  # the grep reads the stored objects (the tile's COG)
    assert rows[0]["url"].encode() in stored  # … and the outbox table
    assert_absent(
        [INLINE_SECRET, ENV_SECRET, CONFIG_DB_PASSWORD, *catalog.credentials],
        stored,
        export.read_bytes(),
        *(r.stdout + r.stderr for r in outputs),
        *(b for _, b in receiver.requests),
    )


def test_a_config_never_stores_its_database_password(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["storage"] = {"database_url": f"postgresql+psycopg://u:{CONFIG_DB_PASSWORD}@db/x"}
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(data))
    config = load_config(cfg)
    assert config.storage.database_url is not None
    assert CONFIG_DB_PASSWORD in config.storage.database_url  # usable in the process
    stored = json.dumps(config.to_json_dict())
    assert CONFIG_DB_PASSWORD not in stored and "db/x" in stored


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{ENV_DB_PASSWORD}@127.0.0.1:1/db",  # nothing listens
        f"postgresql+psycopg://u:{ENV_DB_PASSWORD}@127.0.0.1:notaport/db",  # malformed
        f"mysql://u:{ENV_DB_PASSWORD}@127.0.0.1:1/db",  # no driver installed
    ],
)
def test_a_database_password_is_not_in_the_error(
    url: str, catalog: Catalog, server: ForkServer
) -> None:
    catalog.root.mkdir()
    for argv in (["items", "list"], ["doctor"], ["users", "list"]):
        res = run(server, catalog, argv, GEOMESH_DATABASE_URL=url)
        assert res.returncode == 2, (argv, res.returncode, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("{")]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        stored = catalog.stored()
        assert_absent([ENV_DB_PASSWORD, *catalog.credentials], res.stdout, res.stderr, stored)


def test_s3_credentials_are_not_in_errors_or_logs(
    tmp_path: Path, catalog: Catalog, server: ForkServer
) -> None:
    cfg = tmp_path / "product.yaml"
    cfg.write_text(EXAMPLE_CONFIG)
    tile = _nocrs_tile(tmp_path / "t.tif")
    env = {
        "GEOMESH_OBJECT_STORE": "s3",
        "GEOMESH_S3_ENDPOINT": "http://127.0.0.1:1",  # nothing listens
        "GEOMESH_S3_BUCKET": "geomesh",
        "GEOMESH_S3_ACCESS_KEY_ID": "geomesh-test-key",
        "GEOMESH_S3_SECRET_ACCESS_KEY": S3_SECRET,
    }
    res = run(server, catalog, ["ingest", str(cfg), str(tile), "--json"], **env)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "failed" and "reachable" in result["error"]
    stored = catalog.stored()
    assert_absent([S3_SECRET, *catalog.credentials], res.stdout, res.stderr, stored)


# ------------------------------------------------------------------ URL credentials (issue 14)

URL_PASSWORD = "UrlPassw0rd-4e1d"
URL_SIGNATURE = "UrlSig-77aa01"
URL_TOKEN = "UrlTok-93bb02"
HOOK_TOKEN = "HookTok-51cc03"


def test_url_credentials_never_reach_logs_audit_outbox_or_output(
    tmp_path: Path, catalog: Catalog, server: ForkServer, receiver: Receiver
) -> None:
    """A source URL and a webhook URL carrying ``user:password@`` and token/signature query
    values: GDAL's error repeats the URL, the outbox stores the webhook URL; neither secret
    may reach a log line, an audit event, an outbox row, an export or the output."""
    from _stac_server import RangeFileServer

    served = tmp_path / "served"
    served.mkdir()
    (served / "text.tif").write_bytes(b"not a raster\n")
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["governance"] = {
        "escalation": [{"name": "hook", "url": f"{receiver.url}?token={HOOK_TOKEN}"}]
    }
    cfg = tmp_path / "product.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    outputs: list[Result] = []
    with RangeFileServer(served) as files:
        env = {"GEOMESH_ALLOWED_SOURCES": files.base_url}
        host = files.base_url.split("//", 1)[1]
        url = (
            f"http://user:{URL_PASSWORD}@{host}/text.tif"
            f"?X-Amz-Signature={URL_SIGNATURE}&token={URL_TOKEN}&band=1"
        )

        def cli(*argv: str) -> Result:
            res = run(server, catalog, list(argv), **env)
            assert "Traceback" not in res.stderr, res.stderr
            outputs.append(res)
            return res

        failed = cli("ingest", str(cfg), url, "--json")
        assert failed.returncode == 1, failed.stderr
        (result,) = json.loads(failed.stdout)["results"]
        # the error still names the URL readably: host, path and the harmless parameter
        assert f"{host}/text.tif" in result["error"] and "band=1" in result["error"], result
        assert cli("ingest", str(cfg), str(_nocrs_tile(tmp_path / "nocrs.tif"))).returncode == 0
        assert cli("outbox", "deliver", "--config", str(cfg)).returncode == 0
        listed = cli("outbox", "list", "--json")
        export = tmp_path / "audit.jsonl"
        assert cli("audit", "export", str(cfg), "-o", str(export)).returncode == 0
    rows = json.loads(listed.stdout)
    assert rows and all("token=***" in r["url"] for r in rows), rows
    assert receiver.requests, "the webhook was delivered to its configured URL (token kept)"
    assert_absent(
        [URL_PASSWORD, URL_SIGNATURE, URL_TOKEN, HOOK_TOKEN, *catalog.credentials],
        catalog.stored(),
        export.read_bytes(),
        *(r.stdout + r.stderr for r in outputs),
    )
