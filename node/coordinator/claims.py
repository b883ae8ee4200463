"""Held claims checked against answers: no more routing to a province whose claims do not hold.

A province is sent a routed query because it claimed, in discovery, to hold a subject of it.
Every locked query carries a possession commitment from the requester; a holder that could
unlock it returns the matching proof (node.crypto.possession). The coordinator judges each
routed query blindly: the proof verifies (claim confirmed), or the holder replied without one
(claim contradicted); a transport failure (unavailable, deadline) judges nothing.

An honest province is contradicted too: its locator matches an edt of someone it does not hold
with its false-positive rate (about 2^-16, `Held.false_match_rate`), and a province holding none
of a requester's applicants is routed only such matches. So every discovery adds the false
matches each locator is expected to give (`ClaimBook.discovered`), and a holder is judged
implausible only when its contradictions since the process started are more than false
positives reach with probability `false_positive_alpha` (`false_positive_bound`), besides the
share of contradicted claims among its last `window`.

The coordinator cannot tell a holder that lied from a requester that sent a bad commitment, so
contradictions count per (holder, requester): a requester that frames a holder only stops its
own queries to it. A holder found implausible by `min_requesters` requesters is no longer
routed to by anyone. Every such decision is an alert (log, metric, audit). Counts live in the
process: a restart (after the cause is fixed) clears them; `--workers` processes count apart.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from node.config import ClaimPolicy
from node.crypto import possession
from node.wire.v1 import verification_pb2

FEDERATION = "federation"
REQUESTER = "requester"


@dataclass(frozen=True, slots=True)
class Alert:
    """A holder the coordinator stopped routing to: for one requester, or for the whole federation."""

    holder: str
    requester: str  # "" for the federation
    scope: str  # REQUESTER or FEDERATION
    judged: int
    contradicted: int
    expected: float = 0.0  # contradictions its locator's false positives explain, on average


def false_positive_bound(expected: float, alpha: float) -> int:
    """The fewest contradictions that false positives alone reach with probability at most `alpha`:
    the smallest k with P(X >= k) <= alpha for X ~ Poisson(`expected`).

    A requester's false matches at one locator are a sum of independent rare events (one per
    discovery token, each at the locator's false-positive rate); above its mean such a sum's upper
    tail is no longer than that of the Poisson law of the same mean (Hoeffding 1956; Anderson and
    Samuels 1967), so an honest holder stays below the bound with probability at least 1 - alpha.
    """
    if expected <= 0.0:
        return 1
    log_mean, floor = math.log(expected), math.log(alpha) - 40.0  # terms below alpha·e^-40 do not count

    def log_pmf(k: int) -> float:
        return k * log_mean - expected - math.lgamma(k + 1)

    top = int(expected + 40.0 * math.sqrt(expected)) + 60
    while log_pmf(top) > floor:
        top *= 2
    tail = 0.0
    for k in range(top, -1, -1):  # from the far end, small terms first
        tail += math.exp(log_pmf(k))
        if tail > alpha:
            return k + 1
    return 0


def judge_answer(commitments: Sequence[bytes], proofs: Sequence[bytes]) -> list[bool]:
    """Per committed query of an answered call: whether the holder's proof for it verifies."""
    return [i < len(proofs) and possession.proves(proofs[i], c) for i, c in enumerate(commitments)]


def judge_refusal(commitments: Sequence[bytes], proof: verification_pb2.PossessionProof | None, *,
                  transport: bool) -> list[bool]:
    """The verdicts on a refused call: one confirmed claim for a valid proof (an honest holder
    attaches the proof of the first query it unlocked to every refusal); without one, every
    query of the call contradicted, unless the call failed in transport (nothing judged)."""
    if proof is not None and proof.index < len(commitments) and possession.proves(proof.proof, commitments[proof.index]):
        return [True]
    return [] if transport else [False] * len(commitments)


class ClaimBook:
    """Per (holder, requester), the last `policy.window` verdicts, the contradictions and expected false
    positives since the start; who is no longer routed to."""

    def __init__(self, policy: ClaimPolicy, log: Any, metrics: Any = None) -> None:
        self.policy = policy
        self.log = log
        self.metrics = metrics
        self._verdicts: dict[tuple[str, str], deque[bool]] = {}
        self._contradicted: dict[tuple[str, str], int] = {}  # in the window
        self._total: dict[tuple[str, str], int] = {}  # contradicted since the process started
        self._expected: dict[tuple[str, str], float] = {}  # false matches expected of the discoveries since then
        self._distrusted: dict[str, set[str]] = {}  # holder -> requesters no longer routed to it
        self._federation: set[str] = set()
        self._alerts: list[Alert] = []

    def refuses(self, holder: str, requester: str) -> bool:
        """Whether `requester`'s queries are no longer routed to `holder`."""
        return holder in self._federation or requester in self._distrusted.get(holder, ())

    def discovered(self, holder: str, requester: str, expected: float) -> None:
        """Add the false matches `holder`'s locator is expected to give on one of `requester`'s discoveries
        (its distinct discovery tokens times the locator's false-positive rate)."""
        if expected > 0.0:
            pair = (holder, requester)
            self._expected[pair] = self._expected.get(pair, 0.0) + expected

    def expected(self, holder: str, requester: str) -> float:
        """The false matches `holder`'s locator was expected to give on `requester`'s discoveries so far."""
        return self._expected.get((holder, requester), 0.0)

    def record(self, holder: str, requester: str, verdicts: Iterable[bool], *, request_id: str = "") -> None:
        """Add verdicts (True = confirmed) on `holder`'s claims in `requester`'s queries."""
        pair = (holder, requester)
        window = self._verdicts.setdefault(pair, deque(maxlen=self.policy.window))
        contradicted = self._contradicted.get(pair, 0)
        confirmed = added = 0
        for verdict in verdicts:
            if len(window) == window.maxlen and not window[0]:
                contradicted -= 1
            window.append(verdict)
            contradicted += not verdict
            confirmed += verdict
            added += 1
        self._contradicted[pair] = contradicted
        if not added:
            return
        total = self._total[pair] = self._total.get(pair, 0) + added - confirmed
        expected = self.expected(holder, requester)
        if self.metrics is not None:
            self.metrics.claims(holder, confirmed, added - confirmed)
        if added > confirmed:
            self.log.warning("claim_contradicted", holder=holder, requester=requester, request_id=request_id,
                             contradicted=added - confirmed, judged=added, contradicted_total=total,
                             expected_false_positives=round(expected, 4))
        if (len(window) >= self.policy.min_sample and contradicted >= self.policy.max_contradiction_rate * len(window)
                and not self.refuses(holder, requester)
                and total >= false_positive_bound(expected, self.policy.false_positive_alpha)):
            self._distrust(holder, requester, len(window), contradicted)

    def _distrust(self, holder: str, requester: str, judged: int, contradicted: int) -> None:
        requesters = self._distrusted.setdefault(holder, set())
        requesters.add(requester)
        self._alert(Alert(holder, requester, REQUESTER, judged, contradicted, self.expected(holder, requester)))
        if len(requesters) >= self.policy.min_requesters and holder not in self._federation:
            self._federation.add(holder)
            totals = [(len(self._verdicts[(holder, r)]), self._contradicted[(holder, r)]) for r in requesters]
            self._alert(Alert(holder, "", FEDERATION, sum(j for j, _ in totals), sum(c for _, c in totals),
                              sum(self.expected(holder, r) for r in requesters)))
        if self.metrics is not None:
            self.metrics.implausible(holder, len(requesters))

    def _alert(self, alert: Alert) -> None:
        self._alerts.append(alert)
        self.log.error("claims_implausible", holder=alert.holder, requester=alert.requester or None,
                       scope=alert.scope, judged=alert.judged, contradicted=alert.contradicted,
                       expected_false_positives=round(alert.expected, 4),
                       note="not routed to any more: its held claims are contradicted by its answers")

    def drain_alerts(self) -> list[Alert]:
        """Alerts raised since the last call (for the audit log)."""
        alerts, self._alerts = self._alerts, []
        return alerts
