"""The storage contracts: what the service, server, coordinator and CLI layers may rely on, whatever the backend.

Every backend (SQLite under node/store/sqlite, PostgreSQL under node/store/postgres) implements
these `typing.Protocol`s; `node.store.factory.open_storage(cfg)` opens the one a config names,
and tests/contract runs one suite against each. The contracts, common to all:

- Errors: a backend raises `node.store.errors.StoreError` when it cannot open, read or write
  (message public: never an ID number, a token or a data value), `StoreCorrupt` (a StoreError)
  when what it holds is not what it should be (wrong schema, damaged file). Bad arguments
  raise ValueError / TypeError before anything is written. Nothing else escapes (no
  sqlite3.Error, no psycopg.Error).
- Durability: a write that returned is committed and survives a crash of the process and of
  the machine (SQLite: WAL with synchronous=FULL for chains; PostgreSQL: a committed
  transaction with synchronous_commit on). A write that raised left nothing behind.
- Thread-safety: every object is safe to use from many threads at once; several processes
  (and, for a server backend, several hosts) may open the same storage at once.
- close() is idempotent; using an object after close() raises StoreError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from node.store.chainformat import GENESIS, Entry, VerifyReport

if TYPE_CHECKING:
    from node.store.audit import SignedCheckpoint

__all__ = [
    "GENESIS", "Chain", "ChainSnapshot", "ChangeWatch", "CheckpointStorage", "Entry", "Fact", "FactStore",
    "FactWriter", "NonceStore", "PrefixRemoval", "PrefixView", "Storage", "VerifyReport",
    "Lease", "LocatorSet", "LocatorStore", "ProbeBudgets", "SharedDocument",
]  # fmt: skip

#: (index, hash): a chain head, or an anchor (first retained index, its prev_hash).
Link = tuple[int, bytes]
#: One item to append: (kind, key, payload).
Item = tuple[str, str, bytes]


class _Closeable(Protocol):
    def close(self) -> None:
        """Release every connection; idempotent; the object cannot be used afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """close()."""
        ...


# -- the hash chain ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRemoval:
    """What `Chain.remove_prefix` did: the marker entry it appended, the new anchor, how many entries went."""

    marker: Entry
    anchor: Link
    removed: int


class PrefixView(Protocol):
    """Read access inside `Chain.remove_prefix`'s transaction: nobody can append or remove meanwhile."""

    @property
    def head(self) -> Link:
        """(index, hash) of the last entry; (0, GENESIS) when empty."""
        ...

    @property
    def anchor(self) -> Link:
        """The chain's anchor as recorded now (see `Chain.anchor`)."""
        ...

    def entry(self, idx: int) -> Entry | None:
        """The entry at `idx`, or None."""
        ...

    def first_since(self, at_ms: int) -> int | None:
        """The smallest index of an entry with at_ms >= `at_ms`, or None if there is none."""
        ...

    def count_before(self, idx: int) -> int:
        """How many entries have an index below `idx`."""
        ...

    def anchor_for(self, keep: int) -> Link:
        """The anchor removing every entry below `keep` would record: (keep, prev_hash of entry `keep`),
        or (keep, head hash) when `keep` is head + 1 (the marker itself becomes the first entry)."""
        ...


class ChainSnapshot(Protocol):
    """One consistent read of a chain: its anchor and its entries as of one instant."""

    @property
    def anchor(self) -> Link | None:
        """The anchor as of the snapshot; None when the recorded anchor is unreadable (tampered)."""
        ...

    def entries(self) -> Iterator[Entry]:
        """Every entry held, in index order, as of the snapshot (rows as stored: a field tampered
        to a value of the wrong type is passed on as it is, for the verifier to catch)."""
        ...


@runtime_checkable
class Chain(_Closeable, Protocol):
    """An append-only, hash-chained log: the consent ledger, every member's audit log, the checkpoint book.

    Entries are numbered 1, 2, ... with no gap; each names the hash of the one before
    (GENESIS for entry 1) and is hashed with the table name in the version-1 encoding of
    node.store.chainformat, so a chain verifies the same in any backend (and SQLite files written
    before this interface verify unchanged).

    Ordering and atomicity: appends are linear across threads, processes and hosts — every
    append reads the head and writes the entries after it in one transaction, serialised
    with every other writer of the same chain; an `append_many` / `append_next` is all or
    nothing. Readers never see a half-written batch.

    Guards: the backend refuses, below this API, an UPDATE, a DELETE and an INSERT that does
    not continue the head (SQLite triggers; PostgreSQL triggers). The hash chain is what
    detects tampering; the guards only stop accidents made through SQL. The one removal
    allowed is `remove_prefix`, done by the backend in the same transaction as its marker
    entry.
    """

    @property
    def table(self) -> str:
        """The chain's name (a lowercase SQL identifier); it is hashed into every entry."""
        ...

    @property
    def restored_guards(self) -> tuple[str, ...]:
        """Names of guards that were missing when this object opened the chain and were re-installed."""
        ...

    @property
    def location(self) -> str:
        """Where the chain lives, for messages (a file path, or a URL without its password)."""
        ...

    # -- writes: each durable when it returns (StoreError if not; then nothing was written) --

    def append(self, kind: str, key: str, payload: bytes, *, at_ms: int | None = None) -> Entry:
        """Append one entry durably and return it (at_ms: now by default)."""
        ...

    def append_many(self, items: Sequence[Item], *, at_ms: int | None = None) -> list[Entry]:
        """Append several entries in one transaction (all or none); they share one at_ms. [] for no items."""
        ...

    def append_next(self, build: Callable[[Link], Sequence[Item]], *, at_ms: int | None = None) -> list[Entry]:
        """Append the entries `build(head)` returns, in one transaction that holds the chain's write lock.

        `head` is the (index, hash) the entries follow, read inside that transaction, so `build`
        may write the index its entries will get into their payloads (or return [] to append
        nothing) and no other thread, process or host can append in between. An exception from
        `build` aborts the transaction and propagates.
        """
        ...

    def remove_prefix(self, plan: Callable[[PrefixView], tuple[int, Item] | None], *,
                      at_ms: int | None = None) -> PrefixRemoval | None:
        """Atomically append a marker entry and remove every entry before an index; record the new anchor.

        In one transaction holding the chain's write lock: `plan(view)` returns (keep, marker)
        or None (then nothing changes and None is returned). The backend appends `marker`
        after the head, records the anchor `view.anchor_for(keep)` and deletes every entry with
        an index below `keep` — all or nothing. ValueError (nothing changed) unless
        `view.anchor[0] < keep <= head + 1`: the marker is never removed, and at least one entry
        is. An exception from `plan` aborts and propagates. Removed content does not linger in
        the backend's files (SQLite: secure_delete and a WAL checkpoint).
        """
        ...

    # -- reads --------------------------------------------------------------------------------

    def head(self) -> Link:
        """(index, hash) of the last entry; (0, GENESIS) when the chain is empty."""
        ...

    def anchor(self) -> Link:
        """(first retained index, its prev_hash): (1, GENESIS) until `remove_prefix` first ran.

        StoreCorrupt when the recorded anchor is unreadable.
        """
        ...

    def count(self) -> int:
        """The number of entries held (head()[0] - anchor()[0] + 1 unless rows were removed behind our back)."""
        ...

    def entry(self, idx: int) -> Entry | None:
        """The entry at index `idx`, or None."""
        ...

    def latest(self, key: str) -> Entry | None:
        """The last entry with this key, or None."""
        ...

    def entries(self, *, after: int = 0, key: str | None = None, since_ms: int | None = None,
                limit: int | None = None) -> Iterator[Entry]:
        """Entries with idx > after (and the given key, and at_ms >= since_ms) in index order, streamed.

        A half-consumed iterator does not block writers nor pin other reads; ValueError for limit < 0.
        """
        ...

    def snapshot(self) -> AbstractContextManager[ChainSnapshot]:
        """A consistent read of (anchor, entries) for verification: both as of one instant, however
        many appends and prefix removals happen while it is open."""
        ...

    def verify(self, expect_head: Link | None = None) -> VerifyReport:
        """Recompute every hash from genesis, streaming; stop at the first problem.

        Catches edited, deleted, inserted and reordered entries. A deleted tail leaves a valid
        shorter chain: pass `expect_head` (a head recorded earlier, e.g. a signed checkpoint)
        to check that entry is still present and unchanged. (A chain whose prefix was removed
        is verified from its anchor by node.store.audit, through `snapshot`.)
        """
        ...

    def missing_guards(self) -> tuple[str, ...]:
        """Names of the append-only guards absent from the backend (empty when intact)."""
        ...


# -- replay protection ------------------------------------------------------------------------


@runtime_checkable
class NonceStore(_Closeable, Protocol):
    """Seen (requester, nonce) pairs, remembered for at least twice the clock window (docs/SECURITY.md §4.4).

    One row per (requester, nonce). Recording is insert-or-refuse, atomic across threads,
    processes and hosts sharing the store: of any number of concurrent `remember` calls with
    the same pair, exactly one returns True. A pair recorded is never forgotten while its
    issue time is within twice `window_ms` of now, and a recorded pair survives a restart.
    """

    @property
    def window_ms(self) -> int:
        """The clock window (ms); pairs older than twice it may be forgotten."""
        ...

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        """Record a nonce; False when this requester already used it."""
        ...

    def remember_many(self, nonces: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        """Record many (requester, nonce, issued_at_ms) atomically (all rows or none); per nonce, False
        when already used (before, or earlier in `nonces`). One row per nonce, as `remember` writes."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group this thread's `remember`/`remember_many` calls into one transaction (a batch of queries).

        Duplicates are still seen at once (inside it, and by other stores: the rows are locked
        or written as they are recorded); other threads' calls wait for its end. Committed when
        the block ends, even by an exception (a nonce once refused or accepted stays spent).
        """
        ...


# -- the fact store ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """The value of one attribute of one subject, and the as-of date it describes."""

    value: int
    as_of: str


class ChangeWatch(Protocol):
    """Tells when anyone (this process, another, `hedui data ingest`) committed a change to the fact store."""

    def version(self) -> int:
        """A number that changes when a change is committed (comparable only with this watch's own readings)."""
        ...

    def close(self) -> None: ...


class FactWriter(Protocol):
    """Writes inside one open fact-store transaction (see `FactStore.writer`)."""

    new_subjects: int  # subjects allocated in this transaction
    possession_added: int  # possession keys given to stored subjects that had none

    def subject_id(self, token: bytes, possession: bytes | None = None) -> int:
        """The id of the subject with this 32-byte token, allocating one when new (recording `possession`
        for a new subject, or for a known one that has none yet). StoreError for malformed sizes."""
        ...

    def subject_ids(self, tokens: Sequence[bytes], possessions: Sequence[bytes]) -> list[int]:
        """subject_id(token, possession) of each pair in order (same ids and counters), in bulk."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A part of the transaction undone, with this writer's counters, when the block raises."""
        ...

    def flush(self) -> None:
        """Write what is buffered (subjects allocated so far)."""
        ...

    def upsert_facts(self, rows: Iterable[tuple[int, str, str, str, int]]) -> int:
        """Upsert (subject_id, attribute, as_of, source, value) rows; the number inserted or changed.
        `rows` may call subject_id() while it is being consumed."""
        ...

    def set_aggregates(self, aggregates: Mapping[str, str]) -> None:
        """Record how each attribute's same-date facts combine ('sum' or 'max')."""
        ...


@runtime_checkable
class FactStore(_Closeable, Protocol):
    """The fact store of one province: facts keyed by subject tokens (never a raw ID number).

    A lookup answers with each attribute's latest as-of date; several sources on that date
    combine by the attribute's aggregate ('sum' or 'max'; 'max' when none is recorded). Reads
    see committed transactions only; one `writer()` runs at a time per store (across
    processes and hosts too), and readers keep seeing the previous state until it commits.
    """

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a file path, or a URL without its password)."""
        ...

    def lookup(self, tokens: Sequence[bytes], attributes: Sequence[str]) -> dict[tuple[int, str], Fact]:
        """(index into tokens, attribute) -> Fact at the latest as-of date; absent = no record."""
        ...

    def holds(self, tokens: Sequence[bytes]) -> list[bool]:
        """For each token, whether this store has any fact about that subject."""
        ...

    def possession_keys(self, tokens: Sequence[bytes]) -> dict[bytes, bytes]:
        """token -> possession key, for the tokens of subjects this store holds (and that have one)."""
        ...

    def missing_possession(self) -> int:
        """How many subjects have no possession key (a node refuses to serve while there are any)."""
        ...

    def held_tokens(self, batch: int = 10_000) -> Iterator[bytes]:
        """Every token `holds` answers True for, streamed from one read snapshot."""
        ...

    def held_count(self) -> int:
        """How many subjects this store has a fact about (the count `held_tokens` streams)."""
        ...

    def change_watch(self) -> ChangeWatch:
        """A watch telling when anyone committed a change (the caller closes it)."""
        ...

    def counts(self) -> dict[str, int]:
        """{"subjects": n, "facts": m} (for `hedui node status`)."""
        ...

    def newest_as_of(self) -> dict[str, str]:
        """Each attribute's newest as-of date held."""
        ...

    def check_integrity(self) -> None:
        """Check the backend's own integrity; StoreCorrupt when damaged or lacking its tables."""
        ...

    def writer(self) -> AbstractContextManager[FactWriter]:
        """One write transaction: committed when the block ends normally, rolled back (nothing
        written) when it raises. StoreError when it cannot start or commit."""
        ...


# -- the node's own checkpoints ---------------------------------------------------------------


@runtime_checkable
class CheckpointStorage(Protocol):
    """The append-only book of the audit checkpoints this node signed (its own copy of what it lodged).

    `append` is durable when it returns (StoreError if not). `read` returns what is held in
    the order appended: (position from 1, serialized AuditCheckpoint or None, problem or None)
    — a damaged record is reported with a problem, never dropped silently; a record cut short
    by a crash while it was appended is skipped.
    """

    def append(self, signed: SignedCheckpoint) -> None:
        """Keep one signed checkpoint durably."""
        ...

    def read(self) -> list[tuple[int, bytes | None, str | None]]:
        """Every checkpoint held: (position, blob or None, problem or None); [] when none."""
        ...

    def last_link(self) -> Link:
        """The `link` of the last readable checkpoint held (`NO_PREVIOUS` if none): what the next extends."""
        ...


# -- what a member opens ----------------------------------------------------------------------


@runtime_checkable
class Storage(_Closeable, Protocol):
    """Everything a member (province node or coordinator) stores, opened from its config.

    Each method opens a new object on the shared backend (connections or a pool); the caller
    may close it early, and `close()` closes whatever this Storage opened that is still open.
    A read-only Storage (`open_storage_readonly`, for the verify/export CLIs) opens existing
    data without creating, migrating or re-installing anything; its writes raise StoreError.
    """

    @property
    def url(self) -> str:
        """The `[store] url` it was opened from, without any password ("sqlite:" for the default)."""
        ...

    @property
    def readonly(self) -> bool: ...

    @property
    def threaded(self) -> bool:
        """True when every store call waits on the network and the stores may be used from any thread
        (PostgreSQL: pooled connections): servers then run store work off the event loop
        (node.server.store_threads). False for SQLite, whose connections stay on their thread."""
        ...

    def facts(self) -> FactStore:
        """The province's fact store (created empty if absent, unless read-only)."""
        ...

    def nonces(self, *, window_ms: int) -> NonceStore:
        """The replay guard's nonce store."""
        ...

    def chain(self, table: str, *, prunable: bool = False) -> Chain:
        """The chain `table` (created if absent, unless read-only; StoreError if read-only and absent).
        `prunable` chains keep an anchor so `remove_prefix` can run on them."""
        ...

    def ledger(self) -> Chain:
        """The coordinator's consent ledger (table "ledger"). Writable: refuses one that lost committed
        entries (node.store.ledger.LedgerTruncated) and gives a new one its identity entry.
        Read-only: opened as it is (StoreError if absent); the verifier checks it itself."""
        ...

    def audit(self) -> Chain:
        """The member's audit chain (table "audit", prunable)."""
        ...

    def checkpoints(self) -> CheckpointStorage:
        """The node's own signed audit checkpoints."""
        ...

    def lease(self, name: str) -> Lease:
        """The singleton role `name` (a lowercase word: "chain-lead", "locator"), not yet taken."""
        ...

    def document(self, name: str) -> SharedDocument:
        """The shared document `name` (a file name such as "directory.json"; SQLite: that file in data_dir)."""
        ...

    def locators(self) -> LocatorStore:
        """The coordinator's locator book rows (SQLite: locators.sqlite in data_dir)."""
        ...

    def probes(self, *, key: bytes) -> ProbeBudgets:
        """The node's probing ledger, cuts digested under `key` (SQLite: probes.sqlite in data_dir)."""
        ...

    def restored_guards(self) -> tuple[str, ...]:
        """Names of the guards the objects this Storage opened found missing and re-installed (each once)."""
        ...

    def missing_guards(self) -> dict[str, tuple[str, ...]]:
        """Guards missing now of the stores that are not chains ("checkpoints", "probes", "facts" -> names; only
        stores that exist and have guards, so {} on SQLite); reads only."""
        ...


# -- state the replicas of one member must agree on (issue 14: replicas on several hosts) ------------


class Lease(Protocol):
    """A named singleton role (e.g. the one process that lodges checkpoints): held by at most one process of
    every process and host sharing the storage, until it releases it or dies (SQLite: a `flock` in the data
    directory, so one holder per host; PostgreSQL: a session advisory lock, one holder per database)."""

    def held(self) -> bool:
        """Whether this process holds the lease: True if it does, or takes it now (never waits); False if another
        holds it. A holder that lost it (its database session ended) gets False until it takes it again."""
        ...

    def release(self) -> None:
        """Give the lease up (idempotent); another process may take it at once."""
        ...

    def close(self) -> None: ...


class SharedDocument(Protocol):
    """One small named document (bytes) every process and host sharing the storage reads and rewrites
    (the coordinator's directory announcements, its published standards)."""

    def changed(self) -> bytes | None:
        """The document when it changed since this object last read or wrote it (the first call: if it exists);
        None when it did not (cheap: a stat or one version row)."""
        ...

    def write(self, body: bytes) -> None:
        """Replace the document durably and atomically (readers see the old or the new body, whole)."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """Serialise a read-modify-write with every other holder of this document (any process or host)."""
        ...

    def close(self) -> None: ...


#: One locator shard row: (shard_bits, shard_count, filter).
ShardRow = tuple[int, int, bytes]


@dataclass(frozen=True)
class LocatorSet:
    """One province's locator in force for one epoch; `shards` None when the reader already holds that generation."""

    province: str
    epoch: int
    generation: int
    subject_count: int
    shards: tuple[ShardRow, ...] | None


class LocatorStore(Protocol):
    """The coordinator's locator shards (node.coordinator.locators keeps the checks; this keeps the rows)."""

    def put_shard(self, province: str, epoch: int, generation: int, shard: int, shard_bits: int,
                  subject_count: int, shard_count: int, filter_bytes: bytes, *, oldest_epoch: int,
                  max_pending: int) -> str:
        """In one transaction serialised with every other writer: "older" (below the generation in force,
        nothing kept), "in_force" (a shard of that generation again), "pending" (kept; its generation is not
        complete), "mismatch" (complete, but the counts do not add up: nothing kept), "complete" (the
        generation is now in force; older ones and epochs below `oldest_epoch` deleted; version bumped).
        Unfinished generations beyond the newest `max_pending` are dropped."""
        ...

    def read(self, version: int, known: Mapping[tuple[str, int], int]) -> tuple[int, list[LocatorSet]] | None:
        """None when the version is still `version`; else (version, every set in force) read from one snapshot,
        with shards only for sets whose generation differs from `known[(province, epoch)]`."""
        ...

    def close(self) -> None: ...


class ProbeBudgets(Protocol):
    """The probing ledger (node.store.probes): distinct budgeted cuts per (requester, consent, item), shared by
    every process and host of the member, never decremented; a query's cuts are admitted all or none."""

    def admit(self, requester: str, consent_id: str, cuts: Mapping[str, str], budget: int) -> tuple[str | None, int]:
        """Record `cuts` (item -> cut): (None, new uses) when every item stays within `budget` distinct cuts,
        else (the first item that would exceed it, 0) and nothing is recorded. Atomic across hosts."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group a batch's admits (a performance scope; each admit's verdict is final either way)."""
        ...

    def uses(self, requester: str, consent_id: str, item: str) -> int:
        """How many distinct budgeted cuts `requester` used on `item` under `consent_id`."""
        ...

    def close(self) -> None: ...
