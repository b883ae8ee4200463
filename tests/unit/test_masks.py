"""Pairwise masks of the household secure sum: test vectors (docs/PROTOCOL.md §21) and cancellation."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.crypto import masks

SEAL_44 = X25519PrivateKey.from_private_bytes(bytes([0x44]) * 32)
SEAL_33 = X25519PrivateKey.from_private_bytes(bytes([0x33]) * 32)
ROUND = "ab" * 32
HOUSEHOLD = "c-000000000000000000000001"


def test_vectors_of_the_protocol_document() -> None:
    """Mask keys, the pair secret, one mask and two masked sums are exactly those of PROTOCOL §21."""
    m44, m33 = masks.mask_key_from_seal_key(SEAL_44), masks.mask_key_from_seal_key(SEAL_33)
    assert masks.public_bytes(m44).hex() == "5947434cc6279727b7501a0e740a7e28ffe926b758158cb49428dd5135b55b54"
    assert masks.public_bytes(m33).hex() == "c5bb30fec6328e288b4cf168768b22d34d6a37fbd26d78597f091e09e0864c2c"
    secret = masks.pair_secret(m44, "44", masks.public_bytes(m33), "33")
    assert secret == masks.pair_secret(m33, "33", masks.public_bytes(m44), "44")
    assert secret.hex() == "9acc8a5206e9ed0e8d6cbd08ec3681395a4bd8f0ff66a139176b62083525c7b1"
    assert masks.mask(secret, ROUND, HOUSEHOLD, "income_monthly") == 0xB2889F312D6770106883BBA0E98357EE
    v33 = masks.masked_sums([180000], ["income_monthly"], own="33", secrets={"44": secret}, round_key=ROUND, household=HOUSEHOLD)
    v44 = masks.masked_sums([250000], ["income_monthly"], own="44", secrets={"33": secret}, round_key=ROUND, household=HOUSEHOLD)
    assert masks.encode(v33[0]).hex() == "b2889f312d6770106883bba0e986170e"
    assert masks.encode(v44[0]).hex() == "4d7760ced2988fef977c445f168078a2"
    assert masks.unmask([v33, v44], 1) == [430000]


def test_masks_cancel_only_over_the_whole_holder_set() -> None:
    """Five holders' vectors sum to the exact totals; every four of them sum to noise.

    "Noise" is judged by `unmask`'s plausibility bound (a total below 2^127), which a random total
    passes with probability 1/2 per measure: with 24 measures a four-holder sum passes by chance
    with probability 2^-24, and the keys are fixed, so the test is deterministic (with 3 measures and
    fresh random keys it failed one run in eight)."""
    rng = random.Random(7)
    provinces = ["11", "32", "33", "44", "51"]
    measures = [f"m{i}" for i in range(24)]
    keys = {p: X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, p in enumerate(provinces)}
    public = {p: masks.public_bytes(k) for p, k in keys.items()}
    values = {p: [rng.randrange(0, 10**12) for _ in measures] for p in provinces}
    vectors = {}
    for p in provinces:
        secrets = {q: masks.pair_secret(keys[p], p, public[q], q) for q in provinces if q != p}
        vectors[p] = masks.masked_sums(values[p], measures, own=p, secrets=secrets, round_key=ROUND, household=HOUSEHOLD)
    totals = [sum(values[p][i] for p in provinces) for i in range(len(measures))]
    assert masks.unmask(vectors.values(), len(measures)) == totals
    for left_out in provinces:
        with pytest.raises(masks.MaskError, match="plausible"):
            masks.unmask([vectors[p] for p in provinces if p != left_out], len(measures))


def test_other_rounds_and_households_get_other_masks() -> None:
    """The same pair secret gives unrelated masks for another round, household or measure."""
    secret = bytes(32)
    base = masks.mask(secret, ROUND, HOUSEHOLD, "income_monthly")
    assert base != masks.mask(secret, "cd" * 32, HOUSEHOLD, "income_monthly")
    assert base != masks.mask(secret, ROUND, "c-000000000000000000000002", "income_monthly")
    assert base != masks.mask(secret, ROUND, HOUSEHOLD, "financial_assets")


def test_a_low_order_mask_key_is_refused() -> None:
    """A peer's all-zero (small-order) X25519 key gives no pair secret."""
    with pytest.raises(masks.MaskError):
        masks.pair_secret(X25519PrivateKey.generate(), "44", bytes(32), "33")
    with pytest.raises(masks.MaskError):
        masks.masked_sums([1 << 127], ["a"], own="44", secrets={}, round_key=ROUND, household=HOUSEHOLD)
