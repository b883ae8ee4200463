"""Consent receipts made by hand for tests: a requester's signed request and a coordinator's receipt for it.

A hostile coordinator is simulated with its real signing key: `reissue` takes a genuine receipt,
edits the request it carries (re-signed by whichever province the test chooses) or the receipt's
own fields, and signs the result as the coordinator would.
"""

from __future__ import annotations

from typing import Any

from node.crypto import signing
from node.service.consent_request import receipt_body
from node.wire.v1 import coordinator_pb2, verification_pb2


def _edit(message: Any, edits: dict[str, Any]) -> None:
    for name, value in edits.items():
        if isinstance(value, (list, tuple)):
            message.ClearField(name)
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)


def sign_request(signer: signing.Signer, **fields: Any) -> tuple[bytes, Any]:
    """A ConsentRequestBody with `fields`, serialized, and `signer`'s signature over it."""
    raw = coordinator_pb2.ConsentRequestBody(**fields).SerializeToString()
    return raw, signer.sign(signing.CONSENT_REQUEST, raw)


def issue(coordinator: signing.Signer, raw: bytes, signature: Any, *, consent_id: str = "c-" + "0" * 24,
          registered_at_ms: int = 0, **edits: Any) -> verification_pb2.SignedConsent:
    """The coordinator's receipt for the signed request (`edits` then change the receipt's own fields)."""
    body = receipt_body(raw, signature, coordinator_pb2.ConsentRequestBody.FromString(raw), consent_id, registered_at_ms)
    _edit(body, edits)
    blob = body.SerializeToString()
    return verification_pb2.SignedConsent(body=blob, signature=coordinator.sign(signing.CONSENT, blob))


def reissue(receipt: verification_pb2.SignedConsent, coordinator: signing.Signer, *,
            request_signer: signing.Signer | None = None, request_edits: dict[str, Any] | None = None,
            drop_request: bool = False, **edits: Any) -> verification_pb2.SignedConsent:
    """`receipt` signed again by `coordinator` after edits.

    `request_edits` change the carried request, which `request_signer` then signs again (its
    original signature is kept when no signer is given); `drop_request` removes the request;
    `edits` change the receipt's own fields.
    """
    body = verification_pb2.ConsentBody.FromString(receipt.body)
    if request_edits is not None or request_signer is not None:
        request = coordinator_pb2.ConsentRequestBody.FromString(body.request)
        _edit(request, request_edits or {})
        body.request = request.SerializeToString()
        if request_signer is not None:
            body.request_signature.CopyFrom(request_signer.sign(signing.CONSENT_REQUEST, body.request))
    if drop_request:
        body.ClearField("request")
        body.ClearField("request_signature")
    _edit(body, edits)
    blob = body.SerializeToString()
    return verification_pb2.SignedConsent(body=blob, signature=coordinator.sign(signing.CONSENT, blob))
