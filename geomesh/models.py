"""All database tables (SQLModel), one section per entity.

The schema is created and upgraded by Alembic (``geomesh/migrations``); never call
``create_all`` outside tests of the migrations themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from geomesh.enums import ItemState as ItemState
from geomesh.enums import Severity as Severity


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; make them comparable with aware ones."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), **kw))


class Role(StrEnum):
    admin = "admin"
    steward = "steward"
    analyst = "analyst"
    viewer = "viewer"


# ------------------------------------------------------------------ users


class UserBase(SQLModel):
    name: str = Field(index=True, unique=True, max_length=64)
    role: Role
    display_name: str | None = None
    #: the e-mail an SSO sign-in must match exactly (stored lower-case); None: no SSO
    email: str | None = Field(default=None, index=True, unique=True, max_length=254)
    #: a disabled user cannot sign in or act; kept (not deleted) so history stays readable
    disabled: bool = Field(default=False)


class User(UserBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    password_hash: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _ts(nullable=False)


class UserPublic(UserBase):
    id: int
    created_at: datetime


class ApiToken(SQLModel, table=True):
    """A per-user API token for the CLI. Only its SHA-256 digest is stored, never the token."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(index=True, foreign_key="user.id")
    digest: str = Field(index=True, unique=True, max_length=64)
    label: str | None = Field(default=None, max_length=64)
    created_by: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class SignInThrottle(SQLModel, table=True):
    """Failed sign-ins per typed name or per client (keys are digests, never the typed text),
    shared by every app replica and CLI (``geomesh.throttle``)."""

    __tablename__ = "sign_in_throttle"

    key: str = Field(primary_key=True, max_length=80)
    failures: int = Field(default=0)
    last_failure_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    locked_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# ------------------------------------------------------------------ products


class Product(SQLModel, table=True):
    """A registered data product; ``current_release_id`` is the production pointer."""

    id: str = Field(primary_key=True, max_length=128)
    config_json: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    config_digest: str = Field(max_length=64)
    current_release_id: str | None = Field(default=None, max_length=64)
    #: optimistic-lock counter, bumped on every pointer move
    version_counter: int = Field(default=0)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class PolicyStatus(StrEnum):
    """Where one registered config version stands (``product_config_version.status``)."""

    #: a loosening change waiting for a second admin or steward (four eyes)
    pending = "pending"
    #: the registered config every governance decision uses (one per product)
    active = "active"
    #: was active; a later version took its place
    superseded = "superseded"
    #: was pending; another change became active first, so it was never applied
    replaced = "replaced"


class ProductConfigVersion(SQLModel, table=True):
    """One version of a product's registered config: the policy history (issue 13)."""

    __tablename__ = "product_config_version"
    __table_args__ = (UniqueConstraint("product_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    product_id: str = Field(index=True, foreign_key="product.id", max_length=128)
    version: int
    digest: str = Field(max_length=64)
    previous_digest: str | None = Field(default=None, max_length=64)
    config_json: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    #: initial | tightening | loosening | neutral (``geomesh.policy.ChangeKind``)
    change: str = Field(max_length=16)
    #: stored as text (not a native enum), so a new status needs no ALTER TYPE
    status: PolicyStatus = Field(
        sa_column=Column(SAEnum(PolicyStatus, native_enum=False, length=16), nullable=False)
    )
    #: the key paths that changed against the previous version: [{path, old, new}]
    diff: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: why the change is loosening / tightening: {"loosening": [...], "tightening": [...]}
    reasons: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    spatial_contract_changed: bool = False
    proposed_by: str = Field(max_length=64)
    proposed_at: datetime = _ts(nullable=False)
    approved_by: str | None = Field(default=None, max_length=64)
    approved_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# ------------------------------------------------------------------ items


class Item(SQLModel, table=True):
    """One immutable item version. Its id derives from product id + content digest."""

    __table_args__ = (
        #: list views and queues: a product's items in one state, oldest first (issue 16)
        Index("ix_item_product_state_created", "product_id", "state", "created_at", "id"),
        #: the version of the same tile in another state (review: "replaces production")
        Index("ix_item_product_source_state", "product_id", "source_key", "state"),
        #: items per worst severity and state, counted in the index (overview); the map's
        #: worst-first footprints, one severity at a time in (state, id) order
        Index("ix_item_product_worst_state", "product_id", "worst_severity", "state", "id"),
    )

    id: str = Field(primary_key=True, max_length=160)
    product_id: str = Field(index=True, foreign_key="product.id", max_length=128)
    #: where the raster came from (path or URL, as given; secrets stripped)
    source: str = Field(sa_column=Column(Text, nullable=False))
    #: stable key of the source used to find earlier versions of the "same tile"
    source_key: str = Field(index=True, max_length=64)
    #: sha256 of the input bytes + ingestion options (local sources): re-runs skip the work
    source_digest: str | None = Field(default=None, index=True, max_length=64)
    content_digest: str = Field(index=True, max_length=64)  # sha256 hex of the COG
    size: int
    object_key: str = Field(max_length=255)
    #: storage key of the item JSON (immutable)
    stac_key: str = Field(max_length=255)
    stac: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    #: stored as text (not a native enum), so a new state needs no ALTER TYPE
    state: ItemState = Field(
        default=ItemState.staging,
        sa_column=Column(
            SAEnum(ItemState, native_enum=False, length=32), index=True, nullable=False
        ),
    )
    submitted_by: str = Field(max_length=64)
    #: item id this version replaces (same source, changed bytes)
    supersedes: str | None = Field(default=None, max_length=160)
    #: item id this one was derived from by `geomesh remediate`
    derived_from: str | None = Field(default=None, max_length=160)
    worst_severity: Severity | None = None
    quarantine_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    quarantine_key: str | None = Field(default=None, max_length=255)
    #: source STAC item id + asset key (issue 6), used for incremental discovery
    source_item_id: str | None = Field(default=None, index=True, max_length=255)
    source_etag: str | None = Field(default=None, max_length=255)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


# ------------------------------------------------------------------ validation


class ValidationRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: str = Field(index=True, foreign_key="item.id", max_length=160)
    content_digest: str = Field(max_length=64)
    passed: bool
    worst_severity: Severity | None = None
    strict: bool = False
    actor: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)


class FindingRecord(SQLModel, table=True):
    """A persisted ``geomesh.validation.Finding``."""

    __tablename__ = "finding"
    __table_args__ = (
        #: the findings page: a product's open findings, worst first, paged (issue 16)
        Index("ix_finding_product_open_order", "product_id", "open", "severity", "rule_id", "id"),
        #: the rule picker of the findings page
        Index("ix_finding_product_rule", "product_id", "rule_id"),
        #: one item's open findings and the per-severity counts of a list of items
        Index("ix_finding_item_open_severity", "item_id", "open", "severity"),
        #: the overview's pass rate per rule: distinct items with an open finding of a rule
        Index("ix_finding_product_open_rule_item", "product_id", "open", "rule_id", "item_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="validationrun.id")
    item_id: str = Field(index=True, max_length=160)
    product_id: str = Field(index=True, max_length=128)
    rule_id: str = Field(index=True, max_length=32)
    severity: Severity = Field(index=True)
    path: str = Field(sa_column=Column(Text, nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))
    remediation: str = Field(sa_column=Column(Text, nullable=False))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: open until a later validation run of the same content no longer reports it
    open: bool = Field(default=True, index=True)
    created_at: datetime = _ts(nullable=False)


# ------------------------------------------------------------------ sign-off


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"


class Approval(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("item_id", "actor", "content_digest"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: str = Field(index=True, foreign_key="item.id", max_length=160)
    #: the digest that was reviewed; only counts while it equals the item's content
    content_digest: str = Field(max_length=64)
    actor: str = Field(max_length=64)
    decision: Decision
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _ts(nullable=False)


class SignoffTime(SQLModel, table=True):
    """Seconds from an item version's staging to the first approval of its content, kept
    by every sign-off in its transaction (``services.approval_times``): the overview's
    sign-off KPIs read this index instead of joining every item to its approvals."""

    __tablename__ = "signoff_time"
    __table_args__ = (Index("ix_signoff_time_product_seconds", "product_id", "seconds"),)

    item_id: str = Field(primary_key=True, foreign_key="item.id", max_length=160)
    product_id: str = Field(max_length=128)
    seconds: float


# ------------------------------------------------------------------ releases


class Release(SQLModel, table=True):
    """An immutable, content-addressed release manifest (the manifest JSON is in storage)."""

    __table_args__ = (UniqueConstraint("product_id", "version"),)

    id: str = Field(primary_key=True, max_length=64)  # sha256 of the canonical manifest
    product_id: str = Field(index=True, foreign_key="product.id", max_length=128)
    version: str = Field(max_length=64)
    parent_id: str | None = Field(default=None, max_length=64)
    manifest_key: str = Field(max_length=255)
    item_count: int
    #: what changed against the parent: {"added": [...], "removed": [...], "changed": [...]}
    delta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    kind: str = Field(default="promote", max_length=32)  # promote | item-rollback
    actor: str = Field(max_length=64)
    deprecated: bool = False
    created_at: datetime = _ts(nullable=False)
    #: production key of the release's stac-geoparquet snapshot, once written (on demand)
    snapshot_key: str | None = Field(default=None, max_length=255)


# ------------------------------------------------------------------ audit


class AuditEvent(SQLModel, table=True):
    """Append-only, hash-chained audit trail. Never updated, never deleted."""

    __table_args__ = (
        #: an item's history (item detail, review)
        Index("ix_auditevent_target_seq", "target", "seq"),
        #: a product's newest events and its change counter (``max(seq)``, the app's cache key)
        Index("ix_auditevent_product_seq", "product_id", "seq"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=36)
    timestamp: datetime = _ts(nullable=False)
    actor: str = Field(index=True, max_length=64)
    action: str = Field(index=True, max_length=64)
    product_id: str | None = Field(default=None, index=True, max_length=128)
    target: str = Field(max_length=255)
    state_before: str | None = Field(default=None, max_length=32)
    state_after: str | None = Field(default=None, max_length=32)
    digest: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(unique=True, max_length=64)


class AuditHead(SQLModel, table=True):
    """One row that serialises appends to the audit chain (row-locked on PostgreSQL)."""

    id: int = Field(default=1, primary_key=True)
    last_seq: int = 0
    last_hash: str = Field(default="0" * 64, max_length=64)


# ------------------------------------------------------------------ notifications


class OutboxStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class OutboxMessage(SQLModel, table=True):
    """A webhook notification written in the same transaction as the event it reports."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=128)
    product_id: str = Field(index=True, max_length=128)
    target_name: str = Field(max_length=128)
    url: str = Field(sa_column=Column(Text, nullable=False))
    event: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: OutboxStatus = Field(default=OutboxStatus.pending, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    next_attempt_at: datetime = _ts(nullable=False)
    created_at: datetime = _ts(nullable=False)
    delivered_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    #: the worker that holds the current delivery lease (until ``next_attempt_at``)
    lease_owner: str | None = Field(default=None, max_length=128)


class TaskStatus(StrEnum):
    """Where one queued task stands (``task.status``, stored as text)."""

    queued = "queued"
    #: claimed by a worker whose lease ends at ``lease_expires_at`` (then reclaimable)
    running = "running"
    done = "done"
    #: gave up after ``max_attempts`` (the dead-letter state; `geomesh tasks retry`)
    failed = "failed"


class Task(SQLModel, table=True):
    """One unit of background work (issue 17): a re-clip after a P1 boundary failure, a
    release snapshot, a preview. Claimed by ``geomesh worker`` with a lease."""

    id: int | None = Field(default=None, primary_key=True)
    product_id: str = Field(index=True, max_length=128)
    #: the item the task is about (None for product-level work such as a snapshot)
    item_id: str | None = Field(default=None, max_length=160)
    kind: str = Field(max_length=32)  # reclip | snapshot | preview
    status: str = Field(default=TaskStatus.queued.value, index=True, max_length=16)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False)
    #: enqueueing the same work twice is a no-op (e.g. "reclip:<item_id>")
    dedupe_key: str | None = Field(default=None, unique=True, max_length=200)
    attempts: int = 0
    max_attempts: int = 3
    #: not claimed before this time (backoff after a failed attempt)
    run_after: datetime = _ts(nullable=False)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: what the finished task produced (e.g. the id of the re-clipped item)
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    updated_at: datetime = _ts(nullable=False)


# ------------------------------------------------------------------ inbound webhooks


class Integration(SQLModel, table=True):
    """An approval tool allowed to call ``POST /v1/signoff`` (issue 17).

    The HMAC secret itself is never stored: ``secret_env`` names the environment variable
    that holds it. ``approvers`` maps the tool's approver ids to geomesh user names.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    secret_env: str = Field(max_length=128)
    approvers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: product ids it may decide on; empty: every product
    products: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    disabled: bool = False
    created_by: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)


class WebhookReceipt(SQLModel, table=True):
    """One inbound request id (``Idempotency-Key``) per integration: a replay is refused."""

    __tablename__ = "webhook_receipt"
    __table_args__ = (UniqueConstraint("integration", "idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    integration: str = Field(max_length=64)
    idempotency_key: str = Field(max_length=128)
    #: accepted | refused
    outcome: str = Field(max_length=16)
    item_id: str | None = Field(default=None, max_length=160)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    received_at: datetime = _ts(nullable=False)
