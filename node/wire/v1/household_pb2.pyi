from node.wire.v1 import common_pb2 as _common_pb2
from node.wire.v1 import coordinator_pb2 as _coordinator_pb2
from node.wire.v1 import verification_pb2 as _verification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HolderSetBody(_message.Message):
    __slots__ = ("round_id", "consent_id", "requester", "holders", "missing", "previous_round_id", "issued_at_ms")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    consent_id: str
    requester: str
    holders: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    previous_round_id: str
    issued_at_ms: int
    def __init__(self, round_id: _Optional[str] = ..., consent_id: _Optional[str] = ..., requester: _Optional[str] = ..., holders: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ..., previous_round_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ...) -> None: ...

class SignedHolderSet(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class OpenRoundRequest(_message.Message):
    __slots__ = ("consent_id", "round_id", "discovery_tokens", "epoch", "previous", "exclude", "outcome")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    round_id: str
    discovery_tokens: _containers.RepeatedScalarFieldContainer[bytes]
    epoch: int
    previous: SignedHolderSet
    exclude: _containers.RepeatedScalarFieldContainer[str]
    outcome: SignedRoundOutcome
    def __init__(self, consent_id: _Optional[str] = ..., round_id: _Optional[str] = ..., discovery_tokens: _Optional[_Iterable[bytes]] = ..., epoch: _Optional[int] = ..., previous: _Optional[_Union[SignedHolderSet, _Mapping]] = ..., exclude: _Optional[_Iterable[str]] = ..., outcome: _Optional[_Union[SignedRoundOutcome, _Mapping]] = ...) -> None: ...

class RoundOutcomeBody(_message.Message):
    __slots__ = ("holder_set_digest", "failed", "issued_at_ms")
    HOLDER_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    holder_set_digest: bytes
    failed: _containers.RepeatedScalarFieldContainer[str]
    issued_at_ms: int
    def __init__(self, holder_set_digest: _Optional[bytes] = ..., failed: _Optional[_Iterable[str]] = ..., issued_at_ms: _Optional[int] = ...) -> None: ...

class SignedRoundOutcome(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class OpenRoundResponse(_message.Message):
    __slots__ = ("holder_set", "statuses")
    HOLDER_SET_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    holder_set: SignedHolderSet
    statuses: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.ProvinceStatus]
    def __init__(self, holder_set: _Optional[_Union[SignedHolderSet, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[_coordinator_pb2.ProvinceStatus, _Mapping]]] = ...) -> None: ...

class ContributionQueryBody(_message.Message):
    __slots__ = ("requester", "round_id", "nonce", "issued_at_ms", "purpose", "subjects", "measures", "consent", "holder_set", "audience", "reply_seal_suite", "reply_seal_key")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MEASURES_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SET_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    REPLY_SEAL_SUITE_FIELD_NUMBER: _ClassVar[int]
    REPLY_SEAL_KEY_FIELD_NUMBER: _ClassVar[int]
    requester: str
    round_id: str
    nonce: bytes
    issued_at_ms: int
    purpose: str
    subjects: _containers.RepeatedScalarFieldContainer[bytes]
    measures: _containers.RepeatedScalarFieldContainer[str]
    consent: _verification_pb2.SignedConsent
    holder_set: SignedHolderSet
    audience: str
    reply_seal_suite: str
    reply_seal_key: bytes
    def __init__(self, requester: _Optional[str] = ..., round_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., purpose: _Optional[str] = ..., subjects: _Optional[_Iterable[bytes]] = ..., measures: _Optional[_Iterable[str]] = ..., consent: _Optional[_Union[_verification_pb2.SignedConsent, _Mapping]] = ..., holder_set: _Optional[_Union[SignedHolderSet, _Mapping]] = ..., audience: _Optional[str] = ..., reply_seal_suite: _Optional[str] = ..., reply_seal_key: _Optional[bytes] = ...) -> None: ...

class SignedContributionQuery(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class ContributionBody(_message.Message):
    __slots__ = ("responder", "requester", "round_id", "digest_algorithm", "query_digest", "holder_set_digest", "measures", "masked", "as_of_min", "as_of_max", "answered_at_ms")
    RESPONDER_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    QUERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEASURES_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MIN_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MAX_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    responder: str
    requester: str
    round_id: str
    digest_algorithm: str
    query_digest: bytes
    holder_set_digest: bytes
    measures: _containers.RepeatedScalarFieldContainer[str]
    masked: _containers.RepeatedScalarFieldContainer[bytes]
    as_of_min: str
    as_of_max: str
    answered_at_ms: int
    def __init__(self, responder: _Optional[str] = ..., requester: _Optional[str] = ..., round_id: _Optional[str] = ..., digest_algorithm: _Optional[str] = ..., query_digest: _Optional[bytes] = ..., holder_set_digest: _Optional[bytes] = ..., measures: _Optional[_Iterable[str]] = ..., masked: _Optional[_Iterable[bytes]] = ..., as_of_min: _Optional[str] = ..., as_of_max: _Optional[str] = ..., answered_at_ms: _Optional[int] = ...) -> None: ...

class SignedContribution(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: _common_pb2.Signature
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[_Union[_common_pb2.Signature, _Mapping]] = ...) -> None: ...

class ContributeRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: _common_pb2.Sealed
    def __init__(self, query: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class ContributeResponse(_message.Message):
    __slots__ = ("contribution",)
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    contribution: _common_pb2.Sealed
    def __init__(self, contribution: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class RouteRoundRequest(_message.Message):
    __slots__ = ("round_id", "consent_id", "envelopes", "holder_set")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SET_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    consent_id: str
    envelopes: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.Envelope]
    holder_set: SignedHolderSet
    def __init__(self, round_id: _Optional[str] = ..., consent_id: _Optional[str] = ..., envelopes: _Optional[_Iterable[_Union[_coordinator_pb2.Envelope, _Mapping]]] = ..., holder_set: _Optional[_Union[SignedHolderSet, _Mapping]] = ...) -> None: ...

class RouteRoundResponse(_message.Message):
    __slots__ = ("answers", "outcome")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.RoutedAnswer]
    outcome: SignedRoundOutcome
    def __init__(self, answers: _Optional[_Iterable[_Union[_coordinator_pb2.RoutedAnswer, _Mapping]]] = ..., outcome: _Optional[_Union[SignedRoundOutcome, _Mapping]] = ...) -> None: ...

class OpenRoundBatchRequest(_message.Message):
    __slots__ = ("request_id", "households")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOUSEHOLDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    households: _containers.RepeatedCompositeFieldContainer[OpenRoundRequest]
    def __init__(self, request_id: _Optional[str] = ..., households: _Optional[_Iterable[_Union[OpenRoundRequest, _Mapping]]] = ...) -> None: ...

class OpenedRound(_message.Message):
    __slots__ = ("holder_set", "error_code", "error")
    HOLDER_SET_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    holder_set: SignedHolderSet
    error_code: str
    error: str
    def __init__(self, holder_set: _Optional[_Union[SignedHolderSet, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class OpenRoundBatchResponse(_message.Message):
    __slots__ = ("households", "statuses")
    HOUSEHOLDS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    households: _containers.RepeatedCompositeFieldContainer[OpenedRound]
    statuses: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.ProvinceStatus]
    def __init__(self, households: _Optional[_Iterable[_Union[OpenedRound, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[_coordinator_pb2.ProvinceStatus, _Mapping]]] = ...) -> None: ...

class ContributionQueryBatch(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SignedContributionQuery]
    def __init__(self, queries: _Optional[_Iterable[_Union[SignedContributionQuery, _Mapping]]] = ...) -> None: ...

class ContributeBatchRequest(_message.Message):
    __slots__ = ("request_id", "queries")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    queries: _common_pb2.Sealed
    def __init__(self, request_id: _Optional[str] = ..., queries: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class ContributionItem(_message.Message):
    __slots__ = ("index", "contribution", "error_code", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    contribution: SignedContribution
    error_code: str
    error: str
    def __init__(self, index: _Optional[int] = ..., contribution: _Optional[_Union[SignedContribution, _Mapping]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ContributionBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ContributionItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ContributionItem, _Mapping]]] = ...) -> None: ...

class ContributeBatchResponse(_message.Message):
    __slots__ = ("contributions",)
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    contributions: _common_pb2.Sealed
    def __init__(self, contributions: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ...) -> None: ...

class HouseholdRound(_message.Message):
    __slots__ = ("consent_id", "holder_set")
    CONSENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SET_FIELD_NUMBER: _ClassVar[int]
    consent_id: str
    holder_set: SignedHolderSet
    def __init__(self, consent_id: _Optional[str] = ..., holder_set: _Optional[_Union[SignedHolderSet, _Mapping]] = ...) -> None: ...

class RoundBatchEnvelope(_message.Message):
    __slots__ = ("province", "queries", "rounds")
    PROVINCE_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    province: str
    queries: _common_pb2.Sealed
    rounds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, province: _Optional[str] = ..., queries: _Optional[_Union[_common_pb2.Sealed, _Mapping]] = ..., rounds: _Optional[_Iterable[int]] = ...) -> None: ...

class RouteRoundBatchRequest(_message.Message):
    __slots__ = ("request_id", "rounds", "envelopes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rounds: _containers.RepeatedCompositeFieldContainer[HouseholdRound]
    envelopes: _containers.RepeatedCompositeFieldContainer[RoundBatchEnvelope]
    def __init__(self, request_id: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[HouseholdRound, _Mapping]]] = ..., envelopes: _Optional[_Iterable[_Union[RoundBatchEnvelope, _Mapping]]] = ...) -> None: ...

class RouteRoundBatchResponse(_message.Message):
    __slots__ = ("answers", "outcomes")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.RoutedAnswer]
    outcomes: _containers.RepeatedCompositeFieldContainer[SignedRoundOutcome]
    def __init__(self, answers: _Optional[_Iterable[_Union[_coordinator_pb2.RoutedAnswer, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[SignedRoundOutcome, _Mapping]]] = ...) -> None: ...
