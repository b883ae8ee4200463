"""Certificate revocation: an X.509 CRL signed by the federation CA, applied to a TrustAnchor.

gRPC Python checks no revocation itself, so every call checks its peer's certificates against
the anchor's revoked serials (node.server.edge), also on connections opened before the revocation.

CRL numbers never go backwards: each member keeps the newest CRL it accepted in
`crl-state.json` (outside `crl.pem`, fsynced) and refuses an older one, whether it arrives from
the coordinator or is put back in place of `crl.pem`; the newest stays applied.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node import files
from node.crypto.errors import CertificateRejected, PkiError
from node.crypto.keyfile import NO_SECRET, SecretSource
from node.crypto.pki import TrustAnchor, load_cert, load_private_key, member_paths

CRL_FILE: Final[str] = "crl.pem"
CRL_STATE_FILE: Final[str] = "crl-state.json"
_STATE_FORMAT: Final[str] = "hedui-crl-state/1"


class CrlRollback(CertificateRejected):
    """A genuine CRL older than (or contradicting) the newest this member accepted."""
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
    except (ValueError, x509.InvalidVersion):
        raise PkiError(f"{path} is not a CRL") from None


def revoke(pki_dir: Path, *, member: str | None = None, serials: Iterable[int] = (),
           newer_than: bytes | None = None, compromised_since: dt.datetime | None = None,
           now: dt.datetime | None = None, ca_passphrase: SecretSource = NO_SECRET) -> RevocationReport:
    """Add a member's current certificates (or given serials) to the federation CRL; re-sign it.

    `newer_than` (a CA-signed CRL, e.g. the newest one the coordinator accepted) is merged in and
    numbered past, so a PKI directory restored with an older crl.pem still issues a CRL that
    members accept and that un-revokes nothing. `compromised_since` records an invalidityDate on
    the new entries: evidence signed from then on fails (node.crypto.evidence), though the
    revocation is only made now. `now` (default the clock) is the time of the revocation.
    """
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
    ca_key = load_private_key(pki_dir / "ca.key", ca_passphrase)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an ECDSA key")
    path = pki_dir / CRL_FILE
    earlier = [crl for crl in (read_crl(path),) if crl is not None]
    if newer_than:
        earlier.append(_verified(newer_than, TrustAnchor(ca_cert)))
    now = now or dt.datetime.now(dt.UTC)
    if compromised_since is not None and (compromised_since.tzinfo is None or compromised_since > now):
        raise PkiError("the compromise time must be a past, timezone-aware instant")
    entries = {r.serial_number: (r.revocation_date_utc, invalidity_date(r)) for crl in earlier for r in crl}
    # CRL times have whole seconds: the next one, so that no signature made before now reads as made after.
    revoked_at = now.replace(microsecond=0) + dt.timedelta(seconds=1)
    for serial in wanted:
        entries.setdefault(serial, (revoked_at, compromised_since))
    number = max((crl_number(crl) for crl in earlier), default=0) + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + NEXT_UPDATE)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, (when, invalid) in sorted(entries.items()):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if invalid is not None:
            entry = entry.add_extension(x509.InvalidityDate(invalid.astimezone(dt.UTC).replace(tzinfo=None)),
                                        critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    files.write_file(path, crl.public_bytes(serialization.Encoding.PEM), replace=True, mode=files.PUBLIC)
    return RevocationReport(path, tuple(sorted(entries)), number)


def invalidity_date(entry: x509.RevokedCertificate) -> dt.datetime | None:
    """An entry's invalidityDate (when the key is known or suspected to be compromised), if it has one."""
    try:
        return entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc
    except x509.ExtensionNotFound:
        return None


def accepted_crl(data_dir: Path) -> bytes | None:
    """The newest CRL the member with this data dir accepted (crl-state.json, else crl.pem), unverified."""
    state = _read_state(data_dir / CRL_STATE_FILE, data_dir / CRL_FILE)
    return state if state is not None else der_and_digest(data_dir / CRL_FILE)[0] or None


def _read_state(state_path: Path, crl_path: Path) -> bytes | None:
    """The DER of the CRL recorded in a crl-state.json; None when there is none."""
    try:
        data = json.loads(state_path.read_bytes())
        if data["format"] != _STATE_FORMAT:
            raise ValueError
        return base64.b64decode(data["crl"], validate=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise PkiError(f"{state_path} is damaged: put the federation's current CRL in {crl_path} "
                       "and remove it") from None


#: What cryptography raises for a hostile CRL, at load or when a part is first read (InvalidVersion is no ValueError).
_PARSE_ERRORS: Final = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


def _load(data: bytes) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except _PARSE_ERRORS:
        raise CertificateRejected("revocation list does not parse") from None


def _verified(data: bytes, anchor: TrustAnchor) -> x509.CertificateRevocationList:
    crl = _load(data)
    try:  # the issuer name and the signature are parsed only now: a malformed one is refused, not raised (found by fuzzing)
        signed = crl.issuer == anchor.ca_cert.subject and crl.is_signature_valid(anchor.ca_cert.public_key())  # type: ignore[arg-type]
    except _PARSE_ERRORS:
        raise CertificateRejected("revocation list does not parse") from None
    if not signed:
        raise CertificateRejected("revocation list not signed by the federation CA")
    return crl


def verified_crl(data: bytes, anchor: TrustAnchor) -> x509.CertificateRevocationList:
    """A CRL (PEM or DER) after checking that the anchor's CA signed it; CertificateRejected otherwise."""
    return _verified(data, anchor)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's CRLNumber (0 when it has none)."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def crl_serials(data: bytes, anchor: TrustAnchor) -> frozenset[int]:
    """The revoked serials of a CRL (PEM or DER) after checking the CA's signature on it."""
    return frozenset(r.serial_number for r in _verified(data, anchor))


def apply(anchor: TrustAnchor, data: bytes) -> int:
    """Add the revoked serials of a verified CRL to the anchor's; return their number."""
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
    """A member's CRL: the file (re-read when it changes) and the newest CRL it accepted, kept applied to an anchor.

    `state_path` (DATA_DIR/crl-state.json) remembers the newest accepted CRL durably; without it
    (tests, tools) only this process remembers. `der`/`digest` are always the newest accepted.
    """

    def __init__(self, path: Path, anchor: TrustAnchor, state_path: Path | None = None) -> None:
        self.path = path
        self.anchor = anchor
        self.state_path = state_path
        self._stamp: int | None = None
        self.number = -1  # nothing accepted yet
        self.der = b""
        self.digest = b""

    def load(self) -> str | None:
        """Apply the remembered newest CRL, then the file; the reason when the file was refused as older."""
        state = self._read_state()
        if state is not None:
            self._take(state, _verified(state, self.anchor), persist=False)
        try:
            self.refresh()
        except CrlRollback as exc:
            return str(exc)
        return None

    def refresh(self) -> bool:
        """Re-read and accept the file if it changed; True when something new was applied.

        Raises CrlRollback (once per change of the file) when it is older than the newest accepted.
        """
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        der, digest = der_and_digest(self.path)
        if digest == self.digest:
            return False
        self.accept(der)
        return True

    def accept(self, data: bytes) -> int:
        """Apply a verified CRL that is at least as new as the newest accepted; return its serial count."""
        crl = _verified(data, self.anchor)
        der = crl.public_bytes(serialization.Encoding.DER)
        number = crl_number(crl)
        if number < self.number:
            raise CrlRollback(f"revocation list #{number} is older than #{self.number}, already accepted: kept #{self.number}")
        if number == self.number and hashlib.sha256(der).digest() != self.digest:
            raise CrlRollback(f"another revocation list with number #{number} than the one accepted: kept it")
        return self._take(der, crl, persist=True)

    def _take(self, der: bytes, crl: x509.CertificateRevocationList, *, persist: bool) -> int:
        serials = frozenset(r.serial_number for r in crl)
        self.anchor.revoked_serials = self.anchor.revoked_serials | serials
        number = crl_number(crl)
        if number > self.number:
            if persist and self.state_path is not None:
                self._write_state(der, number)
            self.number, self.der, self.digest = number, der, hashlib.sha256(der).digest()
        return len(serials)

    def _read_state(self) -> bytes | None:
        return None if self.state_path is None else _read_state(self.state_path, self.path)

    def _write_state(self, der: bytes, number: int) -> None:
        """Record the newest CRL (under a lock on the data dir: node and CLI may both write it)."""
        assert self.state_path is not None
        directory = self.state_path.parent
        text = json.dumps({"format": _STATE_FORMAT, "crl_number": number, "sha256": hashlib.sha256(der).hexdigest(),
                           "crl": base64.b64encode(der).decode()}).encode()
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                held = self._read_state()
                if held is not None and crl_number(_load(held)) >= number:
                    return
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_path)
                os.fsync(lock)
            finally:
                os.close(lock)
        except OSError as exc:
            raise PkiError(f"cannot record the accepted CRL in {self.state_path}: {exc.strerror}") from None
