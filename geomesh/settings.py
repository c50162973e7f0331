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
    user: str | None = Field(default=None, description="Default actor for CLI commands.")
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

    # parallel ingestion
    workers: int | None = Field(default=None, description="Process-pool size (default: CPU count).")
    scheduler: str | None = Field(
        default=None, description="Dask scheduler address tcp://host:port."
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
