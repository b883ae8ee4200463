"""Pairwise masks of the household secure sum: each holder hides its partial sums behind masks
it shares with every other holder of the round; the masks cancel only in the total.

For holders i and j of one round, with pair secret s_ij = HKDF(X25519(mask_i, mask_j)), the mask
of measure m is PRF(s_ij, round, household, m), where the round is named by the SHA-256 of
the coordinator-signed holder set (so two holder sets never share masks). Holder i adds the masks of every j > i and
subtracts those of every j < i (province codes compared as strings), all modulo 2^128. Summing
every holder's vector modulo 2^128 gives the exact household totals (values are non-negative
and far below 2^127), while one holder's vector is indistinguishable from random to anyone who
lacks one of its pair secrets. docs/PROTOCOL.md §21 has the byte layout and test vectors.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.crypto.errors import CryptoError

MODULUS: Final[int] = 1 << 128
WIDTH: Final[int] = 16  # bytes of one masked value on the wire (big-endian)
#: A total at or above this is not a sum of honest contributions (they are far smaller).
PLAUSIBLE_TOTAL: Final[int] = 1 << 127
_MASK_KEY_INFO: Final[bytes] = b"hedui/v1/mask-key"
_PAIR_INFO: Final[bytes] = b"hedui/v1/mask-pair"
_MASK_LABEL: Final[bytes] = b"hedui/v1/mask"
_HMAC_BLOCK: Final[int] = 64  # SHA-256's block size (RFC 2104's B)
_IPAD: Final[bytes] = bytes(b ^ 0x36 for b in range(256))  # bytes.translate tables: key XOR ipad / opad
_OPAD: Final[bytes] = bytes(b ^ 0x5C for b in range(256))


class MaskError(CryptoError):
    """A mask key or masked value is unusable (bad peer key, value out of range)."""


def mask_key_from_seal_key(seal_key: X25519PrivateKey) -> X25519PrivateKey:
    """A province's mask key, derived from its sealing key (separate key, no new file to manage)."""
    raw = HKDF(hashes.SHA256(), 32, salt=None, info=_MASK_KEY_INFO).derive(seal_key.private_bytes_raw())
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def pair_secret(own_key: X25519PrivateKey, own: str, peer_public: bytes, peer: str) -> bytes:
    """The 32-byte secret two holders share, bound to both province codes (in sorted order)."""
    try:
        shared = own_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise MaskError(f"province {peer}'s mask key is unusable") from None
    low, high = sorted((own, peer))
    info = _PAIR_INFO + b"\x00" + low.encode() + b"\x00" + high.encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def mask(secret: bytes, round_key: str, household: str, measure: str) -> int:
    """PRF(secret, round, household, measure) as an integer modulo 2^128; `round_key` is the hex
    SHA-256 of the signed holder set's body, `household` the consent id."""
    message = b"\x00".join((_MASK_LABEL, round_key.encode(), household.encode(), measure.encode()))
    return int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:WIDTH], "big")


def masks_of(secret: bytes, round_key: str, household: str, measures: Sequence[str]) -> list[int]:
    """`mask` of every measure of one household, the same values: HMAC-SHA256 (RFC 2104) written out
    over hashlib's SHA-256, its inner hash fed the key pad and the message prefix (label, round,
    household) once, then copied per measure (a third of the cost of one `hmac.new` per measure)."""
    key = hashlib.sha256(secret).digest() if len(secret) > _HMAC_BLOCK else secret
    key = key.ljust(_HMAC_BLOCK, b"\x00")
    inner = hashlib.sha256(key.translate(_IPAD))
    inner.update(b"\x00".join((_MASK_LABEL, round_key.encode(), household.encode(), b"")))
    outer = hashlib.sha256(key.translate(_OPAD))
    out = []
    for measure in measures:
        i = inner.copy()
        i.update(measure.encode())
        o = outer.copy()
        o.update(i.digest())
        out.append(int.from_bytes(o.digest()[:WIDTH], "big"))
    return out


def masked_sums(values: Sequence[int], measures: Sequence[str], *, own: str, secrets: Mapping[str, bytes],
                round_key: str, household: str) -> list[int]:
    """`values` (one per measure) plus this holder's masks towards every peer in `secrets`."""
    if len(values) != len(measures):
        raise ValueError("one value per measure")
    if not all(0 <= v < PLAUSIBLE_TOTAL for v in values):
        raise MaskError("a partial sum is out of range")
    out = list(values)
    for peer, secret in secrets.items():
        sign = 1 if own < peer else -1
        out = [t + sign * m for t, m in zip(out, masks_of(secret, round_key, household, measures), strict=True)]
    return [t % MODULUS for t in out]


def unmask(vectors: Iterable[Sequence[int]], width: int) -> list[int]:
    """The totals of a complete round: the element-wise sum of every holder's vector modulo 2^128."""
    totals = [0] * width
    for vector in vectors:
        if len(vector) != width:
            raise MaskError("a contribution has the wrong number of measures")
        totals = [(t + v) % MODULUS for t, v in zip(totals, vector, strict=True)]
    if any(t >= PLAUSIBLE_TOTAL for t in totals):
        raise MaskError("the contributions do not sum to plausible totals (a holder sent a wrong vector)")
    return totals


def encode(value: int) -> bytes:
    return value.to_bytes(WIDTH, "big")


def decode(raw: bytes) -> int:
    if len(raw) != WIDTH:
        raise MaskError("a masked value is not 16 bytes")
    return int.from_bytes(raw, "big")
