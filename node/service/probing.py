"""Probing stops: person-level checks at values other than published standards are limited per consent and item.

The holder frees the figures that the requester's own province publishes for the query's
purpose, in force in the months around now (node.domain.probing says which figure frees which
item); every other informative check uses one of `[limits] probe_checks_per_consent_item`
distinct cuts of that (requester, consent, item), recorded durably (node.store.probes) before
the answer is built. A query that would exceed a budget is refused whole (`PROBING_LIMIT`) and
uses nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from node.domain.catalogue import Catalogue
from node.domain.predicate import Check
from node.domain.probing import budgeted, published_operands
from node.domain.standards import StandardsDocument
from node.errors import ErrorCode, Refusal
from node.store.probes import ProbeLedger

Operands = Mapping[str, frozenset[int]]
#: Standards in force in the month before, the month of, or the month after now (UTC) free operands.
WINDOW_MONTHS: Final[int] = 1
_NONE: Final[Operands] = {}


def months_around(now_s: float, window: int = WINDOW_MONTHS) -> tuple[str, ...]:
    """"YYYY-MM" of the months from `window` before to `window` after the UTC month of `now_s`."""
    today = dt.datetime.fromtimestamp(now_s, dt.UTC)
    base = today.year * 12 + today.month - 1
    return tuple(f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(base - window, base + window + 1))


class PublishedValues:
    """The verified standards documents a holder knows (refreshed with the directory) and the operands they free."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        # (documents, their revision, operands cache), replaced whole by `update`: `operands` may run on a store
        # thread (node.server.store_threads) while the loop updates, and reads all three as of one update.
        self._state: tuple[dict[str, StandardsDocument] | None, tuple[tuple[str, int], ...],
                           dict[tuple[str, str, tuple[str, ...]], Operands]] = (None, (), {})
        self._months: tuple[int, tuple[str, ...]] = (-1, ())  # (minute, months around it)

    @property
    def known(self) -> bool:
        """True once a verified directory has been read (an empty set of documents counts)."""
        return self._state[0] is not None

    def update(self, documents: Mapping[str, StandardsDocument]) -> None:
        """Adopt the documents of a newly verified directory (province -> its document in force)."""
        revision = tuple(sorted((p, d.version) for p, d in documents.items()))
        if self._state[0] is not None and revision == self._state[1]:
            return
        self._state = (dict(documents), revision, {})

    def operands(self, requester: str, purpose: str, now_s: float) -> Operands:
        """item -> operands free for `requester`'s checks under `purpose` now: its own province's figures."""
        minute = int(now_s // 60)
        if self._months[0] != minute:
            self._months = (minute, months_around(now_s))
        months = self._months[1]
        key = (requester, purpose, months)
        documents, _, cache = self._state  # one update's documents and cache, whatever `update` does meanwhile
        found = cache.get(key)
        if found is None:
            doc = (documents or {}).get(requester)
            standards = () if doc is None else (
                s for s in doc.standards if s.purpose == purpose and any(s.covers(m) for m in months))
            found = cache[key] = published_operands(standards, self.catalogue)
        return found


class ProbeLimit:
    """The holder's probing budget: free checks pass, budgeted ones are counted, beyond the budget refused."""

    def __init__(self, ledger: ProbeLedger, published: PublishedValues, catalogue: Catalogue, *, budget: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.published = published
        self.catalogue = catalogue
        self.budget = budget
        self.clock = clock

    def admit(self, requester: str, consent_id: str, purpose: str, checks: Iterable[Check]) -> int:
        """Record the query's budgeted checks; return how many new uses they took. Refusal when one item's
        budget would be exceeded (nothing recorded), or when published standards are not known yet."""
        checks = list(checks)
        known = self.published.known  # read once: the loop may learn the standards while a store thread runs this
        operands = self.published.operands(requester, purpose, self.clock()) if known else _NONE
        cuts = budgeted(checks, self.catalogue, operands)
        if not cuts:
            return 0
        if not known:  # do not spend budget on checks that may be at published values
            raise Refusal(ErrorCode.UNAVAILABLE, "published standards are not known yet")
        over, new = self.ledger.admit(requester, consent_id, cuts, self.budget)
        if over is not None:
            raise Refusal(ErrorCode.PROBING_LIMIT, f"{over} was checked at {self.budget} such values under this consent")
        return new

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One ledger transaction for a batch of queries."""
        return self.ledger.transaction()
