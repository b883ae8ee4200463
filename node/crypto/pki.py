"""Federation PKI: root CA, member credentials (TLS, signing, sealing), certificate checks."""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from node import files
from node.crypto import keyfile, tokens
from node.crypto.errors import CertificateRejected, PkiError
from node.domain.regions import (
    COORDINATOR_TLS_NAME,
    COORDINATOR_URI,
    TLS_NAME_SUFFIX,
    is_province,
    province_tls_name,
    province_uri,
)

HEDUI_SIGNING_EKU: Final[ObjectIdentifier] = ObjectIdentifier("1.3.6.1.4.1.59999.1.1")
"""Extended key usage of Hedui message-signing certificates.

PLACEHOLDER ARC: 1.3.6.1.4.1.59999 is not an IANA Private Enterprise Number assigned to Hedui.
Replace it with the operator's own PEN arc before a production federation is created; every
signing certificate must then be re-issued.
"""

COORDINATOR: Final[str] = "coordinator"
"""The member name of the coordinator (provinces are named by their two-digit code)."""

CA_COMMON_NAME: Final[str] = "Hedui Federation Root CA"
CA_VALIDITY: Final[_dt.timedelta] = _dt.timedelta(days=3652)
MEMBER_VALIDITY: Final[_dt.timedelta] = _dt.timedelta(days=730)
CLOCK_SKEW: Final[_dt.timedelta] = _dt.timedelta(hours=1)
"""New certificates start this long before issuance, to tolerate clocks that run behind."""

CACHE_SIZE: Final[int] = 4096

_HEDUI_URI_PREFIX: Final[str] = "urn:hedui:"
_PROVINCE_URI_PREFIX: Final[str] = "urn:hedui:province:"
LOOPBACK_HOSTS: Final[tuple[x509.GeneralName, ...]] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)
_LABEL: Final[str] = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE: Final[re.Pattern[str]] = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_KEY_MODE: Final[int] = 0o600
_PUBLIC_MODE: Final[int] = 0o644
_CERT_NAME_PREFIX: Final[str] = "s"  # per-certificate name: s<serial hex>.<member TLS name>
_DIR_MODE: Final[int] = 0o700
# Errors cryptography raises while parsing or reading a hostile certificate.
_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,  # not a ValueError: raised by the loaders for a version field out of range (found by fuzzing)
)


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class MemberPaths:
    """Where one member's credentials live inside a PKI directory.

    `linkage_key` is the federation-wide secret at the PKI root: deploy it to provinces only,
    never to the coordinator.
    """

    tls_cert: Path
    tls_key: Path
    sign_cert: Path
    sign_key: Path
    seal_key: Path
    seal_pub: Path
    ca_cert: Path
    linkage_key: Path


def member_paths(pki_dir: Path, member: str) -> MemberPaths:
    """The file paths of `member` ("coordinator" or a province code) in `pki_dir`."""
    folder = Path(pki_dir) / "members" / _check_member(member)
    return MemberPaths(
        tls_cert=folder / "tls.pem",
        tls_key=folder / "tls.key",
        sign_cert=folder / "sign.pem",
        sign_key=folder / "sign.key",
        seal_key=folder / "seal.key",
        seal_pub=folder / "seal.pub",
        ca_cert=Path(pki_dir) / "ca.pem",
        linkage_key=Path(pki_dir) / "linkage.key",
    )


def _check_member(member: str) -> str:
    if member == COORDINATOR or is_province(member):
        return member
    # Echo only short values: a mistyped argument could be an ID number, never put in a message.
    shown = f" {member!r}" if isinstance(member, str) and len(member) <= 4 else ""
    raise PkiError(
        f"unknown province code{shown}: expected a two-digit GB/T 2260 code or 'coordinator'"
    )


def _member_identity(member: str) -> str:
    return COORDINATOR_URI if member == COORDINATOR else province_uri(member)


# ---------------------------------------------------------------------------------------------
# Identities


def identity_of(cert: x509.Certificate) -> str | None:
    """The certificate's single `urn:hedui:...` URI SAN, or None when it has none or several."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [
        uri
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.lower().startswith(_HEDUI_URI_PREFIX)
    ]
    return uris[0] if len(uris) == 1 else None


def province_of_identity(uri: str) -> str | None:
    """The province code of a province identity ("urn:hedui:province:32" -> "32"), else None."""
    if not uri.startswith(_PROVINCE_URI_PREFIX):
        return None
    code = uri[len(_PROVINCE_URI_PREFIX) :]
    return code if is_province(code) else None


def _is_member_identity(uri: str) -> bool:
    return uri == COORDINATOR_URI or province_of_identity(uri) is not None


# ---------------------------------------------------------------------------------------------
# Issuing


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _window(
    not_before: _dt.datetime | None, not_after: _dt.datetime | None, validity: _dt.timedelta
) -> tuple[_dt.datetime, _dt.datetime]:
    now = _now()
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else (not_before or now) + validity
    if end <= start:
        raise ValueError("certificate not_after must be later than not_before")
    return start, end


def make_ca(
    common_name: str,
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed P-256 root CA: CA:TRUE pathlen 0, keyCertSign+cRLSign, 10 years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _window(not_before, not_after, CA_VALIDITY)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_tls_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity_uri: str,
    *,
    hosts: Sequence[str] = (),
    loopback: bool = False,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    server_only: bool = False,
    client_only: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and its TLS certificate for `identity_uri`, issued by the CA.

    SAN: the identity URI; for a member identity its federation-internal DNS names (the
    member's, which clients require of its server, and one naming this certificate alone, which
    its announcement pins: `member_tls_names`); `hosts` (IP when it parses as one, DNS name
    otherwise); localhost, 127.0.0.1 and ::1 only with `loopback` (tests and demos).
    EKU serverAuth+clientAuth unless `server_only`/`client_only`.
    `identity_uri` is not checked here (tests forge odd certificates); issue_member is the
    checked entry point.
    """
    if server_only and client_only:
        raise ValueError("a TLS certificate cannot be both server_only and client_only")
    if isinstance(hosts, str):
        raise TypeError("hosts must be a sequence of host names, not a single string")
    usages: list[ObjectIdentifier] = []
    if not client_only:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if not server_only:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    serial = x509.random_serial_number()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri)]
    internal = [x509.DNSName(n) for n in member_tls_names(identity_uri, serial)]
    loopback_names = LOOPBACK_HOSTS if loopback else ()
    for general_name in (*internal, *(_host_name(h) for h in hosts), *loopback_names):
        if general_name not in names:
            names.append(general_name)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(not_before, not_after, MEMBER_VALIDITY)
    cert = (
        _member_builder(ca_cert, identity_uri, key.public_key(), start, end, serial=serial)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_signing_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity_uri: str,
    public_key: ed25519.Ed25519PublicKey,
    *,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> x509.Certificate:
    """A message-signing certificate over an Ed25519 public key, issued by the CA.

    KeyUsage digitalSignature+contentCommitment, EKU HEDUI_SIGNING_EKU only, SAN the identity URI.
    """
    start, end = _window(not_before, not_after, MEMBER_VALIDITY)
    return (
        _member_builder(ca_cert, identity_uri, public_key, start, end)
        .add_extension(_key_usage(digital_signature=True, content_commitment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([HEDUI_SIGNING_EKU]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _member_builder(
    ca_cert: x509.Certificate,
    identity_uri: str,
    public_key: CertificatePublicKeyTypes,
    start: _dt.datetime,
    end: _dt.datetime,
    *,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    issuer_key = ca_cert.public_key()
    if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
        raise PkiError("the federation CA key must be ECDSA")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity_uri)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _host_name(host: str) -> x509.GeneralName:
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    if len(name) > 253 or not _HOSTNAME_RE.fullmatch(name):
        raise PkiError(f"invalid host name {host!r}: expected a DNS name or an IP address")
    if name == TLS_NAME_SUFFIX[1:] or name.endswith(TLS_NAME_SUFFIX):
        raise PkiError(f"host name {host!r} is reserved for federation identities")
    return x509.DNSName(name)


def member_tls_names(identity_uri: str, serial: int) -> tuple[str, ...]:
    """The federation-internal DNS names of a member's TLS certificate with this serial number.

    The member's own name (`province-32.hedui.internal`, `coordinator.hedui.internal`) is what
    every client dials it as (`grpc.ssl_target_name_override`), so gRPC's hostname check refuses
    another member's certificate; a province's certificate also carries a name no other
    certificate has (`s<serial>.province-32.hedui.internal`), which its signed announcement
    names so that callers holding the announcement accept only that certificate. Nothing for an
    identity that is not a member's (tests forge such certificates).
    """
    if identity_uri == COORDINATOR_URI:
        return (COORDINATOR_TLS_NAME,)
    province = province_of_identity(identity_uri)
    if province is None:
        return ()
    own = province_tls_name(province)
    return (own, f"{_CERT_NAME_PREFIX}{serial:x}.{own}")


def certificate_tls_name(cert: x509.Certificate) -> str:
    """The name that only this province TLS certificate carries (see member_tls_names), or "" (none,
    e.g. a certificate issued before such names existed)."""
    identity = identity_of(cert)
    if identity is None or province_of_identity(identity) is None:
        return ""
    expected = member_tls_names(identity, cert.serial_number)[1]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    return expected if expected in san.get_values_for_type(x509.DNSName) else ""


def serial_of_tls_name(name: str) -> int | None:
    """The serial number a per-certificate name (s<serial hex>.province-NN...) carries, else None."""
    tag = name.split(".", 1)[0]
    if not tag.startswith(_CERT_NAME_PREFIX) or not name.endswith(TLS_NAME_SUFFIX):
        return None
    try:
        return int(tag[len(_CERT_NAME_PREFIX):], 16)
    except ValueError:
        return None


def is_certificate_tls_name(name: str, province: str) -> bool:
    """True when `name` has the form of a per-certificate name of `province`'s TLS certificates."""
    own = "." + province_tls_name(province)
    tag = name[: -len(own)] if name.endswith(own) else ""
    return (len(tag) > 1 and len(tag) <= 63 and tag.startswith(_CERT_NAME_PREFIX)
            and all(c in "0123456789abcdef" for c in tag[1:]))


# ---------------------------------------------------------------------------------------------
# PKI directory


def init_pki(pki_dir: Path, *, force: bool = False, passphrase: bytes | None = None) -> None:
    """Create the federation root CA and linkage key in `pki_dir` (`ca.key` encrypted under `passphrase` if given).

    Refuses when the directory already holds a CA key or linkage key, unless `force`, which
    starts a new federation: the CA and linkage key are replaced, so every member must be
    re-issued and every subject token changes. Existing member folders are left untouched.
    """
    pki_dir = Path(pki_dir)
    ca_key_path, linkage_path = pki_dir / "ca.key", pki_dir / "linkage.key"
    if not force and (ca_key_path.exists() or linkage_path.exists()):
        raise PkiError(
            f"{pki_dir} already holds a federation CA; refusing to replace it without --force"
        )
    if pki_dir.exists() and not pki_dir.is_dir():
        raise PkiError(f"{pki_dir} exists and is not a directory")
    cert, key = make_ca(CA_COMMON_NAME)
    ca_key_pem = keyfile.pem_of(key, passphrase)  # a passphrase refused: nothing is created
    pki_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    (pki_dir / "members").mkdir(mode=_DIR_MODE, exist_ok=True)
    _write(ca_key_path, ca_key_pem, _KEY_MODE)
    _write(linkage_path, (tokens.new_linkage_key().hex() + "\n").encode("ascii"), _KEY_MODE)
    _write(pki_dir / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def issue_member(pki_dir: Path, member: str, *, hosts: Sequence[str] = (), loopback: bool = False,
                 passphrase: bytes | None = None,
                 ca_passphrase: keyfile.SecretSource = keyfile.NO_SECRET) -> MemberPaths:
    """Issue (or re-issue, with new keys) the TLS, signing and sealing credentials of `member`.

    The TLS certificate names the member (URI and federation-internal DNS names) and `hosts`;
    localhost and the loopback addresses only with `loopback` (tests and demos). With
    `passphrase` the three private keys are written encrypted (PKCS#8, keyfile.pem_of);
    `ca_passphrase` opens an encrypted `ca.key`.
    """
    pki_dir = Path(pki_dir)
    paths = member_paths(pki_dir, member)
    ca_cert, ca_key = load_ca(pki_dir, ca_passphrase)
    identity = _member_identity(member)
    tls_cert, tls_key = issue_tls_cert(ca_cert, ca_key, identity, hosts=hosts, loopback=loopback)
    sign_key = ed25519.Ed25519PrivateKey.generate()
    sign_cert = issue_signing_cert(ca_cert, ca_key, identity, sign_key.public_key())
    seal_key = x25519.X25519PrivateKey.generate()

    private = [keyfile.pem_of(tls_key, passphrase), keyfile.pem_of(sign_key, passphrase),
               seal_key_bytes(seal_key, passphrase)]  # encrypted before anything is written

    paths.tls_cert.parent.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
    paths.tls_cert.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
    pem = serialization.Encoding.PEM
    _write(paths.tls_key, private[0], _KEY_MODE)
    _write(paths.tls_cert, tls_cert.public_bytes(pem), _PUBLIC_MODE)
    _write(paths.sign_key, private[1], _KEY_MODE)
    _write(paths.sign_cert, sign_cert.public_bytes(pem), _PUBLIC_MODE)
    _write(paths.seal_key, private[2], _KEY_MODE)
    _write(paths.seal_pub, _hex_line(seal_key.public_key().public_bytes_raw()), _PUBLIC_MODE)
    return paths


def load_ca(
    pki_dir: Path, passphrase: keyfile.SecretSource = keyfile.NO_SECRET
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The federation CA certificate and its (decrypted) key, checked to belong together."""
    cert_path, key_path = Path(pki_dir) / "ca.pem", Path(pki_dir) / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise PkiError(f"no federation CA in {pki_dir}: run `hedui pki init --pki {pki_dir}` first")
    cert = load_cert(cert_path)
    key = load_private_key(key_path, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the private key of {cert_path}")
    return cert, key



def seal_key_bytes(key: x25519.X25519PrivateKey, passphrase: bytes | None = None) -> bytes:
    """`seal.key` contents: a hex line, or encrypted PKCS#8 PEM under `passphrase`."""
    return _hex_line(key.private_bytes_raw()) if passphrase is None else keyfile.pem_of(key, passphrase)


def _hex_line(raw: bytes) -> bytes:
    return (raw.hex() + "\n").encode("ascii")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`; the file is created with `mode` (never chmod-ed)."""
    files.write_file(path, data, replace=True, mode=mode)  # issuing again replaces: that is rotation


# ---------------------------------------------------------------------------------------------
# Loading


def load_private_key(path: Path, passphrase: keyfile.SecretSource = keyfile.NO_SECRET) -> PrivateKeyTypes:
    """Read a PEM private key, plain or encrypted (node.crypto.keyfile is the one loader)."""
    return keyfile.load_private_key(path, passphrase)


def load_cert(path: Path) -> x509.Certificate:
    """Read a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise PkiError(f"missing certificate {path}") from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def cert_fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256())


def load_seal_keys(
    seal_key: Path, seal_pub: Path, passphrase: keyfile.SecretSource = keyfile.NO_SECRET
) -> tuple[x25519.X25519PrivateKey, x25519.X25519PublicKey]:
    """A member's X25519 sealing key pair (seal.key hex or PKCS#8 PEM); refuses a seal.pub that does not match."""
    if keyfile.is_encrypted(seal_key) or _is_pem(seal_key):
        loaded = keyfile.load_private_key(seal_key, passphrase)
        if not isinstance(loaded, x25519.X25519PrivateKey):
            raise PkiError(f"{seal_key} is not an X25519 key")
        private = loaded
    else:
        private = x25519.X25519PrivateKey.from_private_bytes(_read_hex(seal_key, 32))
    public = x25519.X25519PublicKey.from_public_bytes(_read_hex(seal_pub, 32))
    if private.public_key() != public:
        raise PkiError(f"{seal_pub} does not match {seal_key}")
    return private, public


def _is_pem(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip().startswith(b"-----BEGIN")
    except OSError:
        return False


def _read_hex(path: Path, length: int) -> bytes:
    try:
        raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise PkiError(f"missing key file {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise PkiError(f"{path} is not hex text") from None
    if len(raw) != length:
        raise PkiError(f"{path} must hold {length} bytes")
    return raw


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    """Who a validated signing certificate speaks for, and the key verifying their signatures."""

    identity: str
    province: str | None
    public_key: ed25519.Ed25519PublicKey
    fingerprint: bytes
    not_after: _dt.datetime
    serial: int = 0


@dataclass(frozen=True, slots=True)
class CheckedCertificate:
    """A certificate that passed the time-independent checks (issuer, usages, identity).

    These depend only on the certificate's bytes and the CA, so they are cached by the bytes'
    digest; what can change — revocation and the validity window against the clock — is
    checked again on every use (`TrustAnchor.recheck`). The window is kept as POSIX seconds
    too, so checking it "now" costs a float comparison, not a datetime.
    """

    serial: int
    not_before: _dt.datetime
    not_after: _dt.datetime
    identity: str
    signing: SigningIdentity | None = None
    not_before_s: float = 0.0
    not_after_s: float = 0.0


def _checked(serial: int, not_before: _dt.datetime, not_after: _dt.datetime, identity: str,
             signing: SigningIdentity | None = None) -> CheckedCertificate:
    return CheckedCertificate(serial, not_before, not_after, identity, signing,
                              not_before.timestamp(), not_after.timestamp())


_K = TypeVar("_K")
_V = TypeVar("_V")


class _BoundedCache(Generic[_K, _V]):
    """A thread-safe LRU mapping holding at most `size` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class TrustAnchor:
    """The federation CA certificate, and the checks of certificates that peers present.

    `revoked_serials` (serial numbers of revoked member certificates) may be replaced at any
    time; it is consulted on every validation, cached or not.
    """

    def __init__(
        self,
        ca_cert: x509.Certificate,
        *,
        revoked_serials: frozenset[int] = frozenset(),
        cache_size: int = CACHE_SIZE,
    ) -> None:
        try:
            constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise PkiError("the trust anchor is not a CA certificate")
        self.ca_cert: Final[x509.Certificate] = ca_cert
        self.revoked_serials: frozenset[int] = revoked_serials
        # Keyed by the certificate's bytes themselves (a hit costs a dict lookup, not a SHA-256).
        self._signing_cache: _BoundedCache[bytes, CheckedCertificate] = _BoundedCache(cache_size)
        self._tls_cache: _BoundedCache[bytes, CheckedCertificate] = _BoundedCache(cache_size)

    @classmethod
    def load(cls, ca_pem_path: Path) -> TrustAnchor:
        """The anchor of the CA certificate stored (PEM) at `ca_pem_path`."""
        return cls(load_cert(ca_pem_path))

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustAnchor:
        """The anchor of a CA certificate given as PEM or DER bytes."""
        try:
            return cls(_parse_cert(data))
        except ValueError:
            raise PkiError("the trust anchor is not a certificate") from None

    def is_revoked(self, serial: int) -> bool:
        """True when a certificate with this serial number has been revoked."""
        return serial in self.revoked_serials

    def validate_signing_cert(
        self, der: bytes, *, at: _dt.datetime | None = None
    ) -> SigningIdentity:
        """Check a DER message-signing certificate at time `at` (default now) and say whose it is.

        Raises CertificateRejected with a short public reason.
        """
        der = bytes(der)
        checked = self._signing_cache.get(der)
        if checked is None:
            checked = self._check_signing(der, hashlib.sha256(der).digest())
            self.recheck(checked, at=at)
            self._signing_cache.put(der, checked)
        else:
            self.recheck(checked, at=at)
        assert checked.signing is not None
        return checked.signing

    def signing_fingerprint(self, der: bytes) -> bytes:
        """SHA-256 of a signing certificate's DER; remembered for a certificate already checked (no hashing)."""
        checked = self._signing_cache.get(bytes(der))
        if checked is not None and checked.signing is not None:
            return checked.signing.fingerprint
        return hashlib.sha256(der).digest()

    def validate_tls_peer_cert(self, pem_or_der: bytes, *, at: _dt.datetime | None = None) -> str:
        """The hedui identity URI of a TLS peer certificate (PEM from gRPC's auth_context, or DER).

        gRPC has verified the chain and validity during the handshake; this also checks the
        issuer (cheap, cached), clientAuth in the EKU, a single federation identity, and — on
        every call, cached or not — revocation and the validity window at `at` (default now:
        a connection may outlive its certificate). Raises CertificateRejected.
        """
        return self.check_tls_peer(pem_or_der, at=at).identity

    def check_tls_peer(self, pem_or_der: bytes, *, at: _dt.datetime | None = None) -> CheckedCertificate:
        """`validate_tls_peer_cert`, returning the checked certificate (for `recheck` later in the same call)."""
        key = hashlib.sha256(pem_or_der).digest()
        checked = self._tls_cache.get(key)
        if checked is None:
            checked = self._check_tls(pem_or_der)
            self._tls_cache.put(key, checked)
        self.recheck(checked, at=at)
        return checked

    def recheck(self, checked: CheckedCertificate, *, at: _dt.datetime | None = None) -> str:
        """Check again what may have changed since `checked` was made: revocation, validity at `at` (default now).

        Raises CertificateRejected; returns the certificate's identity.
        """
        if self.is_revoked(checked.serial):
            raise CertificateRejected("revoked")
        if at is None:
            now = time.time()
            if now < checked.not_before_s:
                raise CertificateRejected("not yet valid")
            if now > checked.not_after_s:
                raise CertificateRejected("expired")
        else:
            self._check_live(checked, _instant(at))
        return checked.identity

    def _check_signing(self, der: bytes, fingerprint: bytes) -> CheckedCertificate:
        try:
            cert = x509.load_der_x509_certificate(der)
        except _PARSE_ERRORS:
            raise CertificateRejected("malformed certificate") from None
        self._check_issuer(cert)
        try:
            public_key = cert.public_key()
            usages = _extended_usages(cert)
            key_usage = _key_usage_of(cert)
            if (
                not isinstance(public_key, ed25519.Ed25519PublicKey)
                or HEDUI_SIGNING_EKU not in usages
                or ExtendedKeyUsageOID.SERVER_AUTH in usages
                or ExtendedKeyUsageOID.CLIENT_AUTH in usages
                or key_usage is None
                or not key_usage.digital_signature
                or _is_ca(cert)
            ):
                raise CertificateRejected("not a signing certificate")
            identity = _federation_identity(cert)
            not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        except _PARSE_ERRORS:
            raise CertificateRejected("malformed certificate") from None
        signing = SigningIdentity(
            identity=identity,
            province=province_of_identity(identity),
            public_key=public_key,
            fingerprint=fingerprint,
            not_after=not_after,
            serial=cert.serial_number,
        )
        return _checked(cert.serial_number, not_before, not_after, identity, signing)

    def _check_tls(self, pem_or_der: bytes) -> CheckedCertificate:
        try:
            cert = _parse_cert(pem_or_der)
        except _PARSE_ERRORS:
            raise CertificateRejected("malformed certificate") from None
        self._check_issuer(cert)
        try:
            if ExtendedKeyUsageOID.CLIENT_AUTH not in _extended_usages(cert):
                raise CertificateRejected("not a TLS client certificate")
            identity = _federation_identity(cert)
            not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        except _PARSE_ERRORS:
            raise CertificateRejected("malformed certificate") from None
        return _checked(cert.serial_number, not_before, not_after, identity)

    def _check_issuer(self, cert: x509.Certificate) -> None:
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (*_PARSE_ERRORS, InvalidSignature):
            raise CertificateRejected("not issued by the federation CA") from None

    def _check_live(self, checked: CheckedCertificate, when: _dt.datetime) -> None:
        if self.is_revoked(checked.serial):
            raise CertificateRejected("revoked")
        if when < checked.not_before:
            raise CertificateRejected("not yet valid")
        if when > checked.not_after:
            raise CertificateRejected("expired")


def _instant(at: _dt.datetime | None) -> _dt.datetime:
    if at is None:
        return _dt.datetime.now(_dt.UTC)
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("validation time must be timezone-aware")
    return at


def _parse_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _extended_usages(cert: x509.Certificate) -> frozenset[ObjectIdentifier]:
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _key_usage_of(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _federation_identity(cert: x509.Certificate) -> str:
    identity = identity_of(cert)
    if identity is None:
        raise CertificateRejected("no federation identity")
    if not _is_member_identity(identity):
        raise CertificateRejected("unknown federation identity")
    return identity
