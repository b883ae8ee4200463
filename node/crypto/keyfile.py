"""Private key files: the one loader and writer, plain or passphrase-encrypted PKCS#8 (scrypt, AES-256-CBC)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InternalError, UnsupportedAlgorithm
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
# Bounds on the key-derivation cost a key file may ask for (it is read before anything is checked):
# scrypt memory 128·r·N at most 256 MiB (16× the default), work N·r·p at most 2^22 (32× the default);
# PBKDF2 (`openssl pkcs8 -topk8 -v2 aes256`) at most 2^22 iterations.
_MAX_SCRYPT_MEMORY: Final[int] = 256 * 1024 * 1024
_MAX_SCRYPT_WORK: Final[int] = 1 << 22
_MAX_PBKDF2_ITERATIONS: Final[int] = 1 << 22

_ENCRYPTED_PEM: Final[bytes] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
# DER object identifiers (content octets) of PBES2 (RFC 8018), scrypt (RFC 7914) and AES-256-CBC.
_OID_PBES2: Final[bytes] = bytes.fromhex("2a864886f70d01050d")
_OID_SCRYPT: Final[bytes] = bytes.fromhex("2b06010401da47040b")
_OID_AES256_CBC: Final[bytes] = bytes.fromhex("60864801650304012a")
_OID_PBKDF2: Final[bytes] = bytes.fromhex("2a864886f70d01050c")


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
    if encrypted:
        problem = _kdf_problem(data)
        if problem is not None:
            raise PkiError(f"{path} is not an encrypted key this node reads: {problem}")
    secret = passphrase.read() if encrypted else None
    try:
        return serialization.load_pem_private_key(data, password=secret)
    except ValueError:
        if encrypted:
            raise PkiError(f"wrong passphrase for {path} (from {passphrase.where})") from None
        raise PkiError(f"{path} is not a PEM private key") from None
    except (TypeError, UnsupportedAlgorithm, InternalError):  # InternalError: OpenSSL refused a parameter
        raise PkiError(f"{path} is not a PEM private key") from None


def _kdf_problem(data: bytes) -> str | None:
    """Why the key-derivation parameters of an encrypted PKCS#8 PEM are refused (None: within bounds, or not
    PBES2 with scrypt or PBKDF2, which the PEM loader then judges). Checked before any derivation runs:
    a file asking for gigabytes of scrypt memory or minutes of work would stall or kill the node at start."""
    import base64
    import binascii

    lines = data.strip().splitlines()
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
        info = _der(der, 0x30)
        algorithm, _ = _next(info, 0x30)
        oid, params = _next(algorithm, 0x06)
        if oid != _OID_PBES2:
            return None
        kdf, _ = _next(_der(params, 0x30), 0x30)
        kdf_oid, kdf_params = _next(kdf, 0x06)
        fields = _der(kdf_params, 0x30)
        _, fields = _next(fields, 0x04)  # the salt
        if kdf_oid == _OID_PBKDF2:
            iterations, _ = _next(fields, 0x02)
            return "PBKDF2 iteration count out of bounds" if not 1 <= _uint(iterations) <= _MAX_PBKDF2_ITERATIONS \
                else None
        if kdf_oid != _OID_SCRYPT:
            return None
        n, fields = _next(fields, 0x02)
        r, fields = _next(fields, 0x02)
        p, _ = _next(fields, 0x02)
        n_, r_, p_ = _uint(n), _uint(r), _uint(p)
    except (ValueError, IndexError, binascii.Error):
        return "malformed PKCS#8 encryption parameters"
    if n_ < 2 or n_ & (n_ - 1) or r_ < 1 or p_ < 1:
        return "scrypt parameters are not valid (N a power of two above 1, r and p at least 1)"
    if 128 * r_ * n_ > _MAX_SCRYPT_MEMORY or n_ * r_ * p_ > _MAX_SCRYPT_WORK:
        return "scrypt parameters ask for more memory or work than a key file may"
    return None


def _der(data: bytes, tag: int) -> bytes:
    """The content of `data`, one whole DER element of `tag` (ValueError otherwise)."""
    content, rest = _next(data, tag)
    if rest:
        raise ValueError("trailing bytes")
    return content


def _next(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """(content of the first DER element of `data`, which must be of `tag`; the bytes after it)."""
    if len(data) < 2 or data[0] != tag:
        raise ValueError("unexpected DER element")
    n, at = data[1], 2
    if n & 0x80:
        size = n & 0x7F
        if not 1 <= size <= 4 or len(data) < 2 + size:
            raise ValueError("bad DER length")
        n, at = int.from_bytes(data[2:2 + size], "big"), 2 + size
    if len(data) < at + n:
        raise ValueError("DER element runs past its end")
    return data[at:at + n], data[at + n:]


def _uint(content: bytes) -> int:
    """A DER INTEGER's content as a non-negative int (ValueError when negative or empty)."""
    if not content or content[0] & 0x80 or len(content) > 9:
        raise ValueError("not a small non-negative integer")
    return int.from_bytes(content, "big")


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
