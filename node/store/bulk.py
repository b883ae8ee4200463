"""The columnar fast path of CSV ingest: a file of plain, valid rows written a block of lines at a time.

It takes a file only in the form most files have — the exact header, no quotes, LF or CRLF
line ends, every row valid and written canonically, no repeated key — and checks each block
of lines column by column (distinct ID numbers, dates and sources once, values in one regular
expression pass). At the first thing it does not take it raises GiveUp: the caller undoes its
writes (FactWriter.savepoint) and runs the row-by-row path, which stores the same rows and
reports every bad line. What it stores is exactly what the row-by-row path stores.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Mapping
from itertools import repeat
from operator import le
from pathlib import Path
from typing import Final

from node.crypto.tokens import possession_keys, subject_tokens
from node.domain import idnumber
from node.domain.catalogue import Item
from node.store.interfaces import FactWriter

BLOCK_CHARS: Final[int] = 1 << 20  # text read per block (about 20,000 lines)
_TEXTS_MAX: Final[int] = 4096  # good as_of and source texts remembered
_HEADER: Final[str] = "id_number,attribute,value,as_of,source"
# Every value of a block, each followed by "\n": canonical decimals only (as catalogue.parse_value).
_VALUES_RE: Final[re.Pattern[str]] = re.compile(r"(?:(?:0|[1-9][0-9]{0,18})\n)*")


class GiveUp(Exception):
    """The file is not in the form the fast path takes; nothing it wrote may be kept."""


class Columns:
    """The checks of one file's ingest, with what they have already passed."""

    def __init__(self, key: bytes, items: Mapping[str, Item], today: _dt.date,
                 date_reason: Callable[[str], str | None], source_reason: Callable[[str], str | None],
                 cache_max: int) -> None:
        self.key = key
        self.maximum = {code: item.maximum for code, item in items.items()}
        self.today = today
        self.date_reason = date_reason
        self.source_reason = source_reason
        self.cache_max = cache_max
        self.sid_of: dict[str, int] = {}  # raw ID number -> subject id
        self.dates: set[str] = set()  # as_of and source texts already found good
        self.sources: set[str] = set()
        self.seen: set[int] = set()  # hash of each row's key: a repeat makes the fast path give up
        self.subject_ids: set[int] = set()
        self.rows = 0
        self.written = 0

    def ingest(self, path: Path, writer: FactWriter) -> None:
        """Write every row of the file, or raise GiveUp (or UnicodeDecodeError, OSError)."""
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            if fh.readline().rstrip("\n").removesuffix("\r") != _HEADER:
                raise GiveUp
            tail = ""
            while True:
                text = fh.read(BLOCK_CHARS)
                if not text:
                    break
                text = tail + text
                cut = text.rfind("\n") + 1
                text, tail = text[:cut], text[cut:]
                if text:
                    self._block(text, writer)
            if tail:
                self._block(tail + "\n", writer)
        if self.rows == 0:
            raise GiveUp  # the row-by-row path words the reason

    def _block(self, text: str, writer: FactWriter) -> None:
        """The rows of whole lines of text (each ending in a newline)."""
        if "\"" in text or "\x00" in text:
            raise GiveUp
        if "\r" in text:
            if text.count("\r") != text.count("\r\n"):
                raise GiveUp  # a CR that ends no line
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        lines.pop()  # after the last newline
        if "" in lines:
            lines = [line for line in lines if line]  # blank lines: no row
            if not lines:
                return
        n = len(lines)
        if set(map(str.count, lines, repeat(",", n))) != {4}:
            raise GiveUp  # a row without exactly 5 fields
        flat = ",".join(lines).split(",")
        raw_ids, attributes, raw_values, as_ofs, sources = (flat[i::5] for i in range(5))
        maximum = self.maximum
        if not maximum.keys() >= set(attributes):
            raise GiveUp
        if _VALUES_RE.fullmatch("\n".join(raw_values) + "\n") is None:
            raise GiveUp
        values = list(map(int, raw_values))
        if not all(map(le, values, map(maximum.__getitem__, attributes))):
            raise GiveUp
        self._check_texts(as_ofs, self.dates, self.date_reason)
        self._check_texts(sources, self.sources, self.source_reason)
        sids = self._subjects(raw_ids, writer)
        seen = self.seen
        before = len(seen)
        seen.update(map(hash, zip(sids, attributes, as_ofs, sources, strict=True)))
        if len(seen) - before != n:
            raise GiveUp  # a repeated key (or a hash collision): the row-by-row path tells which
        self.written += writer.upsert_facts(zip(sids, attributes, as_ofs, sources, values, strict=True))
        self.rows += n

    def _check_texts(self, texts: list[str], good: set[str], reason: Callable[[str], str | None]) -> None:
        for text in set(texts).difference(good):
            if reason(text) is not None:
                raise GiveUp
            if len(good) >= _TEXTS_MAX:
                good.clear()
            good.add(text)

    def _subjects(self, raw_ids: list[str], writer: FactWriter) -> list[int]:
        """The subject id of each row, deriving tokens and possession keys once per new ID number."""
        sid_of = self.sid_of
        if len(sid_of) >= self.cache_max:
            sid_of.clear()
        new = [raw for raw in dict.fromkeys(raw_ids) if raw not in sid_of]
        if new:
            numbers = []
            today = self.today
            for raw in new:
                try:
                    numbers.append(idnumber.validate(raw, today=today))
                except idnumber.InvalidIdNumber:
                    raise GiveUp from None
            tokens = subject_tokens(self.key, numbers)
            ids = writer.subject_ids(tokens, possession_keys(self.key, numbers))
            sid_of.update(zip(new, ids, strict=True))
            self.subject_ids.update(ids)
        return list(map(sid_of.__getitem__, raw_ids))
