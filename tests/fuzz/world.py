"""The fuzz harnesses' federation: real keys, store, services, built once per process and the same every time."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from node.crypto import masks, pki, signing, tokens
from node.domain import idnumber
from node.domain.regions import province_uri
from node.coordinator.consents import ConsentRegistry
from node.member import Member
from node.service.consent import ReceiptGate, RevocationView
from node.service.household import HouseholdService
from node.service.possession import Unlocker
from node.service.verification import VerificationService
from node.store.sqlite import ledger as sqlite_ledger
from node.store.sqlite.facts import Store
from node.wire.v1 import household_pb2

#: The harnesses' clock (seconds): seeds carry issue and validity times around it (2026-11-18).
NOW_S = 1_795_000_000.0
NOW_MS = int(NOW_S * 1000)
TODAY = dt.date(2026, 11, 18)
#: The discovery epoch of NOW_S (default 7-day epochs): locators and discovery tokens of the seeds are for it.
EPOCH = int(NOW_S) // (7 * 24 * 3600)
#: Placeholder consent id in discovery seeds: the harness puts the id of the world's discovery consent there.
DISCOVERY_CONSENT = "c-fuzz-discovery"
KEY_PASSPHRASE = b"fuzz-world-passphrase-0001"
PROVINCES = ("44", "51")  # 44 holds the data and answers; 51 asks
HOLDER, REQUESTER = "44", "51"
WORKER = idnumber.make("510104", dt.date(1988, 5, 17), 371)
SPOUSE = idnumber.make("510104", dt.date(1990, 2, 3), 372)
FACTS = [
    (WORKER, "deposit.balance_total", 123456789, "2026-10-31", "bank:ICBC"),
    (WORKER, "income.wage_monthly", 567800, "2026-10-31", "hrss"),
    (SPOUSE, "income.wage_monthly", 300000, "2026-10-31", "hrss"),
    (SPOUSE, "real_estate.count", 1, "2026-09-30", "natural_resources"),
]


class AcceptAll:
    """Replay guard that remembers nothing: a corpus replays the same in any order and any number of times."""

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        return True


@contextlib.contextmanager
def deterministic_keys() -> Iterator[None]:
    """Every key `init_pki`/`issue_member` make comes from a counter, so seeds signed in one run verify in the next."""
    counter = itertools.count()

    def secret() -> bytes:
        return hashlib.sha256(b"hedui-fuzz-world/%d" % next(counter)).digest()

    saved = (ed25519.Ed25519PrivateKey.generate, x25519.X25519PrivateKey.generate, ec.generate_private_key,
             tokens.new_linkage_key)
    saved_now = pki._now
    # Certificates valid from a fixed day before NOW_S: evidence is checked at its signed time (NOW_MS).
    pki._now = lambda: dt.datetime.fromtimestamp(NOW_S - 86400, dt.UTC)  # type: ignore[assignment]
    ed25519.Ed25519PrivateKey.generate = staticmethod(lambda: ed25519.Ed25519PrivateKey.from_private_bytes(secret()))  # type: ignore[method-assign]
    x25519.X25519PrivateKey.generate = staticmethod(lambda: x25519.X25519PrivateKey.from_private_bytes(secret()))  # type: ignore[method-assign]
    ec.generate_private_key = lambda curve, backend=None: ec.derive_private_key(  # type: ignore[assignment]
        int.from_bytes(secret(), "big") >> 2, curve)
    tokens.new_linkage_key = secret  # type: ignore[assignment]
    try:
        yield
    finally:
        (ed25519.Ed25519PrivateKey.generate, x25519.X25519PrivateKey.generate, ec.generate_private_key,  # type: ignore[method-assign]
         tokens.new_linkage_key) = saved
        pki._now = saved_now  # type: ignore[assignment]


@dataclasses.dataclass
class World:
    """Members, keys and the holder's services the harnesses call."""

    root: Path
    members: dict[str, Member]
    store: Store
    ingest_store: Store
    verification: VerificationService
    household: HouseholdService
    unlocker: Unlocker
    gate: ReceiptGate
    seal_keys: dict[str, x25519.X25519PrivateKey]
    mask_publics: dict[str, bytes]
    registry: ConsentRegistry
    #: What the requester sent, for the targets that check what comes back (set by `seeded`).
    sent_query: bytes = b""
    holder_set: household_pb2.SignedHolderSet = dataclasses.field(default_factory=household_pb2.SignedHolderSet)

    @property
    def holder(self) -> Member:
        return self.members[HOLDER]

    def signer(self, who: str) -> signing.Signer:
        return self.members[who].signer

    def token(self, id_number: str) -> bytes:
        return tokens.subject_token(self.holder.linkage_key, id_number)

    def possession(self, id_number: str) -> bytes:
        return tokens.possession_key(self.holder.linkage_key, id_number)

    def tmp(self, name: str) -> Path:
        return self.root / "inputs" / name


_world: World | None = None
SENT_QUERY = Path(__file__).resolve().parent / "sent-query.bin"


def world() -> World:
    """Build the federation once per process in a temporary folder (removed at exit)."""
    global _world
    if _world is not None:
        return _world
    from node.testing.cluster import build_federation

    holder = tempfile.TemporaryDirectory(prefix="hedui-fuzz-")
    root = Path(holder.name)
    (root / "inputs").mkdir()
    data = root / "44.csv"
    data.write_text("id_number,attribute,value,as_of,source\n"
                    + "".join(",".join(map(str, r)) + "\n" for r in FACTS), encoding="utf-8")
    with deterministic_keys():
        fed = build_federation(root, PROVINCES, data={HOLDER: data})
    members = {code: fed.member(code) for code in PROVINCES}
    members["coordinator"] = Member.from_config(fed.coordinator_config)
    m = members[HOLDER]
    store = Store.open(m.cfg.data_dir)
    ingest_store = Store.open(root / "ingest")
    revocations = RevocationView(clock=lambda: NOW_S, synced_at=NOW_S, limits={b"": None})
    gate = ReceiptGate(m.verifier, revocations, clock=lambda: NOW_S)
    seal_keys = {code: pki.load_seal_keys(mm.cfg.seal_key, mm.cfg.seal_pub)[0] for code, mm in members.items()}
    common: dict[str, Any] = dict(province=HOLDER, store=store, catalogue=m.catalogue, policy=m.policy,
                                  verifier=m.verifier, limits=m.cfg.limits, consent=gate, replay=AcceptAll(),
                                  clock=lambda: NOW_S)
    coordinator = members["coordinator"]
    registry = ConsentRegistry(sqlite_ledger.open_ledger(root / "ledger"), signer=coordinator.signer,
                               verifier=coordinator.verifier, catalogue=coordinator.catalogue,
                               policy=coordinator.policy, clock=lambda: NOW_S)
    w = World(
        root=root, members=members, store=store, ingest_store=ingest_store,
        verification=VerificationService(**common),
        household=HouseholdService(**common, mask_key=masks.mask_key_from_seal_key(seal_keys[HOLDER])),
        unlocker=Unlocker(store, province_uri(HOLDER), max_subjects=m.cfg.limits.max_subjects),
        gate=gate, seal_keys=seal_keys,
        mask_publics={code: masks.public_bytes(masks.mask_key_from_seal_key(k)) for code, k in seal_keys.items()
                      if code != "coordinator"},
        registry=registry,
    )
    w._holder = holder  # type: ignore[attr-defined]  # keeps the folder until the process ends
    _world = w
    from tests.fuzz.seeds import contribution_seed, query_body  # the seeds are made in this world

    # The query the `answer` seeds answer: kept as made, since its receipt carries the certificate of the run that made it.
    w.sent_query = SENT_QUERY.read_bytes() if SENT_QUERY.exists() else query_body().SerializeToString()
    w.holder_set = contribution_seed().holder_set
    return w
