"""Epoch discovery tokens, consent discovery commitments and locator filters (PROTOCOL §5.1, §6, §11.6)."""

from __future__ import annotations

import os

import pytest

from node.config import ConfigError, DiscoveryPolicy
from node.crypto import discovery, locator

TOKEN = bytes.fromhex("fc4cc74cd47e6edc0118d7552136d5c715f860e25d5eb36846c4f9c9596d1c13")


def test_discovery_tokens_and_commitments_match_the_protocol_vectors() -> None:
    """The edts of epochs 2970 and 2971 and the commitment to the first are the ones PROTOCOL §5.1 and §6 print."""
    edt = discovery.discovery_token(TOKEN, 2970)
    assert edt.hex() == "d5c1aa33f2a4f671bf08c38e4d33edb6e9446762de764f9dccd10af98e56b855"
    assert discovery.discovery_token(TOKEN, 2971).hex() == \
        "1467774f1c3801fffa62146ef2c66410e55ba0fe5f9516bbff0ad71518acb896"
    assert discovery.commitment(b"\xaa" * 16, edt).hex() == \
        "e7606896f0d66c2667a297823167e5c3e272fa93b9dfcfa1f3bcfbe7d6b74e76"


def test_a_consent_covers_at_most_sixty_epochs_from_now() -> None:
    """A year-long consent with one-hour epochs carries commitments for 60 epochs starting with the current one."""
    now_ms = int(discovery.clock() * 1000)
    epochs = discovery.consent_epochs(now_ms - 60_000, now_ms + 366 * 86_400_000, 3600)
    assert len(epochs) == discovery.MAX_CONSENT_EPOCHS and epochs.start == discovery.current_epoch(3600)


def test_a_locator_holds_its_tokens_and_few_others() -> None:
    """Every token built into a locator is found; of 100,000 others only a handful (rate about 2^-16)."""
    edts = [os.urandom(32) for _ in range(5000)]
    bits, shards = locator.build(iter(edts), len(edts))
    (count, data), = shards
    shard = locator.Shard(data, count)
    assert bits == 0 and count == 5000 and all(shard.contains(e) for e in edts)
    assert sum(shard.contains(os.urandom(32)) for _ in range(100_000)) < 20


@pytest.mark.parametrize("claim", ["all ones", "wrong size", "wrong count"])
def test_a_locator_that_claims_more_than_its_count_is_rejected(claim: str) -> None:
    """Filter bytes that are all ones, of another size, or for another subject count are not loaded."""
    count, data = locator.build(iter([os.urandom(32) for _ in range(100)]), 100)[1][0]
    bad = {"all ones": (data[:8] + b"\xff" * (len(data) - 8), count), "wrong size": (data + bytes(8), count),
           "wrong count": (data, 10 * count)}[claim]
    with pytest.raises(locator.FilterRejected):
        locator.Shard(*bad)


def test_per_province_subject_bounds_are_checked_and_fall_back_to_the_federations() -> None:
    """[discovery.max_subjects_of] names provinces by code with positive bounds; others get max_subjects."""
    policy = DiscoveryPolicy(max_subjects=1000, max_subjects_of={"32": 50})
    assert policy.subject_limit("32") == 50 and policy.subject_limit("44") == 1000
    for bad in ({"99": 5}, {"32": 0}, {"32": True}, {"Guangdong": 5}):
        with pytest.raises(ConfigError, match="max_subjects_of"):
            DiscoveryPolicy(max_subjects_of=bad)


def test_a_small_shard_claiming_a_huge_count_is_refused_before_anything_is_allocated() -> None:
    """A 40-byte shard claiming 2·10^8 keys is refused from its length alone (no 580 MB reference filter)."""
    with pytest.raises(locator.FilterRejected, match="200000000 subjects"):
        locator.Shard(bytes(40), 200_000_000)
