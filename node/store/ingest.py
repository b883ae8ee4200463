"""Ingest of departmental data files (CSV or JSONL) into the store, all-or-nothing per file.

Every row is checked: ID number (GB 11643, known province, birth date), catalogue attribute,
value by item type, as-of date, source (free text: one holding an ID number is refused). A
file with any bad row is rejected whole, listing every bad line and why; reasons never
contain the ID number or the value. Rows are written inside one transaction as they pass,
and the transaction is rolled back when any line of the file turns out bad, so a rejected
file leaves the store exactly as it was. Raw ID numbers become subject tokens (and
possession keys, node.crypto.possession) at once and are never written. A plain, valid CSV file
takes the columnar fast path (node.store.bulk), which stores exactly what the row-by-row path
stores; any other file is read row by row, and so is one the fast path gives up on midway.
"""

from __future__ import annotations

import codecs
import csv
import datetime as _dt
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node.crypto.tokens import possession_key, subject_token
from node.files import parse_json
from node.domain import idnumber
from node.domain.catalogue import Catalogue, Item
from node.errors import BadInput
from node.store import bulk
from node.store.errors import IngestRejected
from node.store.interfaces import FactStore, FactWriter

HEADER: Final[tuple[str, ...]] = ("id_number", "attribute", "value", "as_of", "source")
JSONL_SUFFIXES: Final[frozenset[str]] = frozenset({".jsonl", ".ndjson"})
SOURCE_MAX: Final[int] = 64
EARLIEST_AS_OF: Final[_dt.date] = _dt.date(1970, 1, 1)
_CACHE_MAX: Final[int] = 1 << 18  # entries per per-file cache before it is cleared
_SMALL_CACHE_MAX: Final[int] = 4096
_DECIMAL_RE: Final[re.Pattern[str]] = re.compile(r"0|[1-9][0-9]{0,18}")
_DATE_RE: Final[re.Pattern[str]] = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CODE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_JSON_TYPE_REASONS: Final[dict[str, str]] = {
    name: f"{name} must be a JSON string" for name in HEADER
} | {"value": "value must be a JSON integer or a string of digits"}

Row = tuple[int, bytes, str, int, str, str]
"""A validated row: (line, token, attribute, value, as_of, source)."""


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ingested file did to the store."""

    rows: int
    subjects: int
    facts_written: int
    """Facts inserted or corrected; re-ingesting an unchanged file writes 0."""
    seconds: float
    possession_added: int = 0
    """Possession keys given to subjects that had none (a store upgraded from schema 1)."""


def ingest_file(
    store: FactStore,
    path: Path,
    *,
    linkage_key: bytes,
    catalogue: Catalogue,
    today: _dt.date | None = None,
    columnar: bool = True,
) -> IngestReport:
    """Load a CSV or JSONL (.jsonl/.ndjson) file into the store whole, or raise IngestRejected.

    `columnar=False` skips the CSV fast path (node.store.bulk) and goes row by row, the path
    whose stored rows and reports the fast path must equal (for tests)."""
    started = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise IngestRejected(f"ingest file not found: {path}", [(0, "file not found")])
    if not path.is_file():
        raise IngestRejected(f"ingest path is not a file: {path}", [(0, "not a regular file")])
    job = _Job(path, linkage_key, catalogue, today or _dt.date.today(), columnar)
    try:
        with store.writer() as writer:
            job.run(writer)
            if job.errors:
                raise IngestRejected(
                    f"{path}: rejected, {len(job.errors)} bad line(s); nothing was stored from it",
                    job.errors,
                )
            writer.set_aggregates(catalogue.aggregates())
    except OSError as exc:
        reason = f"cannot read file: {exc.strerror or type(exc).__name__}"
        raise IngestRejected(f"{path}: {reason}", [(0, reason)]) from None
    return IngestReport(job.rows, len(job.subject_ids), job.written, time.perf_counter() - started,
                        job.possession_added)


class _Job:
    """One file's ingest: validate, spot repeated keys, resolve subjects, upsert."""

    def __init__(self, path: Path, key: bytes, catalogue: Catalogue, today: _dt.date,
                 columnar: bool = True) -> None:
        self.path = path
        self.columnar = columnar
        self.key = key
        self.catalogue = catalogue
        self.today = today
        self.jsonl = path.suffix.lower() in JSONL_SUFFIXES
        self.errors: list[tuple[int, str]] = []
        self.rows = 0
        self.written = 0
        self.possession_added = 0
        self.subject_ids: set[int] = set()

    def run(self, writer: FactWriter) -> None:
        if self.columnar and not self.jsonl and self._run_columnar(writer):
            return
        self._run_rows(writer)

    def _run_columnar(self, writer: FactWriter) -> bool:
        """The fast path (node.store.bulk); False, with nothing written, when it gave up on the file."""
        validator = _Validator(self.key, self.catalogue, self.today)
        columns = bulk.Columns(self.key, validator.items, self.today, validator.date_reason,
                               _source_reason, _CACHE_MAX)
        try:
            with writer.savepoint():
                columns.ingest(self.path, writer)
        except (bulk.GiveUp, UnicodeDecodeError):
            return False
        self.rows, self.written = columns.rows, columns.written
        self.possession_added = writer.possession_added
        self.subject_ids = columns.subject_ids
        return True

    def _run_rows(self, writer: FactWriter) -> None:
        """Row by row: every bad line found and reported (and the reference the fast path matches)."""
        validator = _Validator(self.key, self.catalogue, self.today)
        seen: set[int] = set()
        suspects: set[int] = set()  # key hashes met twice: maybe a repeated key
        sids: dict[bytes, int] = {}
        subject_ids = self.subject_ids

        def facts(rows: Iterable[Row]) -> Iterator[tuple[int, str, str, str, int]]:
            for _line, token, attribute, value, as_of, source in rows:
                h = hash((token, attribute, as_of, source))
                if h in seen:
                    suspects.add(h)  # still written: a hash collision is not a repeat
                else:
                    seen.add(h)
                if validator.errors:
                    continue  # the file will be rejected: only keep validating
                sid = sids.get(token)
                if sid is None:
                    if len(sids) >= _CACHE_MAX:
                        sids.clear()
                    sid = sids[token] = writer.subject_id(token, validator.possession[token])
                subject_ids.add(sid)
                yield (sid, attribute, as_of, source, value)

        strict = True
        try:
            self.written = writer.upsert_facts(facts(validator.rows(self.path, self.jsonl)))
            self.possession_added = writer.possession_added
        except UnicodeDecodeError:
            # Bad UTF-8 on the fast text path: the file is rejected; re-read it line by line
            # to report every bad line. Nothing written so far will be committed.
            strict = False
            validator = _Validator(self.key, self.catalogue, self.today)
            seen.clear()
            suspects.clear()
            for _ in facts(validator.rows(self.path, self.jsonl, strict_text=False)):
                pass
            if not validator.errors:  # cannot happen: UTF-8 errors never span lines
                validator.errors.append((0, "file is not valid UTF-8"))
        self.rows = validator.n_rows
        errors = validator.errors
        if suspects:
            errors.extend(self._repeats(suspects, strict))
        if not errors and self.rows == 0:
            errors.append(validator.empty_reason())
        errors.sort(key=lambda e: e[0])
        self.errors = errors

    def _repeats(self, suspects: set[int], strict: bool) -> list[tuple[int, str]]:
        """Second pass over the file: every line repeating an earlier line's exact key."""
        first: dict[tuple[bytes, str, str, str], int] = {}
        out: list[tuple[int, str]] = []
        validator = _Validator(self.key, self.catalogue, self.today)
        for line, token, attribute, _value, as_of, source in validator.rows(
            self.path, self.jsonl, strict_text=strict
        ):
            key = (token, attribute, as_of, source)
            if hash(key) not in suspects:
                continue
            earlier = first.setdefault(key, line)
            if earlier != line:
                out.append(
                    (line, f"repeats the id_number, attribute, as_of and source of line {earlier}")
                )
        return out


class _Validator:
    """Parses and validates the rows of one file, recording (line, reason) for bad lines."""

    def __init__(self, linkage_key: bytes, catalogue: Catalogue, today: _dt.date) -> None:
        self.key = linkage_key
        self.items: dict[str, Item] = {item.code: item for item in catalogue}
        self.today = today
        self.errors: list[tuple[int, str]] = []
        self.n_rows = 0
        self.saw_header = False
        self.ids: dict[str, bytes | str] = {}  # raw ID -> token, or the reason it is invalid
        self.possession: dict[bytes, bytes] = {}  # token -> possession key, for every token in ids
        self.dates: dict[str, str] = {}  # good as_of -> canonical string object
        self.sources: dict[str, str] = {}  # good source -> canonical string object

    def empty_reason(self) -> tuple[int, str]:
        if self.saw_header:
            return (1, "file has a header but no data rows")
        return (1, "file is empty")

    def rows(self, path: Path, jsonl: bool, *, strict_text: bool = True) -> Iterator[Row]:
        """Validated rows of the file; bad lines are recorded in `errors` and skipped."""
        if jsonl:
            with path.open("rb") as fh:
                yield from self._jsonl(fh)
        elif strict_text:
            with path.open("r", encoding="utf-8-sig", newline="") as fh:
                yield from self._csv(csv.reader(fh, strict=True))
        else:
            with path.open("rb") as fh:
                yield from self._csv(csv.reader(self._decoded_lines(fh), strict=True))

    def _decoded_lines(self, fh: Iterable[bytes]) -> Iterator[str]:
        """Lines of a binary file as text; an undecodable line is reported and read as blank."""
        for n, raw in enumerate(fh, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.errors.append((n, "line is not valid UTF-8"))
                self.n_rows += n > 1
                yield "\n"

    # -- CSV -------------------------------------------------------------------------------

    def _csv(self, reader: Any) -> Iterator[Row]:
        errors = self.errors
        while True:  # the header: the first non-blank line
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error:
                errors.append((reader.line_num, "header is not well-formed CSV"))
                return
            if header:
                break
        self.saw_header = True
        if tuple(header) != HEADER:
            errors.append((reader.line_num, _header_reason(header)))
            return
        items, ids, dates, sources = self.items, self.ids, self.dates, self.sources
        match = _DECIMAL_RE.fullmatch
        check = self._check
        n_rows = 0
        try:
            while True:
                try:
                    for row in reader:
                        if not row:
                            continue  # blank line
                        n_rows += 1
                        if len(row) != 5:
                            errors.append((reader.line_num, f"has {len(row)} fields, expected 5"))
                            continue
                        raw_id, attribute, raw_value, raw_as_of, raw_source = row
                        # Fast path: every part already known good.
                        token = ids.get(raw_id)
                        item = items.get(attribute)
                        as_of = dates.get(raw_as_of)
                        source = sources.get(raw_source)
                        if (
                            token.__class__ is bytes
                            and item is not None
                            and as_of is not None
                            and source is not None
                            and match(raw_value) is not None
                        ):
                            value = int(raw_value)
                            if value <= item.maximum:
                                yield (reader.line_num, token, item.code, value, as_of, source)  # type: ignore[misc]
                                continue
                        good = check(reader.line_num, raw_id, attribute, raw_value, raw_as_of,
                                     raw_source)  # fmt: skip
                        if good is not None:
                            yield good
                    return
                except csv.Error:
                    n_rows += 1
                    errors.append((reader.line_num, "line is not well-formed CSV"))
        finally:
            self.n_rows += n_rows

    # -- JSONL -----------------------------------------------------------------------------

    def _jsonl(self, fh: Iterable[bytes]) -> Iterator[Row]:
        errors = self.errors
        check = self._check
        for line, raw in enumerate(fh, 1):
            if line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.n_rows += 1
                errors.append((line, "line is not valid UTF-8"))
                continue
            if not text.strip():
                continue
            self.n_rows += 1
            try:
                record = parse_json(text)  # nesting too deep for the parser is bad JSON too
            except ValueError:
                errors.append((line, "line is not valid JSON"))
                continue
            if not isinstance(record, dict):
                errors.append((line, "line is not a JSON object"))
                continue
            if len(record) != len(HEADER) or not all(name in record for name in HEADER):
                errors.append((line, _fields_reason(record)))
                continue
            value = record["value"]
            if type(value) is int:  # a JSON integer; bools and floats stay wrong
                value = str(value)
            fields = (record["id_number"], record["attribute"], value, record["as_of"],
                      record["source"])  # fmt: skip
            wrong = [name for name, v in zip(HEADER, fields, strict=True) if type(v) is not str]
            if wrong:
                errors.append((line, "; ".join(_JSON_TYPE_REASONS[name] for name in wrong)))
                continue
            good = check(line, *fields)
            if good is not None:
                yield good

    # -- one row, slow path ----------------------------------------------------------------

    def _check(
        self, line: int, raw_id: str, attribute: str, raw_value: str, raw_as_of: str, raw_source: str
    ) -> Row | None:
        """The validated row, or None after recording every reason the line is bad."""
        reasons: list[str] = []
        token = self.ids.get(raw_id)
        if token is None:
            token = self._id_token(raw_id)
        if isinstance(token, str):
            reasons.append(token)
        item = self.items.get(attribute)
        value = 0
        if item is None:
            shown = f" {attribute!r}" if _CODE_RE.fullmatch(attribute) else ""
            reasons.append(f"attribute{shown} is not in the catalogue")
        else:
            try:
                value = item.parse_value(raw_value)
            except BadInput as exc:  # the message names the item, never the value
                reasons.append(str(exc))
        as_of = self.dates.get(raw_as_of)
        if as_of is None:
            reason = self.date_reason(raw_as_of)
            if reason is None:
                as_of = self._remember(self.dates, raw_as_of)
            else:
                reasons.append(reason)
        source = self.sources.get(raw_source)
        if source is None:
            reason = _source_reason(raw_source)
            if reason is None:
                source = self._remember(self.sources, raw_source)
            else:
                reasons.append(reason)
        if reasons:
            self.errors.append((line, "; ".join(reasons)))
            return None
        assert isinstance(token, bytes) and item is not None and as_of and source
        return (line, token, item.code, value, as_of, source)

    @staticmethod
    def _remember(cache: dict[str, str], text: str) -> str:
        if len(cache) >= _SMALL_CACHE_MAX:
            cache.clear()
        cache[text] = text
        return text

    def _id_token(self, raw_id: str) -> bytes | str:
        if len(self.ids) >= _CACHE_MAX:
            self.ids.clear()
            self.possession.clear()
        try:
            number = idnumber.validate(raw_id, today=self.today)
        except idnumber.InvalidIdNumber as exc:
            result: bytes | str = f"id_number: {exc}"
        else:
            result = subject_token(self.key, number)
            self.possession[result] = possession_key(self.key, number)
        self.ids[raw_id] = result
        return result

    def date_reason(self, as_of: str) -> str | None:
        """Why an as_of text is not a good date, or None."""
        if _DATE_RE.fullmatch(as_of) is None:
            return "as_of must be a date written YYYY-MM-DD"
        try:
            day = _dt.date.fromisoformat(as_of)
        except ValueError:
            return "as_of is not a calendar date"
        if day > self.today:
            return "as_of is in the future"
        if day < EARLIEST_AS_OF:
            return f"as_of is before {EARLIEST_AS_OF.isoformat()}"
        return None


def _source_reason(source: str) -> str | None:
    if not source:
        return "source is empty"
    if len(source) > SOURCE_MAX:
        return f"source is longer than {SOURCE_MAX} characters"
    if not source.isprintable():
        return "source contains control or non-printable characters"
    if source != source.strip():
        return "source starts or ends with whitespace"
    if idnumber.contains_id_number(source):  # stored with every fact: never a person's ID number
        return "source must not contain an ID number"
    return None


def _header_reason(header: list[str]) -> str:
    """Why a CSV header is wrong, naming only expected columns (the 'header' may be data)."""
    missing = [name for name in HEADER if name not in header]
    extra = sum(1 for name in header if name not in HEADER)
    details = []
    if missing:
        details.append(f"missing {', '.join(missing)}")
    if extra:
        details.append(f"{extra} unexpected column(s)")
    if not details:
        details.append("columns are repeated or out of order")
    return f"header must be exactly {','.join(HEADER)} ({'; '.join(details)})"


def _fields_reason(record: dict[str, Any]) -> str:
    """Why a JSON object has the wrong fields, naming only expected field names."""
    missing = [name for name in HEADER if name not in record]
    extra = sum(1 for name in record if name not in HEADER)
    details = []
    if missing:
        details.append(f"missing {', '.join(missing)}")
    if extra:
        details.append(f"{extra} unexpected field(s)")
    return f"object must have exactly the fields {', '.join(HEADER)} ({'; '.join(details)})"
