"""Answer results as columns (AnswerBody.packed): built by a holder, read back by a requester."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from node.wire.v1 import common_pb2, verification_pb2

#: The outcome bytes an answer may carry (every Outcome value; another makes the answer invalid).
OUTCOME_BYTES: Final[bytes] = bytes(sorted(common_pb2.Outcome.values()))
#: At most this many distinct dates fit the one-byte `date_of` column; an answer with more is sent as rows.
MAX_DATES: Final[int] = 255


class Columns:
    """The growing columns of one answer: outcomes and dates, appended result by result (subject-major)."""

    __slots__ = ("outcomes", "date_of", "dates")

    def __init__(self) -> None:
        self.outcomes = bytearray()
        self.date_of: list[int] = []
        self.dates: dict[str, int] = {}

    def add(self, outcome: int, as_of: str = "") -> None:
        self.outcomes.append(outcome)
        if not as_of:
            self.date_of.append(0)
            return
        index = self.dates.get(as_of)
        if index is None:
            index = self.dates[as_of] = len(self.dates) + 1
        self.date_of.append(index)

    def fits(self) -> bool:
        """Whether every date has a one-byte index (else the answer must go as rows)."""
        return len(self.dates) <= MAX_DATES

    def packed(self) -> verification_pb2.PackedResults:
        return verification_pb2.PackedResults(outcomes=bytes(self.outcomes), dates=list(self.dates),
                                              date_of=bytes(self.date_of))

    def rows(self, n_checks: int) -> list[verification_pb2.Result]:
        """The same results as Result messages (the row form)."""
        dates = [""] + list(self.dates)
        return [verification_pb2.Result(subject=k // n_checks, check=k % n_checks, outcome=o, as_of=dates[d])
                for k, (o, d) in enumerate(zip(self.outcomes, self.date_of, strict=True))]


def problem(body: verification_pb2.AnswerBody, n_results: int) -> str | None:
    """What is wrong with the shape of an answer's results (either form), or None."""
    if body.HasField("packed"):
        p = body.packed
        if body.results:
            return "answer carries its results in two forms"
        if len(p.outcomes) != n_results or len(p.date_of) != n_results:
            return "answer does not cover every subject and check"
        if p.outcomes.translate(None, OUTCOME_BYTES):
            return "answer has a result with an unknown outcome"
        if len(p.dates) > MAX_DATES or (p.date_of and max(p.date_of) > len(p.dates)):
            return "answer names a date it does not carry"
        return None
    if len(body.results) != n_results:
        return "answer does not cover every subject and check"
    if any(r.outcome not in _OUTCOMES for r in body.results):
        return "answer has a result with an unknown outcome"
    return None


def results(body: verification_pb2.AnswerBody, n_checks: int) -> Iterator[tuple[int, int, int, str]]:
    """(subject, check, outcome, as_of) of every result, in either form; dates out of range read as ""."""
    if body.HasField("packed"):
        p = body.packed
        dates = ["", *p.dates]
        n = max(n_checks, 1)
        for k, (outcome, d) in enumerate(zip(p.outcomes, p.date_of)):  # noqa: B905 - lengths checked by problem()
            yield k // n, k % n, outcome, dates[d] if d < len(dates) else ""
        return
    for r in body.results:
        yield r.subject, r.check, r.outcome, r.as_of


def outcome_counts(body: verification_pb2.AnswerBody) -> dict[int, int]:
    """Outcome value -> how many results of the answer have it (for metrics)."""
    if body.HasField("packed"):
        outcomes = body.packed.outcomes
        return {o: n for o in OUTCOME_BYTES if (n := outcomes.count(o))}
    counts: dict[int, int] = {}
    for r in body.results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


_OUTCOMES: Final[frozenset[int]] = frozenset(OUTCOME_BYTES)
