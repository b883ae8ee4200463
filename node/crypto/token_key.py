"""An Ed25519 signing key inside a PKCS#11 token (CKM_EDDSA via python-pkcs11): open, sign, generate."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.crypto.errors import PkiError
from node.crypto.keyfile import SecretSource

ED25519_PARAMS: Final[bytes] = bytes.fromhex("06032b6570")
"""CKA_EC_PARAMS of Ed25519: the DER of OID 1.3.101.112 (PKCS#11 3.0 §2.3.10)."""

_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()
_SHARED: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
"""One logged-in session per (module, token) and process: PKCS#11 login state is per application,
so a second C_Login fails; signing keys (and a reload after rotation) share this session."""


@dataclass(frozen=True, slots=True)
class TokenKey:
    """Where a signing key lives in a token: the module, token and key labels, and the user PIN's source."""

    module: Path
    token_label: str
    key_label: str
    pin: SecretSource


def _lib(module: Path) -> Any:
    """The loaded PKCS#11 module (loaded and C_Initialize-d once per process)."""
    try:
        import pkcs11
    except ImportError:  # pragma: no cover - a declared dependency
        raise PkiError("PKCS#11 support needs the python-pkcs11 package") from None
    key = os.path.realpath(module)  # one C_Initialize per module file, however it is named
    with _LIBS_LOCK:
        lib = _LIBS.get(key)
        if lib is None:
            if not Path(module).is_file():
                raise PkiError(f"PKCS#11 module {module} not found")
            try:
                lib = pkcs11.lib(key)
            except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
                raise PkiError(f"cannot load PKCS#11 module {module}: {type(exc).__name__}") from None
            _LIBS[key] = lib
        return lib


def _slot_key(where: TokenKey) -> tuple[str, str]:
    return os.path.realpath(where.module), where.token_label


def open_session(where: TokenKey, *, rw: bool = False) -> Any:
    """A session with the token, logged in as its user (or sharing this process's login). Raises PkiError."""
    import pkcs11
    from pkcs11 import exceptions as e

    lib = _lib(where.module)
    try:
        token = lib.get_token(token_label=where.token_label)
    except e.NoSuchToken:
        raise PkiError(f"no PKCS#11 token labelled {where.token_label!r} in {where.module}") from None
    except e.MultipleTokensReturned:
        raise PkiError(f"several PKCS#11 tokens are labelled {where.token_label!r}") from None
    pin = where.pin.read().decode("utf-8", "replace")
    try:
        if _slot_key(where) in _SHARED:  # already logged in: sessions of one application share the login
            return token.open(rw=rw)
        return token.open(rw=rw, user_pin=pin)
    except e.UserAlreadyLoggedIn:
        return token.open(rw=rw)
    except (e.PinIncorrect, e.PinInvalid, e.PinLenRange):
        raise PkiError(f"wrong PIN for PKCS#11 token {where.token_label!r} (from {where.pin.where})") from None
    except e.PinLocked:
        raise PkiError(f"the user PIN of PKCS#11 token {where.token_label!r} is locked") from None
    except pkcs11.PKCS11Error as exc:
        raise PkiError(f"cannot open PKCS#11 token {where.token_label!r}: {type(exc).__name__}") from None


def _public_key(session: Any, label: str) -> Ed25519PublicKey:
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11 import exceptions as e

    try:
        obj = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC_EDWARDS, label=label)
        point = bytes(obj[Attribute.EC_POINT])
    except e.NoSuchKey:
        raise PkiError(f"no Ed25519 public key labelled {label!r} in the token") from None
    except e.MultipleObjectsReturned:
        raise PkiError(f"several public keys are labelled {label!r} in the token") from None
    if len(point) == 34 and point[:2] == b"\x04\x20":  # DER OCTET STRING, as PKCS#11 3.0 says
        point = point[2:]
    if len(point) != 32:
        raise PkiError(f"the token's public key {label!r} is not an Ed25519 point")
    return Ed25519PublicKey.from_public_bytes(point)


def _shared_session(where: TokenKey, *, fresh: bool = False) -> tuple[Any, threading.Lock]:
    """This process's logged-in session with the token (`fresh`: drop a lost one and log in again)."""
    slot = _slot_key(where)
    with _LIBS_LOCK:
        shared = _SHARED.pop(slot, None) if fresh else _SHARED.get(slot)
    if shared is not None:
        return shared
    session = open_session(where)
    with _LIBS_LOCK:
        return _SHARED.setdefault(slot, (session, threading.Lock()))


class Pkcs11SigningKey:
    """A SigningKey (node.crypto.signing) whose private half never leaves the token."""

    blocking = True  # a sign is a round trip to the token (a network HSM may take long): keep it off the loop

    def __init__(self, where: TokenKey) -> None:
        self.where = where
        self._private: Any = None
        self._public: Ed25519PublicKey | None = None
        self._lock = threading.Lock()
        self._open()

    def _open(self, *, fresh: bool = False) -> None:
        from pkcs11 import KeyType, ObjectClass
        from pkcs11 import exceptions as e

        session, self._lock = _shared_session(self.where, fresh=fresh)
        with self._lock:
            try:
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC_EDWARDS,
                                          label=self.where.key_label)
                public = _public_key(session, self.where.key_label)
            except e.NoSuchKey:
                raise PkiError(f"no Ed25519 private key labelled {self.where.key_label!r} "
                               f"in PKCS#11 token {self.where.token_label!r}") from None
            except e.MultipleObjectsReturned:
                raise PkiError(f"several private keys are labelled {self.where.key_label!r} in the token") from None
        self._private, self._public = private, public

    def public_key(self) -> Ed25519PublicKey:
        assert self._public is not None
        return self._public

    def sign(self, data: bytes) -> bytes:
        """A pure Ed25519 signature over `data`, made in the token (CKM_EDDSA); one reopen on a lost session."""
        import pkcs11
        from pkcs11 import Mechanism

        try:
            with self._lock:  # a PKCS#11 session serves one call at a time
                return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))
        except (pkcs11.exceptions.SessionClosed, pkcs11.exceptions.SessionHandleInvalid,
                pkcs11.exceptions.DeviceRemoved, pkcs11.exceptions.TokenNotPresent,
                pkcs11.exceptions.UserNotLoggedIn):
            self._open(fresh=True)
            with self._lock:
                return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))


def generate(where: TokenKey) -> Ed25519PublicKey:
    """Generate an Ed25519 key pair inside the token (private half sensitive, never extractable).

    Refuses when the token already holds a key with that label.
    """
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    with open_session(where, rw=True) as session:
        existing = list(session.get_objects({Attribute.LABEL: where.key_label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        if existing:
            raise PkiError(f"PKCS#11 token {where.token_label!r} already holds a key labelled {where.key_label!r}: "
                           "choose another --key-label")
        label = where.key_label
        try:
            session.generate_keypair(
                KeyType.EC_EDWARDS, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, store=True, label=label,
                public_template={Attribute.EC_PARAMS: ED25519_PARAMS, Attribute.VERIFY: True, Attribute.TOKEN: True},
                private_template={Attribute.SIGN: True, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                                  Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
        except pkcs11.PKCS11Error as exc:
            raise PkiError(f"the PKCS#11 token could not generate an Ed25519 key: {type(exc).__name__}") from None
        return _public_key(session, label)
