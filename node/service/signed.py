"""Messages the coordinator signs (directory, ledger heads, holder sets), opened in one way: the
signature verifies, the signer is the coordinator, the body parses; else one public refusal."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain.regions import COORDINATOR_URI
from node.errors import ErrorCode, Refusal
from node.wire.v1 import common_pb2

M = TypeVar("M", bound=Message)


def coordinator_signed(signature: common_pb2.Signature, domain: str, body: bytes, message: type[M],
                       verifier: signing.Verifier, what: str) -> M:
    """`body` parsed as `message` once it verifies as the coordinator's signature under `domain`.

    Refusal(UNAUTHENTICATED) "<what> does not verify" or "<what> not signed by the coordinator".
    """
    try:
        verified = verifier.verify(signature, domain, body)
        parsed = message.FromString(body)
    except (SignatureInvalid, CertificateRejected, DecodeError):
        raise Refusal(ErrorCode.UNAUTHENTICATED, f"{what} does not verify") from None
    if verified.identity.identity != COORDINATOR_URI:
        raise Refusal(ErrorCode.UNAUTHENTICATED, f"{what} not signed by the coordinator")
    return parsed
