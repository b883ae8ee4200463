"""The base of every Hedui error, and the one catalogue of refusal codes.

    HeduiError
    ├── BadInput                 user or peer input is invalid (CLI exit 2)
    │   ├── InvalidIdNumber      (node.domain.idnumber)
    │   ├── UnknownItem, UnknownPurpose, MalformedCheck   (node.domain)
    │   ├── ConfigError          (node.config)
    │   └── IngestRejected       (node.store.errors)
    ├── Refusal                  a request is refused; carries an ErrorCode (CLI exit 3)
    ├── CryptoError              (node.crypto.errors): SignatureInvalid, CertificateRejected, PkiError
    └── StoreError               (node.store.errors): StoreCorrupt

Messages of these errors are public: they never contain an ID number or a data value. Code
never puts one there, and `HeduiError` masks any ID-number-like run of digits in a message as
it is made, so a value echoed by mistake cannot leak through an error. Only the server edge
(node.server.edge) knows how an ErrorCode maps to a gRPC status.
"""

from __future__ import annotations

import enum


class HeduiError(Exception):
    """Base of all errors raised by Hedui code; the message is safe to show and log."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(_redact(a) if isinstance(a, str) else a for a in args))


def _redact(text: str) -> str:
    from node.domain.idnumber import redact  # node.domain imports this module: import when first needed

    return redact(text)


class BadInput(HeduiError):
    """Something supplied by a user or a peer is invalid (CLI exit 2, gRPC INVALID_ARGUMENT)."""


class ErrorCode(enum.Enum):
    """Why a request was refused. The value is the public message."""

    MALFORMED = "malformed request"
    UNAUTHENTICATED = "request signature or certificate not accepted"
    IDENTITY_MISMATCH = "signer, requester and TLS peer must be the same member"
    NOT_ADDRESSED_HERE = "query is addressed to another province"
    CLOCK_WINDOW = "request issue time is outside the accepted clock window"
    REPLAYED = "request nonce was already used"
    UNKNOWN_PURPOSE = "unknown purpose"
    UNKNOWN_ITEM = "unknown data item"
    TOO_MANY = "too many subjects or checks"
    CONSENT_MISSING = "query carries no consent receipt"
    CONSENT_INVALID = "consent receipt not valid for this query"
    CONSENT_REVOKED = "consent has been revoked"
    CONSENT_EXPIRED = "consent is expired or not yet valid"
    NOT_AUTHORISED = "caller is not authorised for this call"
    NOT_HELD = "no subject of the query is held here"
    PROBING_LIMIT = "probing limit reached: checks at values other than published standards are limited per consent and item"
    RATE_LIMITED = "too many requests from this peer"
    OVERLOADED = "server is at its concurrency limit"
    DEADLINE = "deadline exceeded"
    UNAVAILABLE = "service temporarily unavailable"
    INTERNAL = "internal error"


class Refusal(HeduiError):
    """A request is refused. `code` is public; `detail` is public too and may refine it."""

    def __init__(self, code: ErrorCode, detail: str | None = None) -> None:
        self.code = code
        self.detail = _redact(detail) if detail else detail
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
