"""The consent ledger's identity and head file, and how a holder's view follows a ledger that goes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import ErrorCode, Refusal
from node.service.consent import LedgerHead, RevocationView
from node.store import ledger
from node.store.sqlite import ledger as sqlite_ledger
from node.store.sqlite.chain import HashChain

L1, L2 = b"l" * 16, b"m" * 16
E1, E2 = b"1" * 16, b"2" * 16


def code(view: RevocationView, epoch: bytes, index: int) -> ErrorCode | None:
    try:
        view.check("c-x", epoch, index)
    except Refusal as refusal:
        return refusal.code
    return None


def synced(head: LedgerHead) -> RevocationView:
    view = RevocationView(clock=lambda: 0.0)
    view.apply([], head)
    return view


def test_head_file_keeps_the_highest_head_and_survives_a_torn_slot(tmp_path: Path) -> None:
    """advance never lowers the head, reset does, and a damaged slot falls back to the previous head."""
    heads = sqlite_ledger.HeadFile(tmp_path / sqlite_ledger.HEAD_FILE)
    with HashChain(tmp_path / "l.sqlite", table="ledger") as chain:
        entries = [chain.append("k", str(i), b"") for i in range(3)]
    heads.advance(entries[1])
    heads.advance(entries[2])
    heads.advance(entries[0])
    assert heads.read() == sqlite_ledger.Head(3, entries[2].hash)
    raw = bytearray(heads.path.read_bytes())
    newest = 0 if b'"index": 3' in raw[:256] else 256
    raw[newest + 10] ^= 0xFF
    heads.path.write_bytes(bytes(raw))
    assert heads.read() == sqlite_ledger.Head(2, entries[1].hash)
    heads.reset(sqlite_ledger.Head(1, entries[0].hash))
    assert heads.read() == sqlite_ledger.Head(1, entries[0].hash)


def test_a_new_ledger_gets_an_identity_and_an_older_one_is_upgraded(tmp_path: Path) -> None:
    """open_ledger writes entry 1 (created) on a new ledger, and an identity naming the legacy entries on an old one."""
    with sqlite_ledger.open_ledger(tmp_path / "new") as chain:
        identity = ledger.read_identity(chain)
        assert identity is not None and identity.index == 1 and identity.reason == "created" and identity.lineage == ()
    assert sqlite_ledger.HeadFile(tmp_path / "new" / sqlite_ledger.HEAD_FILE).read() is not None
    (tmp_path / "old").mkdir()
    with HashChain(tmp_path / "old" / sqlite_ledger.LEDGER_FILE, table=ledger.TABLE) as chain:
        for i in range(4):
            chain.append(ledger.GRANT, f"c-{i}", b"")
    with sqlite_ledger.open_ledger(tmp_path / "old") as chain:
        identity = ledger.read_identity(chain)
        assert identity is not None and identity.reason == "upgraded" and identity.lineage == ((ledger.LEGACY_EPOCH, 4),)


def test_a_ledger_behind_its_head_file_or_without_one_is_not_opened(tmp_path: Path) -> None:
    """The coordinator refuses a ledger that lacks its committed head, or whose head file is gone."""
    with sqlite_ledger.open_ledger(tmp_path) as chain:
        chain.append(ledger.GRANT, "c-1", b"")
    heads = sqlite_ledger.HeadFile(tmp_path / sqlite_ledger.HEAD_FILE)
    heads.reset(sqlite_ledger.Head(9, b"\x01" * 32))
    with pytest.raises(ledger.LedgerTruncated, match="entries 3 to 9 are lost"):
        sqlite_ledger.open_ledger(tmp_path)
    heads.path.unlink()
    with pytest.raises(ledger.LedgerTruncated, match="missing"):
        sqlite_ledger.open_ledger(tmp_path)
    identity, kept = sqlite_ledger.new_epoch(tmp_path)
    assert kept == 2 and identity.lineage[-1][1] == 2
    sqlite_ledger.open_ledger(tmp_path).close()


def test_view_after_a_restore_refuses_what_the_ledger_lost_and_accepts_the_rest() -> None:
    """A new epoch keeping entries up to 5 of the old: old receipts up to 5 pass, above are refused, new ones pass."""
    view = synced(LedgerHead(L1, E1, 8, b"a" * 32))
    change = view.apply([], LedgerHead(L1, E2, 7, b"b" * 32, ((E1, 5),)))
    assert change is not None and (change.kind, change.kept_index, change.alert) == ("restored", 5, True)
    assert code(view, E1, 5) is None and code(view, E1, 6) is ErrorCode.CONSENT_INVALID
    assert code(view, E2, 7) is None and code(view, E2, 99) is None
    assert code(view, b"3" * 16, 1) is ErrorCode.UNAVAILABLE  # an epoch not seen yet


def test_view_fails_closed_on_a_rollback_in_the_same_epoch_or_another_ledger() -> None:
    """A shorter ledger in the same epoch pins it; a different history or another ledger id drops the old epoch."""
    view = synced(LedgerHead(L1, E1, 8, b"a" * 32))
    change = view.apply([], LedgerHead(L1, E1, 5, b"c" * 32), after_hash=b"")  # no entry at our old head
    assert change is not None and change.kind == "rolled_back" and view.cursor == 0
    assert code(view, E1, 5) is None and code(view, E1, 6) is ErrorCode.CONSENT_INVALID
    view = synced(LedgerHead(L1, E1, 8, b"a" * 32))
    change = view.apply([], LedgerHead(L1, E1, 9, b"d" * 32), after_hash=b"x" * 32)
    assert change is not None and change.kind == "rolled_back" and code(view, E1, 1) is ErrorCode.CONSENT_INVALID
    view = synced(LedgerHead(L1, E1, 8, b"a" * 32))
    change = view.apply([], LedgerHead(L2, E2, 3, b"e" * 32))
    assert change is not None and change.kind == "replaced" and code(view, E1, 1) is ErrorCode.CONSENT_INVALID


def test_view_keeps_revocations_and_accepts_legacy_receipts_while_the_ledger_holds_them() -> None:
    """A revocation is never undone by a new epoch; receipts without an epoch pass while the lineage holds them."""
    view = synced(LedgerHead(L1, E1, 8, b"a" * 32, ((ledger.LEGACY_EPOCH, 4),)))
    assert code(view, ledger.LEGACY_EPOCH, 0) is None
    assert view.apply([(8, "c-gone", True)], LedgerHead(L1, E1, 8, b"a" * 32), after_hash=b"a" * 32) is None
    change = view.apply([], LedgerHead(L1, E2, 9, b"b" * 32, ((ledger.LEGACY_EPOCH, 4), (E1, 8))), after_hash=b"a" * 32)
    assert change is not None and not change.alert
    assert code(view, E1, 8) is None and code(view, ledger.LEGACY_EPOCH, 0) is None
    with pytest.raises(Refusal) as err:
        view.check("c-gone", E1, 2)
    assert err.value.code is ErrorCode.CONSENT_REVOKED
