"""geomesh errors: one base class, domain-noun subclasses.

Every error a user can cause carries a message that names the file, field or
object involved and says what to do. The CLI and the app map ``GeomeshError``
to a clear message at the edge; anything else is a bug and propagates.
"""

from __future__ import annotations


class GeomeshError(Exception):
    """Base class of every error geomesh raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class GeomeshWarning(UserWarning):
    """Base class of geomesh warnings (never raised as errors)."""


class ConfigError(GeomeshError):
    """A product config or setting is invalid."""


class PolicyMismatch(GeomeshError):
    """A caller's product config differs from the product's registered config (policy)."""


class RasterError(GeomeshError):
    """A raster cannot be read or does not meet basic expectations."""


class MissingCRS(RasterError):
    """A raster has no coordinate reference system where one is needed."""


class OutsideDomain(RasterError):
    """A raster does not intersect the product's spatial domain."""


class SourceNotAllowed(RasterError):
    """The opening policy refuses a raster source (format, scheme, place or address)."""


class UploadRejected(GeomeshError):
    """An uploaded file is refused (too large, or the uploader may not ingest)."""


class StorageError(GeomeshError):
    """An object could not be stored or read."""


class DatabaseError(GeomeshError):
    """The database could not be reached, lost the connection mid-transaction or refused
    the transaction (deadlock, lock timeout); a transaction commits whole or not at all."""


class StoreUnavailable(StorageError):
    """The object store could not be reached or failed to answer (an outage, a network
    fault): not a missing or corrupt object, so never a finding or a failed gate."""


class UnsafePath(StorageError):
    """A path or key would escape the storage root or is not a valid name."""


class ChecksumMismatch(StorageError):
    """Stored bytes do not match their recorded digest."""


class StacError(GeomeshError):
    """A STAC document is malformed or cannot be built."""


class NotFound(GeomeshError):
    """A product, item, release, user or finding does not exist."""


class AlreadyExists(GeomeshError):
    """An object that must be unique already exists."""


class PermissionDenied(GeomeshError):
    """The actor's role does not allow the action."""


class IdentityNotProven(PermissionDenied):
    """Who acts was claimed but not proven (no valid token or password), or sign-in is
    refused (wrong password, unverified or unknown SSO e-mail, too many failed attempts)."""


class WeakPassword(GeomeshError):
    """A password is shorter than the minimum length."""


class InvalidTransition(GeomeshError):
    """An item lifecycle transition is not allowed from its current state."""

    def __init__(self, current: str, target: str, *, item_id: str | None = None) -> None:
        self.current = current
        self.target = target
        self.item_id = item_id
        what = f"item {item_id!r}" if item_id else "item"
        super().__init__(
            f"{what} cannot move from {current!r} to {target!r}",
            hint="see `geomesh items list` for its state; the legal transitions are in docs/architecture.md",
        )


class PromotionBlocked(GeomeshError):
    """A promotion gate (validation, checksum or sign-off) is not met."""


class ConcurrentUpdate(GeomeshError):
    """Another actor changed the same object at the same time; retry."""


class AuditChainBroken(GeomeshError):
    """The audit hash chain does not verify."""


class AuditKeyError(GeomeshError):
    """The audit chain's key is missing, too short or not private."""


class ValidationError(GeomeshError):
    """Validation could not be run (not: the item is invalid; that is a Finding)."""


class SourceError(GeomeshError):
    """A remote STAC API source could not be searched or read."""


class DeliveryError(GeomeshError):
    """A webhook delivery failed."""


class WebhookRefused(GeomeshError):
    """An inbound governance webhook request is refused: unknown or disabled integration,
    missing or bad signature, a timestamp outside the window, or a malformed body."""


class ReplayRefused(WebhookRefused):
    """An inbound webhook request reuses an idempotency key already received."""


class TaskError(GeomeshError):
    """A queued task cannot be run or changed (unknown kind, missing input, not failed)."""


class QuarantineBlocked(GeomeshError):
    """A quarantined item cannot be released: its latest validation still routes it away."""


class SignoffError(GeomeshError):
    """A sign-off cannot be recorded (item not under review, rejection without a comment)."""


class StaleDigest(SignoffError):
    """A decision names a content digest that is not the item's (it reviewed other bytes)."""


class NothingToRollBack(GeomeshError):
    """There is no earlier release (or no release at all) to roll back to."""


class NotCurrentRelease(GeomeshError):
    """A release that is not the product's current one was named where only the current
    release is allowed (e.g. rolling back a release that was never rolled back)."""

    hint = "only the current release can be rolled back; see `geomesh releases list`"
