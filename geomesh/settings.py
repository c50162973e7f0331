"""Deployment settings (environment variables with the ``GEOMESH_`` prefix, or ``.env``).

Product-level choices live in the product config YAML (``geomesh.config``);
these settings say *where* things are stored and how to reach shared services.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from geomesh.errors import ConfigError


class Settings(BaseSettings):
    """Where the workspace (database + object store) lives and how to reach it.

    Every field can be set as ``GEOMESH_<FIELD>`` (e.g. ``GEOMESH_STORAGE_ROOT``).
    """

    model_config = SettingsConfigDict(
        env_prefix="GEOMESH_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    storage_root: Path | None = Field(
        default=None, description="Local storage root (default ./geomesh-data)."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<storage_root>/geomesh.db. "
        "For a team: postgresql+psycopg://user:pass@host/db",
    )
    schema_dir: Path | None = Field(
        default=None,
        description="Offline STAC schema store laid out by URL path (default <storage_root>/stac-schemas).",
    )
    user: str | None = Field(
        default=None, description="The user the CLI acts as (still proven by token or password)."
    )
    sso_allowed_domains: str = Field(
        default="",
        description="Comma-separated e-mail domains SSO sign-ins may come from (empty: any; "
        "the e-mail must still be verified and registered to a user).",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="Key of the audit chain's HMAC (at least 32 characters); default: the "
        "key file (GEOMESH_AUDIT_KEY_FILE), created on first start.",
    )
    audit_key_file: Path | None = Field(
        default=None,
        description="File holding the audit key, mode 0600 (default <storage_root>/keys/audit.key).",
    )
    log_stderr: bool = Field(default=False, description="Also write JSON log lines to stderr.")

    # object storage: "local" (default) or "s3"
    object_store: str = Field(default="local", pattern="^(local|s3)$")
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket: str | None = None
    s3_quarantine_bucket: str | None = None
    s3_allow_http: bool = True
    staging_prefix: str = "staging"
    quarantine_prefix: str = "quarantine"
    production_prefix: str = "production"

    # untrusted input (geomesh.opening): where the app and remote sources may read from
    import_dirs: str = Field(
        default="",
        description="':'-separated local folders the app and remote sources may read rasters "
        "from (the CLI operator may read any local path).",
    )
    allowed_sources: str = Field(
        default="",
        description="Comma-separated URL prefixes (scheme://host[:port][/path]) rasters may be "
        "read from; a host named by its IP address allows that (private) address explicitly.",
    )
    upload_max_mb: int = Field(
        default=256, ge=1, le=4096, description="Largest file the app's Ingest page accepts (MiB)."
    )

    # parallel ingestion
    workers: int | None = Field(
        default=None,
        ge=0,
        description="Workers for ingest's file work when the caller names none (`geomesh "
        "ingest --workers`, the app's Ingest page): unset or 0 = automatic (a batch of at "
        "least 64 MiB in one single-threaded process per core; --from-stac: 4 threads per "
        "core), 1 = serial, N = N processes (threads for --from-stac).",
    )
    scheduler: str | None = Field(
        default=None,
        description="Dask scheduler address tcp://host:port for ingest's file work when the "
        "caller names none (`--scheduler`).",
    )

    # the worker and the inbound governance API (issue 17)
    api_url: str | None = Field(
        default=None,
        description="Public base URL of `geomesh api` (e.g. https://geomesh.example.org); "
        "the outbound signoff_requested payload tells the approval tool to call back there.",
    )
    worker_poll_s: float = Field(
        default=2.0, gt=0, le=300, description="How long an idle `geomesh worker` waits."
    )

    def resolved_storage_root(self, config_root: Path | None = None) -> Path:
        """The storage root: the environment wins, then the product config, then ./geomesh-data."""
        root = self.storage_root or config_root or Path("geomesh-data")
        return root.expanduser().resolve()

    def resolved_database_url(self, root: Path, config_url: str | None = None) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if config_url:
            return config_url
        return f"sqlite:///{root / 'geomesh.db'}"

    def resolved_audit_key_file(self, root: Path) -> Path:
        return (self.audit_key_file or root / "keys" / "audit.key").expanduser().resolve()

    def resolved_schema_dir(self, root: Path) -> Path:
        return (self.schema_dir or root / "stac-schemas").expanduser().resolve()


def load_settings() -> Settings:
    """The settings from the environment; an invalid ``GEOMESH_*`` value is a ConfigError.

    The message names each variable and what is wrong with it, never its value (it may be
    a password).
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"GEOMESH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"invalid setting(s): {problems}", hint="fix the environment or the .env file"
        ) from None
