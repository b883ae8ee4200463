"""Unit tests of departmental data ingest (CSV and JSONL) into the store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.crypto.tokens import subject_token
from node.domain.catalogue import Catalogue, load_catalogue
from node.domain.idnumber import make
from node.store.errors import IngestRejected
from node.store.ingest import ingest_file
from node.store.sqlite.facts import STORE_FILE, Fact, Store

KEY = bytes(range(32))
TODAY = dt.date(2024, 6, 30)
HEADER = "id_number,attribute,value,as_of,source"
P1 = make("510104", dt.date(1988, 5, 17), 371)  # check character is a digit
P2 = make("440305", dt.date(1990, 2, 3), 372)
CANARY = 987654321  # a planted deposit value in fen
X_ID = "11010519491231002X"  # check character X


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data") as s:
        yield s


def _csv(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def _ingest(store: Store, path: Path, catalogue: Catalogue):  # type: ignore[no-untyped-def]
    return ingest_file(store, path, linkage_key=KEY, catalogue=catalogue, today=TODAY)


def _rejected(store: Store, path: Path, catalogue: Catalogue) -> list[tuple[int, str]]:
    with pytest.raises(IngestRejected) as info:
        _ingest(store, path, catalogue)
    return info.value.errors


GOOD = [
    f"{P1},deposit.balance_total,{CANARY},2024-05-31,bank:icbc",
    f"{P1},deposit.balance_total,1000,2024-05-31,bank:abc",
    f"{P1},income.wage_monthly,567800,2024-05-31,hrss",
    f"{P2},marriage.married,1,2024-06-01,civil_affairs",
    f"{X_ID.lower()},real_estate.area_total,8950,2024-03-31,natural_resources",
]


def test_good_csv_is_stored(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A valid CSV is stored under subject tokens and reported row by row."""
    report = _ingest(store, _csv(tmp_path / "a.csv", *GOOD), catalogue)
    assert (report.rows, report.subjects, report.facts_written) == (5, 3, 5)
    assert report.seconds >= 0
    t1, t2, tx = (subject_token(KEY, n) for n in (P1, P2, X_ID))
    facts = store.lookup([t1, t2, tx], ["deposit.balance_total", "marriage.married",
                                        "real_estate.area_total"])  # fmt: skip
    assert facts == {
        (0, "deposit.balance_total"): Fact(CANARY + 1000, "2024-05-31"),
        (1, "marriage.married"): Fact(1, "2024-06-01"),
        (2, "real_estate.area_total"): Fact(8950, "2024-03-31"),
    }


def test_good_jsonl_is_stored(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A valid JSONL file (integer or string values, blank lines) is stored like a CSV."""
    path = tmp_path / "a.jsonl"
    records = [
        {"id_number": P1, "attribute": "vehicle.count", "value": 2, "as_of": "2024-05-31",
         "source": "mps"},
        {"id_number": P2, "attribute": "expense.medical_12m", "value": "3500000",
         "as_of": "2024-05-31", "source": "health_insurance"},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    report = _ingest(store, path, catalogue)
    assert (report.rows, report.subjects, report.facts_written) == (2, 2, 2)
    t2 = subject_token(KEY, P2)
    assert store.lookup([t2], ["expense.medical_12m"])[(0, "expense.medical_12m")].value == 3500000


def test_ndjson_extension_is_jsonl(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """Files ending .ndjson are read as JSON lines."""
    path = tmp_path / "a.ndjson"
    path.write_text(json.dumps({"id_number": P1, "attribute": "vehicle.count", "value": 1,
                                "as_of": "2024-05-31", "source": "mps"}) + "\n")  # fmt: skip
    assert _ingest(store, path, catalogue).facts_written == 1


def test_reingest_does_not_duplicate(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """Ingesting the same file twice writes nothing the second time and adds no facts."""
    path = _csv(tmp_path / "a.csv", *GOOD)
    _ingest(store, path, catalogue)
    before = store.counts()
    again = _ingest(store, path, catalogue)
    assert again.rows == 5 and again.facts_written == 0
    assert store.counts() == before == {"subjects": 3, "facts": 5}


def test_changed_value_is_a_correction(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A new value for the same (subject, attribute, as_of, source) replaces the old one."""
    _ingest(store, _csv(tmp_path / "a.csv", f"{P1},vehicle.count,1,2024-05-31,mps"), catalogue)
    report = _ingest(store, _csv(tmp_path / "b.csv", f"{P1},vehicle.count,2,2024-05-31,mps"),
                     catalogue)  # fmt: skip
    assert report.facts_written == 1
    assert store.counts()["facts"] == 1
    assert store.lookup([subject_token(KEY, P1)], ["vehicle.count"])[(0, "vehicle.count")].value == 2


BAD_LINES = [
    GOOD[0],                                                          # 2 good
    f"{P1[:17]}{'0' if P1[17] != '0' else '1'},vehicle.count,1,2024-05-31,mps",  # 3 checksum
    f"{P1},deposit.balanse,1,2024-05-31,bank",                        # 4 unknown attribute
    f"{P1},deposit.balance_total,12.50,2024-05-31,bank",              # 5 float money
    f"{P1},marriage.married,2,2024-05-31,civil",                      # 6 boolean 2
    f"{P1},vehicle.count,1,2024-02-30,mps",                           # 7 impossible date
    f"{P1},vehicle.count,1,2024-07-01,mps",                           # 8 future date
    f"{P1},vehicle.count,1,31/05/2024,mps",                           # 9 not ISO
    f"{P1},vehicle.count,1,2024-05-31,",                              # 10 empty source
    f"{P1},vehicle.count,1,2024-05-31,{'s' * 65}",                    # 11 long source
    f"{P1},vehicle.count,1,2024-05-31,mps\tx",                        # 12 control char
    f"{P1},vehicle.count,1,2024-05-31",                               # 13 column count
    GOOD[0],                                                          # 14 repeats line 2
    f"99{P1[2:17]}{P1[17]},vehicle.count,1,2024-05-31,mps",           # 15 unknown province
    f"{P1},vehicle.count,-1,2024-05-31,mps",                          # 16 negative
]  # fmt: skip


def test_bad_file_rejected_whole(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A file with bad rows is rejected whole, naming every bad line, and stores nothing."""
    _ingest(store, _csv(tmp_path / "ok.csv", GOOD[3]), catalogue)
    before = store.counts()
    errors = _rejected(store, _csv(tmp_path / "bad.csv", *BAD_LINES), catalogue)
    assert [line for line, _ in errors] == list(range(3, 17))
    reasons = dict(errors)
    assert "check character" in reasons[3]
    assert "deposit.balanse" in reasons[4] and "catalogue" in reasons[4]
    assert "plain digits" in reasons[5]
    assert "0 or 1" in reasons[6]
    assert "calendar date" in reasons[7]
    assert "future" in reasons[8]
    assert "YYYY-MM-DD" in reasons[9]
    assert "source is empty" in reasons[10]
    assert "longer than 64" in reasons[11]
    assert "control" in reasons[12]
    assert "4 fields, expected 5" in reasons[13]
    assert "line 2" in reasons[14]
    assert "province" in reasons[15]
    assert store.counts() == before
    assert store.holds([subject_token(KEY, P1)]) == [False]


def test_reasons_never_echo_id_or_value(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """No rejection reason or message contains an ID number, part of one, or a value."""
    path = _csv(tmp_path / "bad.csv", *BAD_LINES)
    with pytest.raises(IngestRejected) as info:
        _ingest(store, path, catalogue)
    text = str(info.value) + "\n".join(reason for _, reason in info.value.errors)
    for secret in (P1, P1[:17], P1[6:14], str(CANARY), "12.50", "s" * 65):
        assert secret not in text


def test_swapped_columns_do_not_leak(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A row with the ID number in the attribute column is rejected without echoing it."""
    errors = _rejected(store, _csv(tmp_path / "s.csv", f"deposit.balance_total,{P1},1,2024-05-31,b"),
                       catalogue)  # fmt: skip
    assert len(errors) == 1 and P1 not in errors[0][1]


def test_header_without_data_echo(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A file whose first line is data (no header) is rejected without echoing that line."""
    path = tmp_path / "noheader.csv"
    path.write_text(GOOD[0] + "\n", encoding="utf-8")
    errors = _rejected(store, path, catalogue)
    assert errors[0][0] == 1 and "header must be exactly" in errors[0][1]
    assert P1 not in errors[0][1] and str(CANARY) not in errors[0][1]


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("id_number,attribute,value,as_of", "missing source"),
        ("id_number,attribute,value,as_of,source,comment", "1 unexpected column"),
        ("id_number,value,attribute,as_of,source", "order"),
        ("ID_NUMBER,attribute,value,as_of,source", "missing id_number"),
    ],
)
def test_wrong_header_rejected(
    store: Store, tmp_path: Path, catalogue: Catalogue, header: str, words: str
) -> None:
    """Missing, extra, reordered or differently spelt header columns reject the file."""
    errors = _rejected(store, _csv(tmp_path / "h.csv", GOOD[2], header=header), catalogue)
    assert errors[0][0] == 1 and words in errors[0][1]


def test_empty_and_header_only_files(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """An empty file and a header-only file are rejected with clear reasons."""
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert _rejected(store, empty, catalogue) == [(1, "file is empty")]
    only = tmp_path / "only.csv"
    only.write_text(HEADER + "\n")
    assert _rejected(store, only, catalogue) == [(1, "file has a header but no data rows")]


def test_missing_file_rejected(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A path that does not exist is rejected with a message naming the path."""
    with pytest.raises(IngestRejected, match="not found") as info:
        _ingest(store, tmp_path / "nope.csv", catalogue)
    assert info.value.errors == [(0, "file not found")]
    assert "nope.csv" in str(info.value)


def test_undecodable_utf8_rejected(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """Invalid UTF-8 is reported with its line number, along with other bad lines."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + "\n" + GOOD[2] + "\n").encode()
        + f"{P2},vehicle.count,1,2024-05-31,b\xe9nk\n".encode("latin-1")
        + (GOOD[3].replace("2024-06-01", "2024-13-01") + "\n").encode()
    )
    errors = _rejected(store, path, catalogue)
    assert errors[0] == (3, "line is not valid UTF-8")
    assert errors[1][0] == 4 and "calendar date" in errors[1][1]
    assert store.counts() == {"subjects": 0, "facts": 0}


def test_utf8_bom_and_crlf_accepted(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """A UTF-8 byte-order mark and CRLF line ends (as spreadsheets write) are accepted."""
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *GOOD]).encode() + b"\r\n")
    assert _ingest(store, path, catalogue).facts_written == 5


def test_bad_jsonl_lines(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """Bad JSONL lines (not JSON, not an object, wrong fields, float or bool value) are listed."""
    base = {"id_number": P1, "attribute": "vehicle.count", "value": 1, "as_of": "2024-05-31",
            "source": "mps"}  # fmt: skip
    lines = [
        json.dumps(base),
        "{not json",
        "[1, 2]",
        json.dumps({k: v for k, v in base.items() if k != "source"}),
        json.dumps(base | {"value": 1.0}),
        json.dumps(base | {"value": True}),
        json.dumps(base | {"extra": 1}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors = _rejected(store, path, catalogue)
    assert [line for line, _ in errors] == [2, 3, 4, 5, 6, 7]
    assert "missing source" in errors[2][1]
    assert "JSON integer" in errors[3][1] and "JSON integer" in errors[4][1]
    assert store.counts() == {"subjects": 0, "facts": 0}


def test_raw_id_never_in_sqlite_files(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """The bytes of store.sqlite, -wal and -shm never contain a raw ID number, even after rejects."""
    _ingest(store, _csv(tmp_path / "a.csv", *GOOD), catalogue)
    with pytest.raises(IngestRejected):
        _ingest(store, _csv(tmp_path / "bad.csv", *BAD_LINES), catalogue)
    store.lookup([subject_token(KEY, P1)], ["deposit.balance_total"])  # readers open too
    files = [store.path.with_name(STORE_FILE + suffix) for suffix in ("", "-wal", "-shm")]
    blobs = [f.read_bytes() for f in files if f.exists()]
    assert blobs and files[0].exists()
    for number in (P1, P2, X_ID, X_ID.lower()):
        for blob in blobs:
            assert number.encode() not in blob
            assert number[:17].encode() not in blob
            assert number.encode("utf-16-le") not in blob


def test_aggregates_come_from_catalogue(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    """Same-date sources combine by the catalogue item's aggregate (sum vs max)."""
    _ingest(store, _csv(tmp_path / "a.csv",
                        f"{P1},vehicle.count,1,2024-05-31,mps",
                        f"{P1},vehicle.count,2,2024-05-31,agri_machinery",
                        f"{P1},hukou.household_size,3,2024-05-31,mps",
                        f"{P1},hukou.household_size,4,2024-05-31,civil"), catalogue)  # fmt: skip
    facts = store.lookup([subject_token(KEY, P1)], ["vehicle.count", "hukou.household_size"])
    assert facts[(0, "vehicle.count")].value == 3
    assert facts[(0, "hukou.household_size")].value == 4
