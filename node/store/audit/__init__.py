"""The tamper-evident audit log: who asked what, under which consent, and what was decided.

Every verification a node answers or refuses, and every consent, routing and discovery
decision of the coordinator, becomes one `AuditRecord` (records) in the member's audit chain
(`Storage.audit()`: any `node.store.interfaces.Chain` backend; SQLite: table ``audit`` in
``<data_dir>/audit.sqlite``). If a record cannot be written durably, no answer is given:
`AsyncAuditor.record` (auditor) raises `AuditUnavailable` (a `Refusal` with code UNAVAILABLE).
`AuditLog` (log) prunes by retention and verifies from the anchor; checkpoints (checkpoints)
sign its head and lodge it with the coordinator. The audit modules reach storage through the
`Chain` and `CheckpointStorage` interfaces only. This package re-exports their public names.
"""

from __future__ import annotations

from node.store.audit.auditor import AsyncAuditor, AuditUnavailable
from node.store.audit.checkpoints import (
    Checkpoint,
    CheckpointInvalid,
    CheckpointStore,
    NodeCheckpointer,
    SignedCheckpoint,
    extension_problem,
    make_checkpoint,
    read_checkpoint_blobs,
    sign_checkpoint,
    signed_from_blob,
    verify_checkpoint,
)
from node.store.audit.log import (
    META_BAD,
    PRUNE_UNRECORDED,
    AuditLog,
    AuditReport,
    CheckpointResult,
    check_retention,
    retention_days,
)
from node.store.audit.records import (
    _SCANNED_CLEAN,
    ANSWERED,
    AUDIT_DB,
    BATCH_ENTRY_KEYS,
    BATCH_RECORD_KEYS,
    CHECKPOINT_FILE,
    CHECKPOINT_KEYS,
    CONSENT_GRANT,
    CONSENT_REVOKE,
    DAY_MS,
    DEFAULT_RETENTION_DAYS,
    DISCOVER,
    KIND_CHECKPOINT,
    KIND_CHECKPOINT_CONFLICT,
    KIND_PRUNE,
    KIND_RECORD,
    LEGACY_CHECKPOINT_KEYS,
    LEGACY_RECORD_KEYS,
    MAX_BATCH,
    MAX_BATCH_ENTRIES,
    META_TABLE,
    MIN_RETENTION_DAYS,
    NO_PREVIOUS,
    RECORD_KEYS,
    ROUTE,
    TABLE,
    AuditRecord,
    BatchEntry,
    answered,
    answered_batch,
    batch_entry,
    batched,
    coordinator_event,
    export_row,
    iso_utc,
    per_query,
    refusal,
    refused,
    web_event,
)

__all__ = [
    "ANSWERED", "AUDIT_DB", "BATCH_ENTRY_KEYS", "BATCH_RECORD_KEYS", "CHECKPOINT_FILE", "CHECKPOINT_KEYS",
    "CONSENT_GRANT", "CONSENT_REVOKE", "DAY_MS", "DEFAULT_RETENTION_DAYS", "DISCOVER", "KIND_CHECKPOINT",
    "KIND_CHECKPOINT_CONFLICT", "KIND_PRUNE", "KIND_RECORD", "LEGACY_CHECKPOINT_KEYS", "LEGACY_RECORD_KEYS",
    "MAX_BATCH", "MAX_BATCH_ENTRIES", "META_BAD", "META_TABLE", "MIN_RETENTION_DAYS", "NO_PREVIOUS",
    "PRUNE_UNRECORDED", "RECORD_KEYS", "ROUTE", "TABLE", "_SCANNED_CLEAN", "AsyncAuditor", "AuditLog",
    "AuditRecord", "AuditReport", "AuditUnavailable", "BatchEntry", "Checkpoint", "CheckpointInvalid",
    "CheckpointResult", "CheckpointStore", "NodeCheckpointer", "SignedCheckpoint", "answered", "answered_batch",
    "batch_entry", "batched", "check_retention", "coordinator_event", "export_row", "extension_problem", "iso_utc",
    "make_checkpoint", "per_query", "read_checkpoint_blobs", "refusal", "refused", "retention_days",
    "sign_checkpoint", "signed_from_blob", "verify_checkpoint", "web_event",
]  # fmt: skip
