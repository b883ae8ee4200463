"""Published standards at the coordinator: each province's signed document, the latest version kept and persisted.

The coordinator accepts a document only from the province that signed it and that it names
as publisher, and only with a version above the one it holds; it carries the documents
unchanged in the signed directory, where every member checks the province's own signature.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain.catalogue import Catalogue
from node.domain.policy import Policy
from node.domain.standards import MAX_DOCUMENT_BYTES, StandardsDocument, StandardsError, from_canonical
from node.errors import ErrorCode, Refusal
from node.store.interfaces import SharedDocument
from node.store.sqlite.documents import FileDocument
from node.wire.v1 import coordinator_pb2

PUBLISH_DECISION = "standards.publish"  # the coordinator's audit decision for an accepted publication


def verify_standards(signed: coordinator_pb2.SignedStandards, verifier: signing.Verifier, *,
                     catalogue: Catalogue | None = None, policy: Policy | None = None) -> StandardsDocument:
    """The document, once its province's signature verifies and the signer is its publisher; else Refusal."""
    if len(signed.body) > MAX_DOCUMENT_BYTES:
        raise Refusal(ErrorCode.TOO_MANY, f"standards document exceeds {MAX_DOCUMENT_BYTES} bytes")
    try:
        verified = verifier.verify(signed.signature, signing.STANDARDS, signed.body)
    except (SignatureInvalid, CertificateRejected):
        raise Refusal(ErrorCode.UNAUTHENTICATED, "standards document does not verify") from None
    try:
        doc = from_canonical(signed.body, catalogue, policy)
    except StandardsError as exc:
        raise Refusal(ErrorCode.MALFORMED, str(exc)) from None
    if verified.identity.province is None or verified.identity.province != doc.province:
        raise Refusal(ErrorCode.IDENTITY_MISMATCH, "a standards document is signed by the province it names as publisher")
    return doc


@dataclass(frozen=True)
class Held:
    """One province's document in force at the coordinator, as signed and as read."""

    signed: coordinator_pb2.SignedStandards
    document: StandardsDocument


class PublishedStandards:
    """The latest standards document of each province; persisted (JSON of hex messages) so a restart keeps it.

    Kept in a shared document (`Storage.document("standards.json")`: that file in the data dir, or a row on
    PostgreSQL) so every coordinator process and replica serves the same ones; a Path is that file.
    """

    def __init__(self, path: Path | SharedDocument, verifier: signing.Verifier, *, catalogue: Catalogue | None = None,
                 policy: Policy | None = None) -> None:
        self.path: Path | None = path if isinstance(path, Path) else None
        self._doc: SharedDocument = FileDocument(path) if isinstance(path, Path) else path
        self.verifier = verifier
        self.catalogue = catalogue
        self.policy = policy
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._reload()

    def publish(self, peer_province: str, signed: coordinator_pb2.SignedStandards) -> StandardsDocument:
        """Accept `peer_province`'s document: signed by it, naming it, with a version above the one held."""
        doc = verify_standards(signed, self.verifier, catalogue=self.catalogue, policy=self.policy)
        if doc.province != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH, "a province publishes only its own standards")
        with self._lock, self._doc.locked():
            self._reload()
            held = self._held.get(doc.province)
            if held is not None and doc.version <= held.document.version:
                raise Refusal(ErrorCode.MALFORMED,
                              f"version {doc.version} is not above version {held.document.version} in force")
            self._held[doc.province] = Held(signed, doc)
            self._persist()
        return doc

    def signed_documents(self) -> list[coordinator_pb2.SignedStandards]:
        """The documents in force, by province code, as their provinces signed them."""
        with self._lock:
            self._reload()
            return [self._held[p].signed for p in sorted(self._held)]

    def revision(self) -> tuple[tuple[str, int], ...]:
        """(province, version) of every document held: changes exactly when a publication is accepted."""
        with self._lock:
            self._reload()
            return tuple((p, self._held[p].document.version) for p in sorted(self._held))

    def _reload(self) -> None:
        """Re-read the persisted documents when another coordinator worker changed them (each verified again)."""
        changed = self._doc.changed()
        if changed is None:
            return
        try:
            raw = json.loads(changed).get("standards", [])
        except (ValueError, AttributeError):
            return  # unreadable: keep what is held
        for text in raw:
            try:
                signed = coordinator_pb2.SignedStandards.FromString(bytes.fromhex(text))
                doc = verify_standards(signed, self.verifier, catalogue=self.catalogue, policy=self.policy)
            except (Refusal, ValueError, TypeError, DecodeError):
                continue
            held = self._held.get(doc.province)
            if held is None or doc.version > held.document.version:
                self._held[doc.province] = Held(signed, doc)

    def _persist(self) -> None:
        """Replace the document atomically and durably (committed before the publication is acknowledged: a
        replica that dies next, or the machine, does not lose it)."""
        body = {"standards": [self._held[p].signed.SerializeToString().hex() for p in sorted(self._held)]}
        self._doc.write(json.dumps(body).encode())
