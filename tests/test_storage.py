"""The ObjectStore contract, on a local directory and on S3 (SeaweedFS), plus S3 specifics."""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
import rasterio

from geomesh import storage
from geomesh.errors import ConfigError, StorageError, UnsafePath
from geomesh.hashing import sha256_file
from geomesh.s3 import S3Store, gdal_env_for, redact_url
from geomesh.settings import Settings
from geomesh.storage import TMP_PREFIX, LocalStore, ObjectStore, object_key
from geomesh.workspace import make_store

S3_VARS = (
    "GEOMESH_OBJECT_STORE",
    "GEOMESH_S3_ENDPOINT",
    "GEOMESH_S3_REGION",
    "GEOMESH_S3_ACCESS_KEY_ID",
    "GEOMESH_S3_SECRET_ACCESS_KEY",
    "GEOMESH_S3_BUCKET",
    "GEOMESH_S3_QUARANTINE_BUCKET",
    "GEOMESH_S3_ALLOW_HTTP",
    "GEOMESH_STAGING_PREFIX",
    "GEOMESH_QUARANTINE_PREFIX",
    "GEOMESH_PRODUCTION_PREFIX",
)


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for var in S3_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore:
    """The store ``Workspace.open`` would build, on each backend."""
    env: dict[str, str] = {"GEOMESH_OBJECT_STORE": "local"}
    if request.param == "s3":
        env = request.getfixturevalue("s3_env")
    root = tmp_path / "root"
    return make_store(_settings(monkeypatch, env), root)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the contract


def test_put_get_exists_size(store: ObjectStore) -> None:
    data = b"geomesh" * 1000
    key = object_key(_digest(data))
    assert not store.exists("staging", key)
    store.put_bytes("staging", key, data)
    assert store.exists("staging", key)
    assert store.size("staging", key) == len(data)
    assert store.get_bytes("staging", key) == data


def test_missing_object_is_a_storage_error_naming_it(store: ObjectStore) -> None:
    key = object_key("0" * 64)
    for read in (store.get_bytes, store.size):
        with pytest.raises(StorageError, match="missing") as info:
            read("staging", key)
        assert key in str(info.value)
    with pytest.raises(StorageError, match="missing"), store.open_local("staging", key):
        pass


def test_put_without_overwrite_keeps_the_first_object(store: ObjectStore) -> None:
    store.put_bytes("meta", "exports/a.json", b"first")
    store.put_bytes("meta", "exports/a.json", b"second")
    assert store.get_bytes("meta", "exports/a.json") == b"first"
    store.put_bytes("meta", "exports/a.json", b"third", overwrite=True)
    assert store.get_bytes("meta", "exports/a.json") == b"third"


def test_put_file_content_addressed_and_idempotent(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "tile.tif"
    src.write_bytes(np.random.default_rng(1).bytes(300_000))
    digest, size = sha256_file(src)
    key = object_key(digest)
    assert key == f"sha256/{digest[:2]}/{digest[2:]}.tif"
    store.put_file("staging", key, src)
    assert _digest(store.get_bytes("staging", key)) == digest
    assert store.size("staging", key) == size
    # a second put of an existing key is a no-op: it does not even read the source
    src.unlink()
    store.put_file("staging", key, src)
    assert _digest(store.get_bytes("staging", key)) == digest


def test_a_new_folder_is_made_durable_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file fsynced into a folder the store has just created is durable only once that
    folder's own entry is: each new folder's parent is fsynced after its mkdir (a power
    loss would otherwise drop the folder and the file in it). A folder that exists costs
    no fsync of its parents."""
    synced: list[Path] = []
    real = storage.fsync_dir

    def record(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(storage, "fsync_dir", record)
    (tmp_path / "root").mkdir()
    store = LocalStore(tmp_path / "root")
    base = store.path("staging", "a/b/c.json").parents[2]
    store.put_bytes("staging", "a/b/c.json", b"{}")
    # root/staging, staging/a and staging/a/b are new: each is fsynced in its parent, then
    # the file's own folder after the rename
    assert synced == [base.parent, base, base / "a", base / "a" / "b"]
    synced.clear()
    store.put_bytes("staging", "a/b/d.json", b"{}")
    assert synced == [base / "a" / "b"]
    src = tmp_path / "obj.bin"
    src.write_bytes(b"x")
    synced.clear()
    store.put_file("staging", object_key(_digest(b"x")), src)
    shard = store.path("staging", object_key(_digest(b"x"))).parent
    assert synced[-1] == shard and shard.parent in synced  # the new shard folder, durable
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        storage.make_dirs(tmp_path / "file")


def test_object_key_rejects_what_is_not_a_sha256() -> None:
    for bad in ("abc", "G" * 64, "../" + "0" * 61, "A" * 64):
        with pytest.raises(UnsafePath):
            object_key(bad)


def test_put_file_of_a_missing_source_stores_nothing(store: ObjectStore, tmp_path: Path) -> None:
    key = object_key("1" * 64)
    with pytest.raises((StorageError, OSError)):
        store.put_file("staging", key, tmp_path / "does-not-exist.tif")
    assert not store.exists("staging", key)
    assert list(store.list("staging")) == []


UNSAFE_KEYS = [
    "../escape.tif",
    "sha256/../../escape.tif",
    "/etc/passwd",
    "",
    ".",
    "a\\b",
    "nul\x00byte",
    "new\nline",
    "tab\there",
    "esc\x1bape",
    "with space",
    f"sha256/{TMP_PREFIX}partial.tif",
]


@pytest.mark.parametrize("key", UNSAFE_KEYS, ids=repr)
def test_unsafe_keys_are_rejected_everywhere(store: ObjectStore, key: str, tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    calls: list[Callable[[], Any]] = [
        lambda: store.put_bytes("staging", key, b"x"),
        lambda: store.put_bytes("staging", key, b"x", overwrite=True),
        lambda: store.put_file("staging", key, src),
        lambda: store.get_bytes("staging", key),
        lambda: store.exists("staging", key),
        lambda: store.size("staging", key),
        lambda: store.copy("staging", "quarantine", key),
        lambda: store.delete("staging", key),
        lambda: store.gdal_path("staging", key),
    ]
    for call in calls:
        with pytest.raises(UnsafePath):
            call()
    with pytest.raises(UnsafePath), store.open_local("staging", key):
        pass
    for area in ("staging", "quarantine", "production", "meta"):
        assert list(store.list(area)) == []  # type: ignore[arg-type]


@pytest.mark.s3
@pytest.mark.parametrize("key", ["a/./b.tif", "a//b.tif", "a/b/", "./a.tif"])
def test_s3_refuses_non_canonical_keys(s3_settings: Settings, key: str) -> None:
    """S3 does not normalise paths: 'a/./b' would alias 'a/b' as a second object."""
    store = S3Store.from_settings(s3_settings)
    with pytest.raises(UnsafePath):
        store.put_bytes("staging", key, b"x")
    with pytest.raises(UnsafePath):
        store.gdal_path("staging", key)
    assert list(store.list("staging")) == []


def test_copy_between_areas(store: ObjectStore) -> None:
    data = b"tile bytes" * 500
    key = object_key(_digest(data))
    store.put_bytes("staging", key, data)
    # quarantine is a separate bucket on S3 (s3_env), production the same bucket
    for dst in ("quarantine", "production"):
        store.copy("staging", dst, key)  # type: ignore[arg-type]
        assert store.get_bytes(dst, key) == data  # type: ignore[arg-type]
        store.copy("staging", dst, key)  # type: ignore[arg-type]  # idempotent
    store.delete("staging", key)
    assert not store.exists("staging", key)
    assert store.get_bytes("quarantine", key) == data
    assert store.get_bytes("production", key) == data


def test_copy_of_a_big_object_between_buckets_streams(store: ObjectStore, tmp_path: Path) -> None:
    if isinstance(store, S3Store):
        store.single_put_limit = 1024 * 1024  # above it: streamed multipart copy
    data = np.random.default_rng(3).bytes(7 * 1024 * 1024)
    src = tmp_path / "big.tif"
    src.write_bytes(data)
    key = object_key(_digest(data))
    store.put_file("staging", key, src)
    store.copy("staging", "quarantine", key)
    assert _digest(store.get_bytes("quarantine", key)) == _digest(data)
    assert store.size("quarantine", key) == len(data)


def test_copy_of_a_missing_object_is_a_storage_error(store: ObjectStore) -> None:
    key = object_key("2" * 64)
    with pytest.raises(StorageError, match="missing"):
        store.copy("staging", "quarantine", key)
    assert not store.exists("quarantine", key)


def test_list_is_sorted_per_area_with_string_prefixes(store: ObjectStore) -> None:
    keys = [
        object_key("ab" + "1" * 62),
        object_key("ac" + "2" * 62),
        object_key("ff" + "3" * 62),
        "items/prod-a/prod-a-1.json",
        "items/prod-b/prod-b-1.json",
    ]
    for k in reversed(keys):
        store.put_bytes("staging", k, k.encode())
    store.put_bytes("production", "releases/prod-a/x.json", b"{}")
    assert list(store.list("staging")) == sorted(keys)
    assert list(store.list("staging", "sha256/a")) == sorted(keys[:2])
    assert list(store.list("staging", "sha256/ab/")) == [keys[0]]
    assert list(store.list("staging", "items/prod-a")) == ["items/prod-a/prod-a-1.json"]
    assert list(store.list("staging", "nothing/here")) == []
    assert list(store.list("production")) == ["releases/prod-a/x.json"]
    assert list(store.list("quarantine")) == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put_bytes("meta", "cache/x.png", b"png")
    store.delete("meta", "cache/x.png")
    store.delete("meta", "cache/x.png")
    assert not store.exists("meta", "cache/x.png")


def test_open_local_yields_the_bytes(store: ObjectStore) -> None:
    data = b"local copy" * 100
    store.put_bytes("staging", "items/p/p-1.json", data)
    with store.open_local("staging", "items/p/p-1.json") as path:
        assert path.read_bytes() == data
        assert path.suffix == ".json"
    if isinstance(store, S3Store):
        assert not path.exists(), "the temporary download must be removed"


def test_gdal_path_is_readable_by_rasterio(
    store: ObjectStore, make_raster: Callable[..., Path]
) -> None:
    src = make_raster(width=128, height=96, count=2, tiled=False)
    digest, _ = sha256_file(src)
    key = object_key(digest)
    store.put_file("staging", key, src)
    with rasterio.open(src) as expected:
        want = expected.read()
        crs = expected.crs
    path = store.gdal_path("staging", key)
    if isinstance(store, S3Store):
        assert path.startswith(f"/vsis3/{store.bucket}/staging/sha256/")
    with rasterio.Env(**gdal_env_for(store)), rasterio.open(path) as ds:
        assert ds.crs == crs
        assert (ds.read() == want).all()
    # and the local-copy route used for hashing
    with store.open_local("staging", key) as local:
        assert sha256_file(local)[0] == digest


def test_readers_never_see_a_partial_object(store: ObjectStore, tmp_path: Path) -> None:
    """While a big file is stored, a concurrent reader sees nothing or all of it."""
    if isinstance(store, S3Store):
        store.single_put_limit = 1024 * 1024  # force the multipart path
    data = np.random.default_rng(7).bytes(12 * 1024 * 1024)
    src = tmp_path / "big.tif"
    src.write_bytes(data)
    key = object_key(_digest(data))
    done = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                if store.exists("staging", key):
                    got = store.get_bytes("staging", key)
                    seen.append(len(got))
                    if got != data:
                        problems.append(f"partial or wrong object ({len(got)} bytes)")
            except StorageError as exc:  # deleted between exists and get: fine
                if "missing" not in str(exc):
                    problems.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        store.put_file("staging", key, src)
    finally:
        done.set()
        t.join()
    assert problems == []
    assert store.get_bytes("staging", key) == data
    if isinstance(store, LocalStore):
        assert list(store.temp_files()) == []


# ------------------------------------------------------------------ S3 specifics


@pytest.fixture
def s3_settings(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return _settings(monkeypatch, s3_env)


@pytest.mark.s3
def test_catalog_store_is_s3_with_a_separate_quarantine_bucket(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = make_store(s3_settings, tmp_path)
    assert isinstance(store, S3Store)
    assert store.quarantine_bucket == s3_settings.s3_quarantine_bucket != store.bucket
    assert store.gdal_path("quarantine", "a/b.tif") == (
        f"/vsis3/{store.quarantine_bucket}/quarantine/a/b.tif"
    )
    store.check()


@pytest.mark.s3
def test_objects_land_under_the_configured_prefixes(
    s3_env: dict[str, str], seaweedfs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, {**s3_env, "GEOMESH_STAGING_PREFIX": "geomesh/v1/staging"})
    store = S3Store.from_settings(settings)
    store.put_bytes("staging", "items/p/1.json", b"{}")
    store.put_bytes("quarantine", "items/p/1.json", b"{}")
    raw = seaweedfs.obstore(s3_env["GEOMESH_S3_BUCKET"])
    assert [m["path"] for m in obstore.list(raw).collect()] == ["geomesh/v1/staging/items/p/1.json"]
    rawq = seaweedfs.obstore(s3_env["GEOMESH_S3_QUARANTINE_BUCKET"])
    assert [m["path"] for m in obstore.list(rawq).collect()] == ["quarantine/items/p/1.json"]
    assert store.url("staging", "items/p/1.json") == (
        f"s3://{store.bucket}/geomesh/v1/staging/items/p/1.json"
    )


@pytest.mark.s3
def test_wrong_secret_is_access_denied_without_leaking_it(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-Secret-0123456789"
    settings = _settings(monkeypatch, {**s3_env, "GEOMESH_S3_SECRET_ACCESS_KEY": wrong})
    store = S3Store.from_settings(settings)
    for call in (
        lambda: store.put_bytes("staging", "a.json", b"{}"),
        lambda: store.get_bytes("staging", "a.json"),
        lambda: store.exists("staging", "a.json"),
        lambda: list(store.list("staging")),
        store.check,
    ):
        with pytest.raises(StorageError) as info:
            call()
        text = str(info.value) + repr(info.value.__cause__) + repr(info.value.__context__)
        assert wrong not in text
        assert s3_env["GEOMESH_S3_SECRET_ACCESS_KEY"] not in text
    assert "access denied" in str(info.value)
    assert "GEOMESH_S3_SECRET_ACCESS_KEY" in str(info.value)
    assert wrong not in store.describe() + repr(store.gdal_env())


@pytest.mark.s3
def test_missing_bucket_says_which_and_what_to_do(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, {**s3_env, "GEOMESH_S3_BUCKET": "gm-no-such-bucket"})
    store = S3Store.from_settings(settings)
    with pytest.raises(StorageError, match="gm-no-such-bucket.*does not exist.*create it"):
        store.check()
    with pytest.raises(StorageError, match="gm-no-such-bucket"):
        store.put_bytes("staging", "a.json", b"{}")


@pytest.mark.s3
def test_unreachable_endpoint_is_a_storage_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3Store(
        bucket="gm-x",
        endpoint=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="s3cr3t-value",
        allow_http=True,
        max_retries=0,
    )
    with pytest.raises(StorageError, match="reachable") as info:
        store.put_bytes("staging", "a.json", b"{}")
    assert "s3cr3t-value" not in str(info.value)


@pytest.mark.s3
def test_store_pickles_for_worker_processes(s3_settings: Settings) -> None:
    store = S3Store.from_settings(s3_settings)
    store.put_bytes("staging", "a.json", b"{}")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("staging", "a.json") == b"{}"


def test_gdal_env_carries_credentials_in_a_session_only() -> None:
    store = S3Store(
        bucket="gm-x",
        endpoint="http://127.0.0.1:8333",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="very-secret",
        allow_http=True,
    )
    env = store.gdal_env()
    assert env["AWS_S3_ENDPOINT"] == "127.0.0.1:8333"
    assert env["AWS_HTTPS"] == "NO"
    assert env["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # rasterio.Env refuses it as an option
    assert env["session"].get_credential_options()["AWS_SECRET_ACCESS_KEY"] == "very-secret"
    assert "very-secret" not in repr(env)
    with rasterio.Env(**env):  # accepted by rasterio
        pass
    cfg = store.gdal_config()
    assert cfg["AWS_SECRET_ACCESS_KEY"] == "very-secret"
    assert "very-secret" not in store.describe()
    assert gdal_env_for(LocalStore(Path("."))) == {}


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"GEOMESH_S3_BUCKET": ""}, "GEOMESH_S3_BUCKET"),
        ({"GEOMESH_S3_BUCKET": "Not_A_Bucket"}, "not a valid S3 bucket"),
        ({"GEOMESH_S3_QUARANTINE_BUCKET": "x"}, "GEOMESH_S3_QUARANTINE_BUCKET"),
        ({"GEOMESH_S3_ALLOW_HTTP": "false"}, "GEOMESH_S3_ALLOW_HTTP"),
        ({"GEOMESH_S3_ENDPOINT": "ftp://host"}, "not an http"),
        ({"GEOMESH_S3_SECRET_ACCESS_KEY": ""}, "incomplete"),
        ({"GEOMESH_STAGING_PREFIX": "../up"}, "GEOMESH_STAGING_PREFIX"),
        ({"GEOMESH_PRODUCTION_PREFIX": "staging"}, "overlap"),
        ({"GEOMESH_STAGING_PREFIX": ""}, "overlap"),
    ],
)
def test_invalid_s3_settings_are_config_errors(
    env: dict[str, str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {
        "GEOMESH_OBJECT_STORE": "s3",
        "GEOMESH_S3_ENDPOINT": "http://127.0.0.1:8333",
        "GEOMESH_S3_ACCESS_KEY_ID": "k",
        "GEOMESH_S3_SECRET_ACCESS_KEY": "s",
        "GEOMESH_S3_BUCKET": "gm-bucket",
    }
    merged = {k: v for k, v in {**base, **env}.items() if v != "" or k.endswith("PREFIX")}
    with pytest.raises(ConfigError, match=match):
        S3Store.from_settings(_settings(monkeypatch, merged))


def test_credentials_in_the_endpoint_url_are_refused_and_redacted() -> None:
    with pytest.raises(ConfigError) as info:
        S3Store(bucket="gm-x", endpoint="https://user:pa55word@s3.example.org")
    assert "pa55word" not in str(info.value)
    assert "GEOMESH_S3_ACCESS_KEY_ID" in str(info.value)
    assert redact_url("https://u:p@h/x?X-Amz-Signature=abc&a=1") == (
        "https://***@h/x?X-Amz-Signature=***&a=1"
    )
