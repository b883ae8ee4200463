from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Comparator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARATOR_UNSPECIFIED: _ClassVar[Comparator]
    LT: _ClassVar[Comparator]
    LE: _ClassVar[Comparator]
    EQ: _ClassVar[Comparator]
    NE: _ClassVar[Comparator]
    GE: _ClassVar[Comparator]
    GT: _ClassVar[Comparator]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    SATISFIED: _ClassVar[Outcome]
    NOT_SATISFIED: _ClassVar[Outcome]
    NO_RECORD: _ClassVar[Outcome]
    DENIED: _ClassVar[Outcome]
COMPARATOR_UNSPECIFIED: Comparator
LT: Comparator
LE: Comparator
EQ: Comparator
NE: Comparator
GE: Comparator
GT: Comparator
OUTCOME_UNSPECIFIED: Outcome
SATISFIED: Outcome
NOT_SATISFIED: Outcome
NO_RECORD: Outcome
DENIED: Outcome

class Signature(_message.Message):
    __slots__ = ("algorithm", "key_id", "certificate", "value", "batch")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    key_id: bytes
    certificate: bytes
    value: bytes
    batch: BatchProof
    def __init__(self, algorithm: _Optional[str] = ..., key_id: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., value: _Optional[bytes] = ..., batch: _Optional[_Union[BatchProof, _Mapping]] = ...) -> None: ...

class BatchProof(_message.Message):
    __slots__ = ("salt", "leaf_index", "leaf_count", "path")
    SALT_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_COUNT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    salt: bytes
    leaf_index: int
    leaf_count: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, salt: _Optional[bytes] = ..., leaf_index: _Optional[int] = ..., leaf_count: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("suite", "recipient", "recipient_key_id", "ciphertext")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    suite: str
    recipient: str
    recipient_key_id: bytes
    ciphertext: bytes
    def __init__(self, suite: _Optional[str] = ..., recipient: _Optional[str] = ..., recipient_key_id: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("attribute", "op", "operand")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    OPERAND_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    op: Comparator
    operand: int
    def __init__(self, attribute: _Optional[str] = ..., op: _Optional[_Union[Comparator, str]] = ..., operand: _Optional[int] = ...) -> None: ...
