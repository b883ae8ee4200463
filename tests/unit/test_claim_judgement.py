"""The claim checks' judgement (node.coordinator.claims) against the false positives a locator explains.

Deterministic: the counts are given, not drawn (except one seeded draw of real filter lookups).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from node.config import ClaimPolicy, ConfigError
from node.coordinator.claims import REQUESTER, ClaimBook, false_positive_bound
from node.crypto import locator

RATE = 2.0 ** -16  # what a shard of the locator's design shows (checked below)
ALPHA = ClaimPolicy().false_positive_alpha


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    error = warning


def _tail(expected: float, k: int) -> float:
    """P(X >= k) for X ~ Poisson(expected), summed directly."""
    return 1.0 - sum(math.exp(j * math.log(expected) - expected - math.lgamma(j + 1)) for j in range(k))


@pytest.mark.parametrize("expected", [0.01, 0.5, 3.0, 20.0, 64.0])
def test_the_bound_is_the_poisson_quantile_at_alpha(expected: float) -> None:
    """false_positive_bound gives the smallest k that false positives of that mean reach with probability <= alpha."""
    k = false_positive_bound(expected, 1e-6)
    assert _tail(expected, k) <= 1e-6 < _tail(expected, k - 1)
    assert false_positive_bound(0.0, ALPHA) == 1  # no discovery seen: any contradiction is unexplained


def test_a_province_with_only_false_positives_for_a_requester_is_never_excluded() -> None:
    """A province holding none of a requester's applicants, contradicted once per 2^16 discovery tokens (its
    false-positive rate) and even 3 standard deviations more often, keeps being routed to, and its later real
    holding is confirmed; without the discoveries counted the same verdicts exclude it after `min_sample`."""
    policy = ClaimPolicy()  # the defaults: min_sample 20, rate 0.2, window 200
    book, blind = ClaimBook(policy, _Log()), ClaimBook(policy, _Log())
    contradicted = 0
    for block in range(1, 257):  # 256 discoveries of 2^16 tokens: 2^24 member lookups
        book.discovered("33", "51", 2 ** 16 * RATE)
        due = int(block + 3 * math.sqrt(block))
        while contradicted < due:
            book.record("33", "51", [False])
            blind.record("33", "51", [False])
            contradicted += 1
            assert not book.refuses("33", "51"), f"excluded after {contradicted} contradictions, {block} expected"
    assert contradicted > policy.min_sample and blind.refuses("33", "51")
    assert not book.drain_alerts()
    book.record("33", "51", [True])  # its first real holding for that requester
    assert not book.refuses("33", "51")


def test_a_province_claiming_beyond_its_false_positives_is_still_excluded() -> None:
    """With the same discovery volume, a province contradicted more often than false positives reach (at
    alpha) is excluded at exactly that count, for that requester only, and the alert says what was expected."""
    log = _Log()
    book = ClaimBook(ClaimPolicy(), log)
    expected = 64.0
    book.discovered("33", "51", expected)
    bound = false_positive_bound(expected, ALPHA)
    assert expected < bound < 2 * expected
    for n in range(1, bound):
        book.record("33", "51", [False])
        assert not book.refuses("33", "51"), n
    book.record("33", "51", [False])
    assert book.refuses("33", "51") and not book.refuses("33", "32")
    (alert,) = book.drain_alerts()
    assert (alert.holder, alert.requester, alert.scope, alert.expected) == ("33", "51", REQUESTER, expected)
    assert [e for e, _ in log.events].count("claims_implausible") == 1


def test_a_share_rule_still_applies_beyond_the_false_positive_bound() -> None:
    """Contradictions beyond the false-positive bound exclude only while they are at least
    `max_contradiction_rate` of the last `window` verdicts: a large real holder's few are not judged."""
    book = ClaimBook(ClaimPolicy(), _Log())
    for _ in range(10):
        book.record("44", "51", [True] * 19 + [False])  # 5 % contradicted, no discovery counted at all
    assert not book.refuses("44", "51")


def test_the_expected_rate_is_the_filters_own() -> None:
    """A real locator shard's false_positive_rate is its fill to the 16th power, near the design's 2^-16,
    and a seeded draw of unknown tokens matches it about that often."""
    rng = random.Random(20261201)
    keys = [rng.randbytes(32) for _ in range(5000)]
    bits, ((count, data),) = locator.build(keys, len(keys))
    shard = locator.Shard(data, count)
    assert bits == 0 and shard.false_positive_rate == shard.fill ** 16
    assert 0.8 * RATE < shard.false_positive_rate < 1.25 * RATE
    draws = 1_000_000
    matched = sum(shard.contains(rng.randbytes(32)) for _ in range(draws))
    expected = draws * shard.false_positive_rate
    assert matched < false_positive_bound(expected, 1e-6)
    assert false_positive_bound(expected, 1e-6) - expected < 4 * expected  # the check is not vacuous
    assert matched > 0
    empty = locator.Shard(locator.build([], 0)[1][0][1], 0)
    assert empty.false_positive_rate == 0.0


@pytest.mark.parametrize("alpha", [0, 1, -0.1, True, "0.01", 1e-101])
def test_a_bad_false_positive_alpha_is_a_config_error(alpha: Any) -> None:
    """[claims] false_positive_alpha must be a number in [1e-100, 1)."""
    with pytest.raises(ConfigError, match="false_positive_alpha"):
        ClaimPolicy(false_positive_alpha=alpha)
