"""A signed directory verified once per change: the same bytes are not verified again while every certificate in them stands.

A full verification (`verify_directory`) checks the coordinator's signature and every member's
announcement and standards document. Signatures over unchanged bytes cannot change their
verdict; certificates can (revoked, expired, now valid). So an unchanged directory is answered
from the last verification as long as each certificate it carries still gets the verdict it
got then (`TrustAnchor.validate_signing_cert`, cached: no signature is checked); any other
verdict, or other bytes, verifies the directory again in full.
"""

from __future__ import annotations

import hashlib
import threading

from google.protobuf.message import DecodeError

from node.coordinator.directory import FederationDirectory, verify_directory
from node.crypto import signing
from node.crypto.errors import CertificateRejected
from node.wire.v1 import coordinator_pb2


def directory_digest(signed: coordinator_pb2.SignedDirectory) -> bytes:
    """SHA-256 of a signed directory's body: what `DiscoverResponse.directory_digest` names."""
    return hashlib.sha256(signed.body).digest()


class VerifiedDirectory:
    """The last directory verified, and the certificate verdicts it was verified under."""

    def __init__(self, verifier: signing.Verifier) -> None:
        self.verifier = verifier
        self._lock = threading.Lock()
        self._key: bytes = b""
        self._certificates: tuple[bytes, ...] = ()
        self._verdicts: tuple[bool, ...] = ()
        self._verified: FederationDirectory | None = None
        #: Full verifications done (each a signature check per member; an unchanged directory adds none).
        self.verifications = 0

    @property
    def digest(self) -> bytes:
        """The body digest of the directory last verified (b"" before the first)."""
        return self._key[:32]

    def get(self, signed: coordinator_pb2.SignedDirectory) -> FederationDirectory:
        """`signed`, verified (Refusal when the coordinator's signature fails, as `verify_directory`)."""
        key = directory_digest(signed) + hashlib.sha256(signed.signature.SerializeToString()).digest()
        with self._lock:
            if self._verified is not None and key == self._key and self._verdicts_now() == self._verdicts:
                return self._verified
        verified = verify_directory(signed, self.verifier)
        certificates = _certificates(signed)
        with self._lock:
            self.verifications += 1
            self._key, self._certificates, self._verified = key, certificates, verified
            self._verdicts = self._verdicts_now()
        return verified

    def _verdicts_now(self) -> tuple[bool, ...]:
        return tuple(self._stands(der) for der in self._certificates)

    def _stands(self, der: bytes) -> bool:
        try:
            self.verifier.anchor.validate_signing_cert(der)
        except CertificateRejected:
            return False
        return True


def _certificates(signed: coordinator_pb2.SignedDirectory) -> tuple[bytes, ...]:
    """Every signing certificate a verification of `signed` relies on: the coordinator's, each member's, each publisher's."""
    try:
        body = coordinator_pb2.DirectoryBody.FromString(signed.body)
    except DecodeError:  # verify_directory refused it already
        return (signed.signature.certificate,)
    return (signed.signature.certificate, *(a.signature.certificate for a in body.members),
            *(s.signature.certificate for s in body.standards))
