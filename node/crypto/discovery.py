"""Epoch discovery tokens: what a subject is called in discovery, new every epoch.

An epoch discovery token (edt) is HMAC-SHA256 keyed with the subject's stored token over a
domain label and the epoch number (8 bytes big-endian). The requester (who was given the ID
number, hence the token) and every holder (for the subjects it stores) compute the same edt;
the coordinator sees only edts. It cannot turn one back into a token, nor link a subject's
edts of two epochs: that would need the token, the HMAC key. Epoch numbers count
`epoch_s`-second periods of Unix time; `epoch_s` is published in the signed directory.
A consent commits to the edts of the epochs it may be used in (`consent_commitments`), so the
coordinator checks that a discovery is for the consented household without seeing a token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

DISCOVERY_LABEL: Final[bytes] = b"hedui/v1/discovery\x00"
COMMITMENT_LABEL: Final[bytes] = b"hedui/v1/consent-discovery\x00"
EDT_BYTES: Final[int] = 32
DEFAULT_EPOCH_S: Final[int] = 7 * 24 * 3600
#: Epochs one consent carries discovery commitments for (from the one it is registered in).
MAX_CONSENT_EPOCHS: Final[int] = 60

#: Wall clock used for epoch numbers (a test may advance it to cross an epoch boundary).
clock: Callable[[], float] = time.time


def discovery_token(token: bytes, epoch: int) -> bytes:
    """The 32-byte epoch discovery token of a stored subject token."""
    return hmac.digest(token, DISCOVERY_LABEL + epoch.to_bytes(8, "big"), "sha256")


def epoch_at(seconds: float, epoch_s: int) -> int:
    """The discovery epoch number of a Unix time."""
    if epoch_s < 1:
        raise ValueError("the discovery epoch length must be at least one second")
    return int(seconds // epoch_s)


def current_epoch(epoch_s: int) -> int:
    """The discovery epoch now (by `clock`)."""
    return epoch_at(clock(), epoch_s)


def commitment(salt: bytes, edt: bytes) -> bytes:
    """A consent's salted commitment to one epoch discovery token."""
    return hashlib.sha256(COMMITMENT_LABEL + salt + edt).digest()


def consent_epochs(not_before_ms: int, not_after_ms: int, epoch_s: int) -> range:
    """The epochs a consent carries discovery commitments for: from now (or its start) to its end,
    at most MAX_CONSENT_EPOCHS."""
    first = epoch_at(max(clock(), not_before_ms / 1000), epoch_s)
    last = min(epoch_at(not_after_ms / 1000, epoch_s), first + MAX_CONSENT_EPOCHS - 1)
    return range(first, last + 1)


def consent_commitments(salt: bytes, tokens: Sequence[bytes], epochs: Iterable[int]) -> list[bytes]:
    """Commitments to the discovery tokens of `tokens` in every one of `epochs` (epoch-major)."""
    return [commitment(salt, discovery_token(t, e)) for e in epochs for t in tokens]
