from node.wire.v1 import common_pb2 as _common_pb2
from node.wire.v1 import verification_pb2 as _verification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConsentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_STATE_UNSPECIFIED: _ClassVar[ConsentState]
    ACTIVE: _ClassVar[ConsentState]
    REVOKED: _ClassVar[ConsentState]

class RouteStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_STATUS_UNSPECIFIED: _ClassVar[RouteStatus]
    ROUTE_OK: _ClassVar[RouteStatus]
    ROUTE_NO_MATCH: _ClassVar[RouteStatus]
    ROUTE_UNAVAILABLE: _ClassVar[RouteStatus]
    ROUTE_DEADLINE_EXCEEDED: _ClassVar[RouteStatus]
    ROUTE_DENIED: _ClassVar[RouteStatus]
    ROUTE_NOT_HELD: _ClassVar[RouteStatus]
    ROUTE_IMPLAUSIBLE: _ClassVar[RouteStatus]
CONSENT_STATE_UNSPECIFIED: ConsentState
ACTIVE: ConsentState
REVOKED: ConsentState
ROUTE_STATUS_UNSPECIFIED: RouteStatus
ROUTE_OK: RouteStatus
ROUTE_NO_MATCH: RouteStatus
ROUTE_UNAVAILABLE: RouteStatus
ROUTE_DEADLINE_EXCEEDED: RouteStatus
ROUTE_DENIED: RouteStatus
ROUTE_NOT_HELD: RouteStatus
ROUTE_IMPLAUSIBLE: RouteStatus

class ConsentRequestBody(_message.Message):
    __slots__ = ("requester", "request_id", "nonce", "issued_at_ms", "purpose", "subject_salt", "subject_commitments", "scopes", "not_before_ms", "not_after_ms", "case_reference", "evidence_algorithm", "evidence_digest", "discovery_commitments", "discovery_first_epoch")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_SALT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIRST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    requester: str
    request_id: str
    nonce: bytes
    issued_at_ms: int
    purpose: str
    subject_salt: bytes
    subject_commitments: _containers.RepeatedScalarFieldContainer[bytes]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    not_before_ms: int
    not_after_ms: int
    case_reference: str
    evidence_algorithm: str
    evidence_digest: bytes
    discovery_commitments: _containers.RepeatedScalarFieldContainer[bytes]
    discovery_first_epoch: int
    def __init__(self, requester: _Optional[str] = ..., request_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., purpose: _Optional[str] = ..., subject_salt: _Optional[bytes] = ..., subject_commitments: _Optional[_Iterable[bytes]] = ..., scopes: _Optional[_Iterable[str]] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., case_reference: _Optional[str] = ..., evidence_algorithm: _Optional[str] = ..., evidence_digest: _Optional[bytes] = ..., discovery_commitments: _Optional[_Iterable[bytes]] = ..., discovery_first_epoch: _Optional[int] = ...) -> None: ...

class RegisterConsentRequest(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class RevokeConsentRequest(_message.Message):
    __slots__ = ("consent_id", "reason")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    reason: str
    def __init__(self, consent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetConsentRequest(_message.Message):
    __slots__ = ("consent_id",)
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    def __init__(self, consent_id: _Optional[str] = ...) -> None: ...

class ConsentStatus(_message.Message):
    __slots__ = ("receipt", "state", "revoked_at_ms", "ledger_index")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    receipt: _verification_pb2.SignedConsent
    state: ConsentState
    revoked_at_ms: int
    ledger_index: int
    def __init__(self, receipt: _Optional[_Union[_verification_pb2.SignedConsent, _Mapping]] = ..., state: _Optional[_Union[ConsentState, str]] = ..., revoked_at_ms: _Optional[int] = ..., ledger_index: _Optional[int] = ...) -> None: ...

class ConsentUpdatesRequest(_message.Message):
    __slots__ = ("after_index", "epoch")
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    after_index: int
    epoch: bytes
    def __init__(self, after_index: _Optional[int] = ..., epoch: _Optional[bytes] = ...) -> None: ...

class ConsentUpdate(_message.Message):
    __slots__ = ("ledger_index", "consent_id", "state")
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ledger_index: int
    consent_id: str
    state: ConsentState
    def __init__(self, ledger_index: _Optional[int] = ..., consent_id: _Optional[str] = ..., state: _Optional[_Union[ConsentState, str]] = ...) -> None: ...

class EpochLimit(_message.Message):
    __slots__ = ("epoch", "last_index")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    epoch: bytes
    last_index: int
    def __init__(self, epoch: _Optional[bytes] = ..., last_index: _Optional[int] = ...) -> None: ...

class LedgerHeadBody(_message.Message):
    __slots__ = ("ledger_id", "epoch", "head_index", "head_hash", "lineage")
    LEDGER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ledger_id: bytes
    epoch: bytes
    head_index: int
    head_hash: bytes
    lineage: _containers.RepeatedCompositeFieldContainer[EpochLimit]
    def __init__(self, ledger_id: _Optional[bytes] = ..., epoch: _Optional[bytes] = ..., head_index: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., lineage: _Optional[_Iterable[_Union[EpochLimit, _Mapping]]] = ...) -> None: ...

class SignedLedgerHead(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class ConsentUpdatesResponse(_message.Message):
    __slots__ = ("updates", "head_index", "as_of_ms", "head", "after_hash", "audit_head")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    HEAD_INDEX_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    AFTER_HASH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[ConsentUpdate]
    head_index: int
    as_of_ms: int
    head: SignedLedgerHead
    after_hash: bytes
    audit_head: SignedAuditHead
    def __init__(self, updates: _Optional[_Iterable[_Union[ConsentUpdate, _Mapping]]] = ..., head_index: _Optional[int] = ..., as_of_ms: _Optional[int] = ..., head: _Optional[_Union[SignedLedgerHead, _Mapping]] = ..., after_hash: _Optional[bytes] = ..., audit_head: _Optional[_Union[SignedAuditHead, _Mapping]] = ...) -> None: ...

class AnnouncementBody(_message.Message):
    __slots__ = ("province", "endpoint", "seal_suite", "seal_public_key", "tls_cert_sha256", "issued_at_ms", "mask_public_key", "tls_name")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SEAL_SUITE_FIELD_NUMBER: _ClassVar[int]
    SEAL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_NAME_FIELD_NUMBER: _ClassVar[int]
    province: str
    endpoint: str
    seal_suite: str
    seal_public_key: bytes
    tls_cert_sha256: bytes
    issued_at_ms: int
    mask_public_key: bytes
    tls_name: str
    def __init__(self, province: _Optional[str] = ..., endpoint: _Optional[str] = ..., seal_suite: _Optional[str] = ..., seal_public_key: _Optional[bytes] = ..., tls_cert_sha256: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., mask_public_key: _Optional[bytes] = ..., tls_name: _Optional[str] = ...) -> None: ...

class SignedAnnouncement(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class AnnounceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DirectoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DirectoryBody(_message.Message):
    __slots__ = ("issued_at_ms", "members", "standards", "discovery_epoch_s", "replicas")
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STANDARDS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_EPOCH_S_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    issued_at_ms: int
    members: _containers.RepeatedCompositeFieldContainer[SignedAnnouncement]
    standards: _containers.RepeatedCompositeFieldContainer[SignedStandards]
    discovery_epoch_s: int
    replicas: _containers.RepeatedCompositeFieldContainer[SignedAnnouncement]
    def __init__(self, issued_at_ms: _Optional[int] = ..., members: _Optional[_Iterable[_Union[SignedAnnouncement, _Mapping]]] = ..., standards: _Optional[_Iterable[_Union[SignedStandards, _Mapping]]] = ..., discovery_epoch_s: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[SignedAnnouncement, _Mapping]]] = ...) -> None: ...

class SignedDirectory(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("consent_id", "request_id", "discovery_tokens", "epoch")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    request_id: str
    discovery_tokens: _containers.RepeatedScalarFieldContainer[bytes]
    epoch: int
    def __init__(self, consent_id: _Optional[str] = ..., request_id: _Optional[str] = ..., discovery_tokens: _Optional[_Iterable[bytes]] = ..., epoch: _Optional[int] = ...) -> None: ...

class LocatorBody(_message.Message):
    __slots__ = ("province", "epoch", "filter_kind", "subject_count", "shard_bits", "shard", "shard_count", "filter", "generation")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FILTER_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_BITS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    province: str
    epoch: int
    filter_kind: str
    subject_count: int
    shard_bits: int
    shard: int
    shard_count: int
    filter: bytes
    generation: int
    def __init__(self, province: _Optional[str] = ..., epoch: _Optional[int] = ..., filter_kind: _Optional[str] = ..., subject_count: _Optional[int] = ..., shard_bits: _Optional[int] = ..., shard: _Optional[int] = ..., shard_count: _Optional[int] = ..., filter: _Optional[bytes] = ..., generation: _Optional[int] = ...) -> None: ...

class SignedLocator(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class PublishLocatorResponse(_message.Message):
    __slots__ = ("complete",)
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    complete: bool
    def __init__(self, complete: _Optional[bool] = ...) -> None: ...

class HeldLocatorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeldLocator(_message.Message):
    __slots__ = ("epoch", "generation")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    generation: int
    def __init__(self, epoch: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class HeldLocatorsResponse(_message.Message):
    __slots__ = ("locators",)
    LOCATORS_FIELD_NUMBER: _ClassVar[int]
    locators: _containers.RepeatedCompositeFieldContainer[HeldLocator]
    def __init__(self, locators: _Optional[_Iterable[_Union[HeldLocator, _Mapping]]] = ...) -> None: ...

class ProvinceStatus(_message.Message):
    __slots__ = ("province", "status", "message")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    province: str
    status: RouteStatus
    message: str
    def __init__(self, province: _Optional[str] = ..., status: _Optional[_Union[RouteStatus, str]] = ..., message: _Optional[str] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("holders", "statuses", "directory_digest")
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    holders: _containers.RepeatedScalarFieldContainer[str]
    statuses: _containers.RepeatedCompositeFieldContainer[ProvinceStatus]
    directory_digest: bytes
    def __init__(self, holders: _Optional[_Iterable[str]] = ..., statuses: _Optional[_Iterable[_Union[ProvinceStatus, _Mapping]]] = ..., directory_digest: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("province", "query", "possession_commitments")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    POSSESSION_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    province: str
    query: _common_pb2.Sealed
    possession_commitments: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, province: _Optional[str] = ..., query: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ..., possession_commitments: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("consent_id", "request_id", "envelopes")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    request_id: str
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, consent_id: _Optional[str] = ..., request_id: _Optional[str] = ..., envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class RoutedAnswer(_message.Message):
    __slots__ = ("province", "status", "message", "answer")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    province: str
    status: RouteStatus
    message: str
    answer: _common_pb2.Sealed
    def __init__(self, province: _Optional[str] = ..., status: _Optional[_Union[RouteStatus, str]] = ..., message: _Optional[str] = ..., answer: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[RoutedAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[RoutedAnswer, _Mapping]]] = ...) -> None: ...

class RevocationsRequest(_message.Message):
    __slots__ = ("known_sha256",)
    KNOWN_SHA256_FIELD_NUMBER: _ClassVar[int]
    known_sha256: bytes
    def __init__(self, known_sha256: _Optional[bytes] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("crl_der", "sha256")
    CRL_DER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    crl_der: bytes
    sha256: bytes
    def __init__(self, crl_der: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class AuditCheckpoint(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class AuditHeadBody(_message.Message):
    __slots__ = ("head_index", "head_hash", "at_ms", "anchor_index")
    HEAD_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    head_index: int
    head_hash: bytes
    at_ms: int
    anchor_index: int
    def __init__(self, head_index: _Optional[int] = ..., head_hash: _Optional[bytes] = ..., at_ms: _Optional[int] = ..., anchor_index: _Optional[int] = ...) -> None: ...

class SignedAuditHead(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class CheckpointAck(_message.Message):
    __slots__ = ("ledger_index", "audit_head")
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    ledger_index: int
    audit_head: SignedAuditHead
    def __init__(self, ledger_index: _Optional[int] = ..., audit_head: _Optional[_Union[SignedAuditHead, _Mapping]] = ...) -> None: ...

class LatestCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterConsentBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RegisterConsentRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RegisterConsentRequest, _Mapping]]] = ...) -> None: ...

class ConsentBatchItem(_message.Message):
    __slots__ = ("status", "error_code", "error")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: ConsentStatus
    error_code: str
    error: str
    def __init__(self, status: _Optional[_Union[ConsentStatus, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RegisterConsentBatchResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ConsentBatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ConsentBatchItem, _Mapping]]] = ...) -> None: ...

class HouseholdDiscovery(_message.Message):
    __slots__ = ("consent_id", "discovery_tokens")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    discovery_tokens: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, consent_id: _Optional[str] = ..., discovery_tokens: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DiscoverBatchRequest(_message.Message):
    __slots__ = ("request_id", "households", "epoch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOUSEHOLDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    households: _containers.RepeatedCompositeFieldContainer[HouseholdDiscovery]
    epoch: int
    def __init__(self, request_id: _Optional[str] = ..., households: _Optional[_Iterable[_Union[HouseholdDiscovery, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class HouseholdHolders(_message.Message):
    __slots__ = ("holders", "error_code", "error")
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    holders: _containers.RepeatedScalarFieldContainer[str]
    error_code: str
    error: str
    def __init__(self, holders: _Optional[_Iterable[str]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class DiscoverBatchResponse(_message.Message):
    __slots__ = ("households", "statuses", "directory_digest")
    HOUSEHOLDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    households: _containers.RepeatedCompositeFieldContainer[HouseholdHolders]
    statuses: _containers.RepeatedCompositeFieldContainer[ProvinceStatus]
    directory_digest: bytes
    def __init__(self, households: _Optional[_Iterable[_Union[HouseholdHolders, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[ProvinceStatus, _Mapping]]] = ..., directory_digest: _Optional[bytes] = ...) -> None: ...

class RouteBatchRequest(_message.Message):
    __slots__ = ("request_id", "consent_ids", "envelopes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    consent_ids: _containers.RepeatedScalarFieldContainer[str]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, request_id: _Optional[str] = ..., consent_ids: _Optional[_Iterable[str]] = ..., envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class RouteBatchResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[RoutedAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[RoutedAnswer, _Mapping]]] = ...) -> None: ...

class SignedStandards(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class PublishStandardsResponse(_message.Message):
    __slots__ = ("province", "version", "entries")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    province: str
    version: int
    entries: int
    def __init__(self, province: _Optional[str] = ..., version: _Optional[int] = ..., entries: _Optional[int] = ...) -> None: ...
