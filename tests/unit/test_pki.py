"""Federation PKI: directory layout, issued certificates, and trust-anchor validation."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from node.crypto import pki, tokens
from node.crypto.errors import CertificateRejected, PkiError
from node.errors import BadInput

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fed") / "pki"
    pki.init_pki(directory)
    pki.issue_member(directory, "32", hosts=["node32.example", "10.0.0.32", "[2001:db8::32]"])
    pki.issue_member(directory, "coordinator")
    return directory


@pytest.fixture(scope="module")
def ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = pki.load_private_key(pki_dir / "ca.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return pki.load_cert(pki_dir / "ca.pem"), key


@pytest.fixture()
def anchor(pki_dir: Path) -> pki.TrustAnchor:
    return pki.TrustAnchor.load(pki_dir / "ca.pem")


@pytest.fixture(scope="module")
def p32(pki_dir: Path) -> pki.MemberPaths:
    return pki.member_paths(pki_dir, "32")


def test_files_exist_and_private_keys_are_0600(pki_dir: Path, p32: pki.MemberPaths) -> None:
    """Every file of the layout exists, private keys are 0600 and key folders 0700."""
    for path in (p32.tls_cert, p32.sign_cert, p32.seal_pub, p32.ca_cert):
        assert path.is_file()
    for path in (pki_dir / "ca.key", p32.linkage_key, p32.tls_key, p32.sign_key, p32.seal_key):
        assert mode(path) == 0o600, path
    for folder in (pki_dir, pki_dir / "members", p32.tls_cert.parent):
        assert mode(folder) == 0o700, folder
    assert not list(p32.tls_cert.parent.glob(".*.tmp"))


def test_keys_are_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    """Private keys are created 0600 regardless of the process umask."""
    old = os.umask(0)
    try:
        pki.init_pki(tmp_path / "pki")
        paths = pki.issue_member(tmp_path / "pki", "11")
    finally:
        os.umask(old)
    for path in (tmp_path / "pki" / "ca.key", paths.linkage_key, paths.tls_key, paths.seal_key):
        assert mode(path) == 0o600, path


def test_ca_is_a_constrained_p256_root(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    """The root CA is self-signed P-256 with CA:TRUE pathlen 0 and keyCertSign+cRLSign only."""
    cert, _ = ca
    cert.verify_directly_issued_by(cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3660)


def test_linkage_key_is_readable_by_tokens(p32: pki.MemberPaths) -> None:
    """linkage.key holds a 32-byte key that tokens.load_linkage_key reads."""
    assert len(tokens.load_linkage_key(p32.linkage_key)) == tokens.LINKAGE_KEY_LENGTH


def test_tls_cert_has_identity_sans_ekus_and_p256(p32: pki.MemberPaths) -> None:
    """The TLS certificate is P-256 with the identity URI, its federation names and the hosts given (no loopback), both EKUs."""
    cert = pki.load_cert(p32.tls_cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert pki.identity_of(cert) == "urn:hedui:province:32"
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "urn:hedui:province:32"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "province-32.hedui.internal", f"s{cert.serial_number:x}.province-32.hedui.internal", "node32.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.32", "2001:db8::32"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=729) <= lifetime <= dt.timedelta(days=732)


def test_tls_key_matches_cert(p32: pki.MemberPaths) -> None:
    """tls.key is the private key of tls.pem."""
    key = pki.load_private_key(p32.tls_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == pki.load_cert(p32.tls_cert).public_key()


def test_signing_cert_validates_and_yields_province(
    anchor: pki.TrustAnchor, p32: pki.MemberPaths
) -> None:
    """A member's signing certificate validates to its identity, province and Ed25519 key."""
    cert = pki.load_cert(p32.sign_cert)
    signer = anchor.validate_signing_cert(der(cert))
    assert signer.identity == "urn:hedui:province:32"
    assert signer.province == "32"
    assert signer.fingerprint == pki.cert_fingerprint(cert)
    assert signer.not_after == cert.not_valid_after_utc
    key = pki.load_private_key(p32.sign_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    signer.public_key.verify(key.sign(b"message"), b"message")


def test_coordinator_signing_cert_has_no_province(anchor: pki.TrustAnchor, pki_dir: Path) -> None:
    """The coordinator's signing certificate validates with province None."""
    cert = pki.load_cert(pki.member_paths(pki_dir, "coordinator").sign_cert)
    signer = anchor.validate_signing_cert(der(cert))
    assert (signer.identity, signer.province) == ("urn:hedui:coordinator", None)


def test_signing_cert_from_other_ca_rejected(anchor: pki.TrustAnchor) -> None:
    """A signing certificate issued by another CA, even with the same name, is rejected."""
    other_cert, other_key = pki.make_ca(pki.CA_COMMON_NAME)
    forged = pki.issue_signing_cert(
        other_cert,
        other_key,
        "urn:hedui:province:32",
        ed25519.Ed25519PrivateKey.generate().public_key(),
    )
    with pytest.raises(CertificateRejected, match="not issued by the federation CA"):
        anchor.validate_signing_cert(der(forged))


@pytest.mark.parametrize(
    ("not_before", "not_after", "reason"),
    [
        (NOW - 800 * DAY, NOW - DAY, "expired"),
        (NOW + DAY, NOW + 700 * DAY, "not yet valid"),
    ],
)
def test_signing_cert_outside_validity_rejected(
    anchor: pki.TrustAnchor,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    not_before: dt.datetime,
    not_after: dt.datetime,
    reason: str,
) -> None:
    """Expired and not-yet-valid signing certificates are rejected with that reason."""
    cert = pki.issue_signing_cert(
        *ca,
        "urn:hedui:province:32",
        ed25519.Ed25519PrivateKey.generate().public_key(),
        not_before=not_before,
        not_after=not_after,
    )
    with pytest.raises(CertificateRejected, match=reason):
        anchor.validate_signing_cert(der(cert))


def test_cache_hit_still_checks_validity_time(
    anchor: pki.TrustAnchor, p32: pki.MemberPaths
) -> None:
    """A cached signing certificate is still rejected when validated at a time past its expiry."""
    data = der(pki.load_cert(p32.sign_cert))
    anchor.validate_signing_cert(data)
    with pytest.raises(CertificateRejected, match="expired"):
        anchor.validate_signing_cert(data, at=NOW + 3 * 365 * DAY)
    with pytest.raises(CertificateRejected, match="not yet valid"):
        anchor.validate_signing_cert(data, at=NOW - 2 * DAY)
    with pytest.raises(ValueError, match="timezone-aware"):
        anchor.validate_signing_cert(data, at=dt.datetime(2030, 1, 1))


def test_revoked_signing_cert_rejected_even_when_cached(
    anchor: pki.TrustAnchor, p32: pki.MemberPaths
) -> None:
    """A serial in revoked_serials is rejected, including after a cached success."""
    cert = pki.load_cert(p32.sign_cert)
    anchor.validate_signing_cert(der(cert))
    anchor.revoked_serials = frozenset({cert.serial_number})
    with pytest.raises(CertificateRejected, match="revoked"):
        anchor.validate_signing_cert(der(cert))


def test_tls_cert_presented_as_signing_cert_rejected(
    anchor: pki.TrustAnchor, p32: pki.MemberPaths
) -> None:
    """A TLS certificate offered as a signing certificate is rejected."""
    with pytest.raises(CertificateRejected, match="not a signing certificate"):
        anchor.validate_signing_cert(der(pki.load_cert(p32.tls_cert)))


def test_garbage_signing_cert_rejected(anchor: pki.TrustAnchor) -> None:
    """Bytes that are not a DER certificate are rejected as malformed."""
    with pytest.raises(CertificateRejected, match="malformed"):
        anchor.validate_signing_cert(b"\x30\x03\x02\x01\x00")


def test_tls_peer_cert_yields_identity(anchor: pki.TrustAnchor, p32: pki.MemberPaths) -> None:
    """A member TLS certificate, as PEM or DER, yields its hedui identity."""
    pem = p32.tls_cert.read_bytes()
    assert anchor.validate_tls_peer_cert(pem) == "urn:hedui:province:32"
    assert anchor.validate_tls_peer_cert(pem) == "urn:hedui:province:32"
    assert (
        anchor.validate_tls_peer_cert(der(pki.load_cert(p32.tls_cert))) == "urn:hedui:province:32"
    )


def test_server_only_tls_cert_refused_as_peer(
    anchor: pki.TrustAnchor, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    """A TLS certificate without clientAuth is refused as a peer certificate."""
    cert, _ = pki.issue_tls_cert(*ca, "urn:hedui:province:32", server_only=True)
    with pytest.raises(CertificateRejected, match="client"):
        anchor.validate_tls_peer_cert(der(cert))


def test_tls_cert_with_unknown_identity_refused(
    anchor: pki.TrustAnchor, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    """A TLS certificate whose URI is not a federation member identity is refused."""
    for uri, reason in (("urn:hedui:province:99", "unknown"), ("urn:other:x", "no federation")):
        cert, _ = pki.issue_tls_cert(*ca, uri)
        with pytest.raises(CertificateRejected, match=reason):
            anchor.validate_tls_peer_cert(der(cert))


def test_province_of_identity() -> None:
    """province_of_identity extracts a valid province code and nothing else."""
    assert pki.province_of_identity("urn:hedui:province:32") == "32"
    assert pki.province_of_identity("urn:hedui:province:99") is None
    assert pki.province_of_identity("urn:hedui:coordinator") is None


def test_seal_keys_load_as_a_matching_pair(p32: pki.MemberPaths) -> None:
    """seal.key and seal.pub load as a matching X25519 pair."""
    private, public = pki.load_seal_keys(p32.seal_key, p32.seal_pub)
    assert private.public_key() == public


def test_reissue_replaces_keys(pki_dir: Path) -> None:
    """Re-issuing a member writes new keys and certificates, still 0600."""
    first = pki.issue_member(pki_dir, "44")
    before = {
        p: p.read_bytes() for p in (first.tls_key, first.sign_key, first.seal_key, first.tls_cert)
    }
    again = pki.issue_member(pki_dir, "44")
    assert again == first
    for path, old in before.items():
        assert path.read_bytes() != old, path
    assert mode(again.tls_key) == mode(again.sign_key) == mode(again.seal_key) == 0o600


def test_unknown_province_refused(pki_dir: Path) -> None:
    """An unknown province code is refused as bad input, and so is a path-like member name."""
    for member in ("99", "../32"):
        with pytest.raises(PkiError, match="unknown province code") as raised:
            pki.issue_member(pki_dir, member)
        assert isinstance(raised.value, BadInput)
    assert not (pki_dir / "members" / "99").exists()


def test_issue_without_ca_refused(tmp_path: Path) -> None:
    """Issuing into a directory without a CA says to run `hedui pki init`."""
    with pytest.raises(PkiError, match="hedui pki init"):
        pki.issue_member(tmp_path, "32")


def test_bad_host_refused(pki_dir: Path) -> None:
    """A host that is neither a DNS name nor an IP address is refused."""
    with pytest.raises(PkiError, match="invalid host name"):
        pki.issue_member(pki_dir, "45", hosts=["bad host/name"])


def test_init_twice_refused_without_force(tmp_path: Path) -> None:
    """A second init is refused unless forced, and force replaces the CA."""
    pki.init_pki(tmp_path)
    first = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(PkiError, match="already holds a federation CA"):
        pki.init_pki(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == first
    pki.init_pki(tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != first
    assert mode(tmp_path / "ca.key") == 0o600
