"""Locator filters: a province's epoch discovery tokens as sharded Bloom filters (rbloom).

A shard is an rbloom Bloom filter sized for its key count at a false-positive rate of 2^-16
(16 hash functions, about 23 bits per subject); shards split the tokens by their first bits so
one shard stays near `SHARD_TARGET` keys (about 1.5 MB) whatever the province's size. The
filter's hash of a token is its last 128 bits (tokens are HMAC outputs, uniform already).

A shard is a claim and is checked before it is loaded: its length and header (hash count) must
be exactly those of a filter of its claimed key count, and its fill (share of set bits) at most
what that many keys can set, plus a margin of six standard deviations. A filter at fill f
matches an unknown token with probability f^16, so a province cannot claim to hold everyone
(an all-ones filter is refused) except by putting everyone's tokens in it, which the
coordinator's bound on a province's subject count refuses. That f^16 of a loaded shard
(`Shard.false_positive_rate`) is what the coordinator's claim checks expect of honest false
positives (node.coordinator.claims).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import rbloom

FILTER_KIND: Final[str] = "bloom-rbloom-v1"
FALSE_POSITIVE_RATE: Final[float] = 2.0 ** -16
SHARD_TARGET: Final[int] = 1 << 19
MAX_SHARD_BITS: Final[int] = 12
_HEADER_BYTES: Final[int] = 8  # rbloom's serialized hash count (u64), then the bit array


class FilterRejected(ValueError):
    """Filter bytes that are not a plausible shard of the claimed size."""


def _hash(tail: bytes) -> int:
    return int.from_bytes(tail, "big", signed=True)  # edt[16:32]: bits the shard choice does not use


def shard_bits_for(count: int) -> int:
    """How many leading bits of a token pick its shard, for `count` subjects."""
    bits = 0
    while (count >> bits) > SHARD_TARGET and bits < MAX_SHARD_BITS:
        bits += 1
    return bits


def shard_of(edt: bytes, bits: int) -> int:
    """The shard an epoch discovery token falls in."""
    return int.from_bytes(edt[:2], "big") >> (16 - bits) if bits else 0


def _empty(count: int) -> rbloom.Bloom:
    return rbloom.Bloom(max(count, 1), FALSE_POSITIVE_RATE, _hash)


def build(edts: Iterable[bytes], count: int) -> tuple[int, list[tuple[int, bytes]]]:
    """(shard_bits, [(key count, serialized shard)] in shard order) over `count` discovery tokens.

    One pass over `edts` (a stream); per shard only the 16 bytes the filter hashes are kept
    (1.6 GB for 10^8 subjects), then each shard's filter is built and serialized in turn."""
    bits = shard_bits_for(count)
    tails = [bytearray() for _ in range(1 << bits)]
    for edt in edts:
        tails[shard_of(edt, bits)] += edt[16:32]
    shards = []
    for i, raw in enumerate(tails):
        n = len(raw) // 16
        bloom = _empty(n)
        bloom.update(bytes(raw[j:j + 16]) for j in range(0, len(raw), 16))
        tails[i] = bytearray()  # free the shard's keys before the next one is built
        shards.append((n, bloom.save_bytes()))
    return bits, shards


def max_fill(count: int, size_bits: int, hashes: int) -> float:
    """The most bits `count` keys can plausibly set: the expected fill plus six standard deviations,
    and never more than `hashes` bits per key."""
    expected = 1.0 - math.exp(-hashes * count / size_bits)
    spread = 6.0 * math.sqrt(max(expected * (1.0 - expected), 1e-12) / size_bits) + 2.0 / size_bits
    return min(1.0, expected + spread, hashes * count / size_bits)


class Shard:
    """A loaded, checked shard: membership of discovery tokens."""

    __slots__ = ("_bloom", "count", "false_positive_rate", "fill", "nbytes")

    def __init__(self, data: bytes, count: int) -> None:
        # Before building the reference filter (its size follows the claim, not the bytes sent):
        # a claim far larger than the bytes is refused without allocating for it.
        if 8 * len(data) < 0.9 * count * -math.log(FALSE_POSITIVE_RATE) / math.log(2) ** 2:
            raise FilterRejected(f"filter is not a {FILTER_KIND} filter of {count} subjects")
        try:
            reference = _empty(count).save_bytes()
        except (ValueError, OverflowError, MemoryError):
            raise FilterRejected("filter claims more subjects than can be held") from None
        if len(data) != len(reference) or data[:_HEADER_BYTES] != reference[:_HEADER_BYTES]:
            raise FilterRejected(f"filter is not a {FILTER_KIND} filter of {count} subjects")
        size_bits = 8 * (len(data) - _HEADER_BYTES)
        hashes = int.from_bytes(data[:_HEADER_BYTES], "little")
        self.fill = int.from_bytes(data[_HEADER_BYTES:], "little").bit_count() / size_bits
        if self.fill > max_fill(count, size_bits, hashes):
            raise FilterRejected(f"filter sets {self.fill:.1%} of its bits: more than {count} subjects can")
        self._bloom = rbloom.Bloom.load_bytes(data, _hash)
        self.count = count
        self.nbytes = len(data)
        # An unknown token sets each of its `hashes` bit positions uniformly: it matches when all are set.
        self.false_positive_rate = self.fill ** hashes if count else 0.0

    def contains(self, edt: bytes) -> bool:
        """Whether the token may be in the shard (false positives ~2^-16; never a false negative)."""
        return self.count > 0 and edt[16:32] in self._bloom
