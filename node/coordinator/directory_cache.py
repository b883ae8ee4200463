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
import time
from collections.abc import Callable
from typing import Final

from google.protobuf.message import DecodeError

from node.coordinator.directory import FederationDirectory, verify_directory
from node.crypto import signing
from node.crypto.errors import CertificateRejected
from node.wire.v1 import coordinator_pb2

#: The longest an unchanged directory's certificate verdicts go without a look (a certificate that was
#: not yet valid joins within this; revocation and expiry are seen at once).
RECHECK_S: Final[float] = 60.0


def directory_digest(signed: coordinator_pb2.SignedDirectory) -> bytes:
    """SHA-256 of a signed directory's body: what `DiscoverResponse.directory_digest` names."""
    return hashlib.sha256(signed.body).digest()


class VerifiedDirectory:
    """The last directory verified, and the certificate verdicts it was verified under."""

    def __init__(self, verifier: signing.Verifier, *, clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.clock = clock
        self._lock = threading.Lock()
        self._key: bytes = b""
        self._signed: coordinator_pb2.SignedDirectory | None = None
        self._certificates: tuple[bytes, ...] = ()
        self._verdicts: tuple[bool, ...] = ()
        self._verified: FederationDirectory | None = None
        # The verdicts need no new look while the revocation set is this one and no certificate expires.
        self._revoked: frozenset[int] | None = None
        self._recheck_at = 0.0
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
            if self._verified is not None and key == self._key and self._still_stands():
                return self._verified
        return self._verify(signed, key)

    def current(self) -> FederationDirectory | None:
        """The directory last verified, verified again first if a certificate in it changed its verdict; None before the first."""
        with self._lock:
            if self._verified is None or self._signed is None:
                return None
            if self._still_stands():
                return self._verified
            signed, key = self._signed, self._key
        return self._verify(signed, key)

    def _verify(self, signed: coordinator_pb2.SignedDirectory, key: bytes) -> FederationDirectory:
        while True:  # a CRL replaced during the verification would pair its verdicts with the older outcome
            revoked = self.verifier.anchor.revoked_serials
            verified = verify_directory(signed, self.verifier)
            if self.verifier.anchor.revoked_serials is revoked:
                break
        certificates = _certificates(signed)
        with self._lock:
            self.verifications += 1
            self._key, self._signed, self._certificates, self._verified = key, signed, certificates, verified
            self._verdicts = self._look()
        return verified

    def _still_stands(self) -> bool:
        """Every certificate keeps the verdict of the verification (lock held): looked at again only
        when the revocation set was replaced or a certificate's validity may have ended."""
        if self.verifier.anchor.revoked_serials is self._revoked and self.clock() < self._recheck_at:
            return True
        return self._look() == self._verdicts

    def _look(self) -> tuple[bool, ...]:
        """The certificates' verdicts now (cached checks, no signature); notes when to look again."""
        anchor = self.verifier.anchor
        revoked, now = anchor.revoked_serials, self.clock()
        verdicts, recheck_at = [], now + RECHECK_S  # a certificate not yet valid is looked at again within RECHECK_S
        for der in self._certificates:
            try:
                identity = anchor.validate_signing_cert(der)
            except CertificateRejected:
                verdicts.append(False)
                continue
            verdicts.append(True)
            recheck_at = min(recheck_at, identity.not_after.timestamp())
        self._revoked, self._recheck_at = revoked, recheck_at
        return tuple(verdicts)


def _certificates(signed: coordinator_pb2.SignedDirectory) -> tuple[bytes, ...]:
    """Every signing certificate a verification of `signed` relies on: the coordinator's, each member's
    (at each of its endpoints), each publisher's."""
    try:
        body = coordinator_pb2.DirectoryBody.FromString(signed.body)
    except DecodeError:  # verify_directory refused it already
        return (signed.signature.certificate,)
    return (signed.signature.certificate, *(a.signature.certificate for a in (*body.members, *body.replicas)),
            *(s.signature.certificate for s in body.standards))
