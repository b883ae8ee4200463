"""Checking signatures of kept evidence at the time it was made, against the CA and dated revocations.

A saved answer or decision record must verify years later, after its signers' certificates expired
or were rotated, and must fail when a certificate was revoked before the evidence was made. So a
signature is checked at the evidence's signed time: the certificate chains to the verifier's own
federation CA and was valid then, and no CRL the verifier has (its own or one the file carries;
every CRL is CA-signed, so either is authentic, and the newer one knows more) revokes it at or
before that time. A revocation's time is the earlier of its revocationDate and invalidityDate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509

from node.crypto import revocation, signing
from node.crypto.errors import CertificateRejected
from node.crypto.pki import TrustAnchor
from node.wire.v1 import common_pb2


_REMEMBERED: Final[int] = 64  # CRLs whose merged Evidence is kept


def at_ms(ms: int) -> dt.datetime:
    """The UTC instant of a signed millisecond timestamp."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _shown(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def revoked_at(entry: x509.RevokedCertificate) -> dt.datetime:
    """When a CRL entry takes effect: its revocation date, or the earlier invalidity date (key compromise)."""
    invalid = revocation.invalidity_date(entry)
    return entry.revocation_date_utc if invalid is None else min(entry.revocation_date_utc, invalid)


class TimedVerifier(signing.Verifier):
    """A Verifier that checks certificates at one past instant and honours revocations only from their date."""

    def __init__(self, anchor: TrustAnchor, revocations: Mapping[int, dt.datetime], at: dt.datetime) -> None:
        super().__init__(anchor)
        self.at = at
        self._revocations = revocations

    def verify(self, signature: common_pb2.Signature, domain: str, body: bytes, *,
               at: dt.datetime | None = None) -> signing.Verified:
        when = at or self.at
        verified = super().verify(signature, domain, body, at=when)
        revoked = self._revocations.get(verified.identity.serial)
        if revoked is not None and revoked <= when:
            raise CertificateRejected(f"certificate revoked {_shown(revoked)}, before the signed time {_shown(when)}")
        return verified


@dataclass(frozen=True)
class Evidence:
    """What a verifier of kept evidence trusts: its own CA, and the dated revocations of every CRL it has.

    `crl_number` is the newest CRL's number (-1 with none). The anchor carries no revoked serials:
    revocation is judged by date here, not by presence.
    """

    anchor: TrustAnchor
    revocations: Mapping[int, dt.datetime]
    crl_number: int = -1
    _derived: dict[bytes, Evidence] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, ca_cert: x509.Certificate, crls: Iterable[bytes] = ()) -> Evidence:
        """Evidence trust in `ca_cert` with the given CRLs (PEM or DER; each must be signed by that CA)."""
        return cls(TrustAnchor(ca_cert), {}).including(*crls)

    def including(self, *crls: bytes) -> Evidence:
        """The same trust with more CRLs' entries (CRLs are cumulative; the earliest date of a serial counts).

        Raises CertificateRejected for a CRL that does not parse or is not signed by the CA. The
        result for one CRL is remembered (the lines of a results file carry the same one).
        """
        if len(crls) == 1 and crls[0] in self._derived:
            return self._derived[crls[0]]
        entries = dict(self.revocations)
        number = self.crl_number
        for data in crls:
            if not data:
                continue
            crl = revocation.verified_crl(data, self.anchor)
            number = max(number, revocation.crl_number(crl))
            for entry in crl:
                when = revoked_at(entry)
                if entry.serial_number not in entries or when < entries[entry.serial_number]:
                    entries[entry.serial_number] = when
        derived = Evidence(self.anchor, entries, number)
        if len(crls) == 1 and len(self._derived) < _REMEMBERED:
            self._derived[crls[0]] = derived
        return derived

    def verifier(self, at: dt.datetime) -> TimedVerifier:
        """A verifier of signatures as of `at` (the evidence's signed time)."""
        return TimedVerifier(self.anchor, self.revocations, at)
