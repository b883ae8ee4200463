from node.wire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryBody(_message.Message):
    __slots__ = ("requester", "request_id", "nonce", "issued_at_ms", "purpose", "subjects", "checks", "consent", "audience", "reply_seal_suite", "reply_seal_key", "accept_packed")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    REPLY_SEAL_SUITE_FIELD_NUMBER: _ClassVar[int]
    REPLY_SEAL_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_PACKED_FIELD_NUMBER: _ClassVar[int]
    requester: str
    request_id: str
    nonce: bytes
    issued_at_ms: int
    purpose: str
    subjects: _containers.RepeatedScalarFieldContainer[bytes]
    checks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Check]
    consent: SignedConsent
    audience: str
    reply_seal_suite: str
    reply_seal_key: bytes
    accept_packed: bool
    def __init__(self, requester: _Optional[str] = ..., request_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., purpose: _Optional[str] = ..., subjects: _Optional[_Iterable[bytes]] = ..., checks: _Optional[_Iterable[_Union[_common_pb2.Check, _Mapping]]] = ..., consent: _Optional[_Union[SignedConsent, _Mapping]] = ..., audience: _Optional[str] = ..., reply_seal_suite: _Optional[str] = ..., reply_seal_key: _Optional[bytes] = ..., accept_packed: _Optional[bool] = ...) -> None: ...

class SignedQuery(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("subject", "check", "outcome", "as_of")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    subject: int
    check: int
    outcome: _common_pb2.Outcome
    as_of: str
    def __init__(self, subject: _Optional[int] = ..., check: _Optional[int] = ..., outcome: _Optional[_Union[_common_pb2.Outcome, str]] = ..., as_of: _Optional[str] = ...) -> None: ...

class AnswerBody(_message.Message):
    __slots__ = ("responder", "requester", "request_id", "digest_algorithm", "query_digest", "answered_at_ms", "results", "packed")
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    QUERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    responder: str
    requester: str
    request_id: str
    digest_algorithm: str
    query_digest: bytes
    answered_at_ms: int
    results: _containers.RepeatedCompositeFieldContainer[Result]
    packed: PackedResults
    def __init__(self, responder: _Optional[str] = ..., requester: _Optional[str] = ..., request_id: _Optional[str] = ..., digest_algorithm: _Optional[str] = ..., query_digest: _Optional[bytes] = ..., answered_at_ms: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., packed: _Optional[_Union[PackedResults, _Mapping]] = ...) -> None: ...

class PackedResults(_message.Message):
    __slots__ = ("outcomes", "dates", "date_of")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    DATES_FIELD_NUMBER: _ClassVar[int]
    DATE_OF_FIELD_NUMBER: _ClassVar[int]
    outcomes: bytes
    dates: _containers.RepeatedScalarFieldContainer[str]
    date_of: bytes
    def __init__(self, outcomes: _Optional[bytes] = ..., dates: _Optional[_Iterable[str]] = ..., date_of: _Optional[bytes] = ...) -> None: ...

class SignedAnswer(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("signed", "sealed")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    signed: SignedQuery
    sealed: _common_pb2.Sealed
    def __init__(self, signed: _Optional[_Union[SignedQuery, _Mapping]] = ..., sealed: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("signed", "sealed", "possession_proof")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    POSSESSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    signed: SignedAnswer
    sealed: _common_pb2.Sealed
    possession_proof: bytes
    def __init__(self, signed: _Optional[_Union[SignedAnswer, _Mapping]] = ..., sealed: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ..., possession_proof: _Optional[bytes] = ...) -> None: ...

class LockedQuery(_message.Message):
    __slots__ = ("suite", "request_id", "salt", "subjects", "ciphertext")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    suite: str
    request_id: str
    salt: bytes
    subjects: _containers.RepeatedCompositeFieldContainer[LockedSubject]
    ciphertext: bytes
    def __init__(self, suite: _Optional[str] = ..., request_id: _Optional[str] = ..., salt: _Optional[bytes] = ..., subjects: _Optional[_Iterable[_Union[LockedSubject, _Mapping]]] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class LockedSubject(_message.Message):
    __slots__ = ("token", "wrapped_key")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    token: bytes
    wrapped_key: bytes
    def __init__(self, token: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ...) -> None: ...

class LockedBatch(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[LockedQuery]
    def __init__(self, queries: _Optional[_Iterable[_Union[LockedQuery, _Mapping]]] = ...) -> None: ...

class PossessionProof(_message.Message):
    __slots__ = ("index", "proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    proof: bytes
    def __init__(self, index: _Optional[int] = ..., proof: _Optional[bytes] = ...) -> None: ...

class QueryBatch(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SignedQuery]
    def __init__(self, queries: _Optional[_Iterable[_Union[SignedQuery, _Mapping]]] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("index", "answer", "error_code", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    answer: SignedAnswer
    error_code: str
    error: str
    def __init__(self, index: _Optional[int] = ..., answer: _Optional[_Union[SignedAnswer, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AnswerBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class VerifyBatchRequest(_message.Message):
    __slots__ = ("sealed",)
    SEALED_FIELD_NUMBER: _ClassVar[int]
    sealed: _common_pb2.Sealed
    def __init__(self, sealed: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class VerifyBatchResponse(_message.Message):
    __slots__ = ("sealed", "possession_proofs")
    SEALED_FIELD_NUMBER: _ClassVar[int]
    POSSESSION_PROOFS_FIELD_NUMBER: _ClassVar[int]
    sealed: _common_pb2.Sealed
    possession_proofs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sealed: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ..., possession_proofs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ConsentBody(_message.Message):
    __slots__ = ("consent_id", "requester", "subject_commitments", "purpose", "scopes", "not_before_ms", "not_after_ms", "case_reference", "evidence_algorithm", "evidence_digest", "registered_at_ms", "ledger_index", "subject_salt", "ledger_epoch", "request", "request_signature", "discovery_commitments", "discovery_first_epoch")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_SALT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIRST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    requester: str
    subject_commitments: _containers.RepeatedScalarFieldContainer[bytes]
    purpose: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    not_before_ms: int
    not_after_ms: int
    case_reference: str
    evidence_algorithm: str
    evidence_digest: bytes
    registered_at_ms: int
    ledger_index: int
    subject_salt: bytes
    ledger_epoch: bytes
    request: bytes
    request_signature: _common_pb2.Signature
    discovery_commitments: _containers.RepeatedScalarFieldContainer[bytes]
    discovery_first_epoch: int
    def __init__(self, consent_id: _Optional[str] = ..., requester: _Optional[str] = ..., subject_commitments: _Optional[_Iterable[bytes]] = ..., purpose: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ..., case_reference: _Optional[str] = ..., evidence_algorithm: _Optional[str] = ..., evidence_digest: _Optional[bytes] = ..., registered_at_ms: _Optional[int] = ..., ledger_index: _Optional[int] = ..., subject_salt: _Optional[bytes] = ..., ledger_epoch: _Optional[bytes] = ..., request: _Optional[bytes] = ..., request_signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ..., discovery_commitments: _Optional[_Iterable[bytes]] = ..., discovery_first_epoch: _Optional[int] = ...) -> None: ...

class SignedConsent(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...
