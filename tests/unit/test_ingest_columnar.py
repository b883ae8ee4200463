"""The columnar CSV ingest (node.store.bulk) stores, counts and refuses exactly as the row-by-row path."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from node.crypto.tokens import possession_key, possession_keys, subject_token, subject_tokens
from node.domain.catalogue import Catalogue, load_catalogue
from node.domain.idnumber import check_character, make
from node.store import bulk
from node.store.errors import IngestRejected
from node.store.ingest import ingest_file
from node.store.sqlite.facts import STORE_FILE, Store

KEY = bytes(range(32))
TODAY = dt.date(2024, 6, 30)
HEADER = "id_number,attribute,value,as_of,source"
SPECS = (("income.wage_monthly", "hrss", 1_500_000), ("deposit.balance_total", "bank:icbc", 50_000_000),
         ("social_insurance.contributing", "hrss", 1), ("real_estate.count", "natural_resources", 3))


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def _ids(n: int, region: str = "440305") -> list[str]:
    return [make(region, dt.date(1950, 1, 1) + dt.timedelta(days=i % 20_000), i // 20_000 + 1) for i in range(n)]


def _rows(ids: list[str], shift: int = 0) -> list[str]:
    return [f"{number},{attr},{(i * 7919 + shift) % (top + 1)},2024-05-31,{source}"
            for i, number in enumerate(ids) for attr, source, top in SPECS[: 2 + i % 3]]


def _write(path: Path, lines: list[str], *, newline: str = "\n", bom: bool = False) -> Path:
    path.write_bytes((("\ufeff" if bom else "") + newline.join([HEADER, *lines]) + newline).encode("utf-8"))
    return path


def _dump(data_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(data_dir / STORE_FILE)
    try:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608
                for table in ("meta", "subjects", "facts", "attributes")}
    finally:
        conn.close()


def _both(tmp_path: Path, catalogue: Catalogue, files: list[Path], prepare: list[Path] = ()) -> list[object]:  # type: ignore[assignment]
    """Ingest `files` in turn (after `prepare`) with and without the fast path; the reports, or the
    rejections, must match and so must the stores. Returns the columnar path's outcomes."""
    outcomes: dict[bool, list[object]] = {}
    dumps = {}
    for columnar in (True, False):
        data = tmp_path / f"store-{columnar}"
        with Store.open(data) as store:
            for path in prepare:
                ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY, columnar=False)
            seen: list[object] = []
            for path in files:
                before = _dump(data)
                try:
                    report = ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY,
                                         columnar=columnar)
                except IngestRejected as exc:
                    seen.append(("rejected", str(exc), exc.errors))
                    assert _dump(data) == before  # a rejected file leaves the store as it was
                else:
                    seen.append((report.rows, report.subjects, report.facts_written, report.possession_added))
        outcomes[columnar] = seen
        dumps[columnar] = _dump(data)
    assert outcomes[True] == outcomes[False]
    assert dumps[True] == dumps[False]
    return outcomes[True]


def test_a_plain_file_is_stored_as_the_row_path_stores_it(
        tmp_path: Path, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many blocks of plain rows, then a re-ingest with corrections, give the same rows, ids and counts."""
    monkeypatch.setattr(bulk, "BLOCK_CHARS", 4096)  # dozens of blocks
    ids = _ids(3000)
    x_id = "11010519491231002X"  # one person written three ways: one subject
    spelled = [f"{x_id.lower()},real_estate.count,1,2024-05-31,natural_resources",
               f"{x_id},real_estate.count,2,2024-04-30,natural_resources",
               f"  {x_id.lower()},income.wage_monthly,3,2024-04-30,hrss"]
    first = _write(tmp_path / "a.csv", [*spelled[:1], *_rows(ids), *spelled[1:]])
    again = _write(tmp_path / "b.csv", _rows(ids[::2] + _ids(500, "510104"), shift=3), newline="\r\n", bom=True)
    outcomes = _both(tmp_path, catalogue, [first, first, again])
    assert outcomes[0][:2] == (9003, 3001) and outcomes[1][2] == 0  # type: ignore[index]


def test_the_stored_tokens_are_the_subjects_tokens_and_possession_keys(tmp_path: Path, catalogue: Catalogue) -> None:
    """Each subject row holds subject_token and possession_key of its ID number, in first-appearance order."""
    ids = _ids(50)
    with Store.open(tmp_path / "data") as store:
        ingest_file(store, _write(tmp_path / "a.csv", _rows(ids)), linkage_key=KEY, catalogue=catalogue, today=TODAY)
    subjects = _dump(tmp_path / "data")["subjects"]
    assert subjects == [(i + 1, subject_token(KEY, n), possession_key(KEY, n)) for i, n in enumerate(ids)]
    assert subject_tokens(KEY, ids) == [s[1] for s in subjects]
    assert possession_keys(KEY, ids) == [s[2] for s in subjects]


def test_forms_the_fast_path_leaves_to_the_row_path_give_the_same_result(
        tmp_path: Path, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes, blank lines, lower-case x, padded IDs, a lone CR, a repeated key: same stores, reports and errors."""
    monkeypatch.setattr(bulk, "BLOCK_CHARS", 512)
    ids = _ids(40)
    rows = _rows(ids)
    x_id = "11010519491231002X"
    variants = {
        "quoted": [*rows[:30], f'"{ids[0]}",income.wage_monthly,5,2024-04-30,"hrss"', *rows[30:]],
        "blank": [*rows[:20], "", "", *rows[20:], ""],
        "x": [*rows, f"{x_id.lower()},real_estate.count,1,2024-05-31,natural_resources",
              f"{x_id},real_estate.count,2,2024-04-30,natural_resources"],
        "padded": [*rows, f" {ids[3]} ,income.wage_monthly,7,2024-03-31,hrss"],
        "lone_cr": [*rows[:10], rows[10] + "\r" + rows[11], *rows[12:]],
        "repeat": [*rows, rows[5]],
        "bad_late": [*rows, f"{ids[1]},income.wage_monthly,-1,2024-05-31,hrss"],
        "bad_id": [*rows, f"{ids[1][:17]}0,income.wage_monthly,1,2024-05-31,hrss"],
        "leading_zero": [*rows, f"{ids[2]},income.wage_monthly,007,2024-05-31,hrss"],
        "unknown_item": [*rows, f"{ids[2]},income.unknown,7,2024-05-31,hrss"],
        "future": [*rows, f"{ids[2]},income.wage_monthly,7,2030-05-31,hrss"],
        "id_in_source": [*rows, f"{ids[2]},income.wage_monthly,7,2024-05-31,{ids[4]}"],
        "six_fields": [*rows, f"{ids[2]},income.wage_monthly,7,2024-05-31,hrss,extra"],
    }
    files = [_write(tmp_path / f"{name}.csv", lines) for name, lines in variants.items()]
    files.append(tmp_path / "nul.csv")
    files[-1].write_bytes(f"{HEADER}\n{rows[0]}\n{rows[1]}\x00\n".encode())
    files.append(tmp_path / "bad_utf8.csv")
    files[-1].write_bytes(f"{HEADER}\n{rows[0]}\n".encode() + b"\xff\xfe\n")
    files.append(tmp_path / "header_only.csv")
    files[-1].write_text(HEADER + "\n", encoding="utf-8")
    outcomes = _both(tmp_path, catalogue, files, prepare=[_write(tmp_path / "old.csv", _rows(ids[:10], shift=1))])
    assert sum(1 for o in outcomes if o[0] == "rejected") == 11  # type: ignore[index]


def test_a_bad_last_row_leaves_the_store_as_it_was(
        tmp_path: Path, catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks already written by the fast path are undone when a later row is bad; one line names it."""
    monkeypatch.setattr(bulk, "BLOCK_CHARS", 4096)
    ids = _ids(1000)
    data = tmp_path / "data"
    with Store.open(data) as store:
        ingest_file(store, _write(tmp_path / "old.csv", _rows(ids[:100])), linkage_key=KEY, catalogue=catalogue,
                    today=TODAY)
        before = _dump(data)
        rows = _rows(ids, shift=5)
        path = _write(tmp_path / "new.csv", [*rows, f"{ids[0]},deposit.balance_total,1.5,2024-05-31,bank:icbc"])
        with pytest.raises(IngestRejected) as info:
            ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY)
        assert info.value.errors == [(len(rows) + 2, info.value.errors[0][1])]
        assert "deposit.balance_total" in info.value.errors[0][1] and "1.5" not in info.value.errors[0][1]
        assert _dump(data) == before
        # The writer's counters were undone with the rows: the next good ingest allocates the same ids.
        ingest_file(store, _write(tmp_path / "good.csv", rows), linkage_key=KEY, catalogue=catalogue, today=TODAY)
    with Store.open(tmp_path / "ref") as store:
        for name in ("old.csv", "good.csv"):
            ingest_file(store, tmp_path / name, linkage_key=KEY, catalogue=catalogue, today=TODAY, columnar=False)
    assert _dump(data) == _dump(tmp_path / "ref")


def test_subjects_are_resolved_a_batch_at_a_time(tmp_path: Path, catalogue: Catalogue) -> None:
    """A plain file of 2,000 subjects is written without a statement per subject or per row: into an
    empty store with no subject SELECT at all, into a filled one with one SELECT per 500 tokens."""
    path = _write(tmp_path / "a.csv", _rows(_ids(2000)))
    with Store.open(tmp_path / "data") as store:
        for expected_selects in (0, 4):
            statements: list[str] = []
            store._writer.set_trace_callback(statements.append)
            report = ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY)
            store._writer.set_trace_callback(None)
            assert report.subjects == 2000 and report.rows == 5999
            assert not [s for s in statements if "WHERE token = ?" in s]
            selects = [s for s in statements if s.startswith("SELECT token, id, possession FROM subjects")]
            assert len(selects) == expected_selects
            # executemany traces each row it runs; everything else is a handful of statements.
            assert sum(1 for s in statements if not s.startswith("INSERT INTO")) < 20
        assert report.facts_written == 0


def test_the_check_character_of_ascii_digits_is_the_weighted_sum() -> None:
    """check_character's byte-sum shortcut gives the ISO 7064 MOD 11-2 character of the digit-by-digit sum."""
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    for n in range(0, 10**17, 10**17 // 4999 + 7):
        digits = f"{n:017d}"
        assert check_character(digits) == "10X98765432"[sum(int(c) * w for c, w in zip(digits, weights, strict=True)) % 11]
    assert check_character("１" * 17) == check_character("1" * 17)  # other digits still take the general path


_SCHEMA_1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE subjects(id INTEGER PRIMARY KEY, token BLOB NOT NULL UNIQUE CHECK (length(token) = 32));
CREATE TABLE facts(subject_id INTEGER NOT NULL REFERENCES subjects(id), attribute TEXT NOT NULL,
    as_of TEXT NOT NULL, source TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (subject_id, attribute, as_of, source)) WITHOUT ROWID;
CREATE TABLE attributes(code TEXT PRIMARY KEY, aggregate TEXT NOT NULL CHECK (aggregate IN ('sum', 'max'))) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
"""


def test_subjects_from_schema_1_get_their_possession_keys_as_on_the_row_path(
        tmp_path: Path, catalogue: Catalogue) -> None:
    """Re-ingesting into an upgraded schema-1 store fills the same possession keys and counts them the same."""
    ids = _ids(1200)
    path = _write(tmp_path / "a.csv", _rows(ids))
    outcomes = {}
    for columnar in (True, False):
        data = tmp_path / f"v1-{columnar}"
        data.mkdir()
        with sqlite3.connect(data / STORE_FILE) as db:
            db.executescript(_SCHEMA_1)
            db.executemany("INSERT INTO subjects(id, token) VALUES (?, ?)",
                           [(i + 1, subject_token(KEY, n)) for i, n in enumerate(ids[::3])])
        db.close()
        with Store.open(data) as store:
            report = ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY, columnar=columnar)
            assert store.missing_possession() == 0
        outcomes[columnar] = ((report.rows, report.subjects, report.facts_written, report.possession_added),
                              _dump(data))
    assert outcomes[True] == outcomes[False]
    assert outcomes[True][0][3] == 400
