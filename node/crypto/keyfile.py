"""Private key files: the one loader and writer, plain or passphrase-encrypted PKCS#8 (scrypt, AES-256-CBC)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from node import files
from node.crypto.errors import PkiError

CREDENTIALS_ENV: Final[str] = "CREDENTIALS_DIRECTORY"
"""Where systemd puts a service's credentials (LoadCredential=, LoadCredentialEncrypted=)."""

MIN_PASSPHRASE: Final[int] = 16
"""Shortest passphrase accepted for writing keys (bytes); a random one of 32+ characters is meant."""

SCRYPT_N: Final[int] = 2**14  # openssl pkcs8 -scrypt defaults (16 MiB, ~0.05 s): `openssl pkey` reads these files
SCRYPT_R: Final[int] = 8
SCRYPT_P: Final[int] = 1
_MAX_SECRET: Final[int] = 4096

_ENCRYPTED_PEM: Final[bytes] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
# DER object identifiers (content octets) of PBES2 (RFC 8018), scrypt (RFC 7914) and AES-256-CBC.
_OID_PBES2: Final[bytes] = bytes.fromhex("2a864886f70d01050d")
_OID_SCRYPT: Final[bytes] = bytes.fromhex("2b06010401da47040b")
_OID_AES256_CBC: Final[bytes] = bytes.fromhex("60864801650304012a")


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a passphrase or PIN is read from: a file, or a systemd credential by name (neither: none)."""

    file: Path | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if self.file is not None and self.credential is not None:
            raise PkiError("name a passphrase file or a systemd credential, not both")
        name = self.credential
        if name is not None and (not name or "/" in name or name in (".", "..") or len(name) > 255):
            raise PkiError("a systemd credential name must be a plain file name")

    def __bool__(self) -> bool:
        return self.file is not None or self.credential is not None

    @property
    def where(self) -> str:
        """A short public description (a path or a credential name; never the secret)."""
        if self.credential is not None:
            return f"systemd credential {self.credential!r}"
        return f"file {self.file}" if self.file is not None else "no passphrase"

    def read(self) -> bytes:
        """The secret: the file's bytes without a trailing newline. Raises PkiError (one line)."""
        if self.credential is not None:
            folder = os.environ.get(CREDENTIALS_ENV)
            if not folder:
                raise PkiError(f"{self.where} is not available: ${CREDENTIALS_ENV} is not set "
                               "(run under systemd with LoadCredential=)")
            path = Path(folder) / self.credential
        elif self.file is not None:
            path = self.file
        else:
            raise PkiError("no passphrase configured")
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_SECRET + 1)
        except OSError as exc:
            raise PkiError(f"cannot read {self.where}: {exc.strerror or type(exc).__name__}") from None
        secret = data.rstrip(b"\r\n")
        if not secret or len(data) > _MAX_SECRET:
            raise PkiError(f"{self.where} is empty or too long")
        return secret


NO_SECRET: Final[SecretSource] = SecretSource()


def is_encrypted(path: Path) -> bool:
    """True when the key file at `path` is an encrypted PKCS#8 PEM."""
    try:
        return Path(path).read_bytes().lstrip().startswith(_ENCRYPTED_PEM)
    except OSError:
        return False


def load_private_key(path: Path, passphrase: SecretSource = NO_SECRET) -> PrivateKeyTypes:
    """Read a PEM private key, decrypting it in memory when it is encrypted. Raises PkiError (one line).

    A plain key is accepted even when a passphrase is configured (so `hedui pki encrypt-keys` can
    follow the config change); an encrypted one needs the passphrase.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"missing private key {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read private key {path}: {exc.strerror or type(exc).__name__}") from None
    encrypted = data.lstrip().startswith(_ENCRYPTED_PEM)
    if encrypted and not passphrase:
        raise PkiError(f"{path} is encrypted: give its passphrase ([keys] passphrase_file or passphrase_credential "
                       "in the config; --passphrase-file, or --ca-passphrase-file for ca.key)")
    secret = passphrase.read() if encrypted else None
    try:
        return serialization.load_pem_private_key(data, password=secret)
    except ValueError:
        if encrypted:
            raise PkiError(f"wrong passphrase for {path} (from {passphrase.where})") from None
        raise PkiError(f"{path} is not a PEM private key") from None
    except (TypeError, UnsupportedAlgorithm):
        raise PkiError(f"{path} is not a PEM private key") from None


_PEM_CACHE: dict[tuple[Path, int, int], bytes] = {}
_PEM_LOCK = threading.Lock()


def plain_pem(path: Path, passphrase: SecretSource = NO_SECRET) -> bytes:
    """The key as unencrypted PKCS#8 PEM bytes in memory (what gRPC needs); never written anywhere.

    A plain file is returned as it is; an encrypted one is decrypted once per file version.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PkiError(f"missing private key {path}") from None
    stamp = (path, st.st_mtime_ns, st.st_size)
    with _PEM_LOCK:
        cached = _PEM_CACHE.get(stamp)
    if cached is not None:
        return cached
    if not is_encrypted(path):
        return path.read_bytes()
    pem = pem_of(load_private_key(path, passphrase))
    with _PEM_LOCK:
        for old in [k for k in _PEM_CACHE if k[0] == path]:
            del _PEM_CACHE[old]
        _PEM_CACHE[stamp] = pem
    return pem


def pem_of(key: PrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of `key`: plain, or encrypted under `passphrase` with PBES2 (scrypt, AES-256-CBC)."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if passphrase is None:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    if len(passphrase) < MIN_PASSPHRASE:
        raise PkiError(f"the key passphrase must be at least {MIN_PASSPHRASE} characters (a random one is best)")
    return _pem(b"ENCRYPTED PRIVATE KEY", _encrypt_pkcs8(der, passphrase))


def write_private_key(path: Path, key: PrivateKeyTypes, passphrase: bytes | None = None) -> None:
    """Replace `path` atomically with `key` as PKCS#8 PEM (encrypted when `passphrase` is given), mode 0600."""
    files.write_file(path, pem_of(key, passphrase), replace=True, mode=files.PRIVATE)


def _encrypt_pkcs8(der: bytes, passphrase: bytes) -> bytes:
    """EncryptedPrivateKeyInfo (RFC 5958) with PBES2: scrypt (RFC 7914) and AES-256-CBC."""
    salt, iv = os.urandom(16), os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(der) + padder.finalize()) + encryptor.finalize()
    scrypt_params = _seq(_octets(salt), _int(SCRYPT_N), _int(SCRYPT_R), _int(SCRYPT_P), _int(32))
    pbes2_params = _seq(_seq(_oid(_OID_SCRYPT), scrypt_params), _seq(_oid(_OID_AES256_CBC), _octets(iv)))
    return _seq(_seq(_oid(_OID_PBES2), pbes2_params), _octets(ciphertext))


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _octets(data: bytes) -> bytes:
    return _tlv(0x04, data)


def _oid(content: bytes) -> bytes:
    return _tlv(0x06, content)


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _pem(label: bytes, der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN " + label + b"-----\n" + b"\n".join(lines) + b"\n-----END " + label + b"-----\n"
