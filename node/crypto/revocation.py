"""Certificate revocation: an X.509 CRL signed by the federation CA, applied to a TrustAnchor.

gRPC Python checks no revocation itself, so every call checks its peer's certificates against
the anchor's revoked serials (node.server.edge), also on connections opened before the revocation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node import files
from node.crypto.errors import CertificateRejected, PkiError
from node.crypto.pki import TrustAnchor, load_cert, load_private_key, member_paths

CRL_FILE: Final[str] = "crl.pem"
NEXT_UPDATE: Final[dt.timedelta] = dt.timedelta(days=7)


@dataclass(frozen=True)
class RevocationReport:
    path: Path
    serials: tuple[int, ...]
    crl_number: int


def read_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL stored at `path`, or None when there is none."""
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise PkiError(f"{path} is not a CRL") from None


def revoke(pki_dir: Path, *, member: str | None = None, serials: Iterable[int] = ()) -> RevocationReport:
    """Add a member's current certificates (or given serials) to the federation CRL; re-sign it."""
    wanted = set(serials)
    if member is not None:
        paths = member_paths(pki_dir, member)
        for cert_path in (paths.tls_cert, paths.sign_cert):
            if not cert_path.exists():
                raise PkiError(f"no certificates issued for {member} in {pki_dir}")
            wanted.add(load_cert(cert_path).serial_number)
    if not wanted:
        raise PkiError("name a member or at least one serial number to revoke")
    ca_cert = load_cert(pki_dir / "ca.pem")
    ca_key = load_private_key(pki_dir / "ca.key")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an ECDSA key")
    path = pki_dir / CRL_FILE
    previous = read_crl(path)
    now = dt.datetime.now(dt.UTC)
    entries = {r.serial_number: r.revocation_date_utc for r in previous} if previous is not None else {}
    for serial in wanted:
        entries.setdefault(serial, now)
    number = 1
    if previous is not None:
        try:
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + NEXT_UPDATE)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in sorted(entries.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    files.write_file(path, crl.public_bytes(serialization.Encoding.PEM), replace=True, mode=files.PUBLIC)
    return RevocationReport(path, tuple(sorted(entries)), number)


def crl_serials(data: bytes, anchor: TrustAnchor) -> frozenset[int]:
    """The revoked serials of a CRL (PEM or DER) after checking the CA's signature on it."""
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except ValueError:
        raise CertificateRejected("revocation list does not parse") from None
    if crl.issuer != anchor.ca_cert.subject or not crl.is_signature_valid(anchor.ca_cert.public_key()):  # type: ignore[arg-type]
        raise CertificateRejected("revocation list not signed by the federation CA")
    return frozenset(r.serial_number for r in crl)


def apply(anchor: TrustAnchor, data: bytes) -> int:
    """Replace the anchor's revoked serials with those of a verified CRL; return their number."""
    serials = crl_serials(data, anchor)
    anchor.revoked_serials = anchor.revoked_serials | serials
    return len(serials)


def der_and_digest(path: Path) -> tuple[bytes, bytes]:
    """DER bytes of the CRL at `path` and their SHA-256 (empty when there is none)."""
    crl = read_crl(path)
    if crl is None:
        return b"", b""
    der = crl.public_bytes(serialization.Encoding.DER)
    return der, hashlib.sha256(der).digest()


class CrlFile:
    """A CRL file kept applied to an anchor: re-read when it changes (the coordinator's copy)."""

    def __init__(self, path: Path, anchor: TrustAnchor) -> None:
        self.path = path
        self.anchor = anchor
        self._stamp: int | None = None
        self.der = b""
        self.digest = b""

    def refresh(self) -> bool:
        """Re-read and apply the file if it changed; True when something new was applied."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if stamp == self._stamp:
            return False
        der, digest = der_and_digest(self.path)
        apply(self.anchor, der)
        self._stamp, self.der, self.digest = stamp, der, digest
        return True
