"""Connection pools to PostgreSQL, shared per URL within a process, and psycopg errors as store errors."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Final

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from node.store.errors import StoreError

MAX_CONNECTIONS: Final[int] = 16  # per URL and process: a server's threads plus a few streams
#: How long a call waits for a free pooled connection (or for the server to come back) before StoreError: below
#: every call deadline (the shortest RPC deadlines are a few seconds), so a node answers UNAVAILABLE in time
#: rather than after its caller gave up. The first open keeps _TIMEOUT_S; see DOWN_WAIT_S and RECONNECT_S for a
#: server that went away.
POOL_WAIT_S: Final[float] = 2.0
#: Once a wait for a connection ran out, the pool is taken as down: its further calls wait only this long (time
#: enough for a connection the pool already has, or opens at once, against a server that is back) until one gets a
#: connection again. A call that touches the store several times is so refused within about one POOL_WAIT_S
#: while PostgreSQL is down, not one POOL_WAIT_S per access; once it is back, a call gets a connection within about
#: RECONNECT_S.
DOWN_WAIT_S: Final[float] = 0.25
#: How long the pool itself retries a lost connection (with backoff) before leaving reconnection to demand, where
#: every call that finds no connection starts an attempt at once: short, so that a server that is back is found
#: by the next call (a longer retry sleeps through its backoff, seconds, while calls fail).
RECONNECT_S: Final[float] = 1.0
_TIMEOUT_S: Final[float] = 10.0
_CONNECT_TIMEOUT_S: Final[int] = 10
#: Every pooled session's statement_timeout: a statement stuck behind a lock (or a runaway one) fails as a
#: StoreError and gives its connection back instead of holding it for ever. Far above any statement Hedui
#: issues (ingest and chain batches are bounded: 5,000 rows per statement); backup/restore use their own
#: connections without it.
STATEMENT_TIMEOUT_MS: Final[int] = 60_000
_lock = threading.Lock()
# The pool's own warnings (each failed reconnection) go where the application's logging sends them, never
# to stderr through logging's last-resort handler (a CLI error is one line).
logging.getLogger("psycopg").addHandler(logging.NullHandler())
_pools: dict[tuple[int, str, bool], tuple[ConnectionPool, list[int]]] = {}
_down: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()  # pools whose last wait ran out (see DOWN_WAIT_S)
#: What an opener meets while `hedui restore` (or `hedui ledger new-epoch`) holds restore_lock() exclusive.
RESTORING: Final[str] = "a restore (or new epoch) of this PostgreSQL store is in progress: start again when it has finished"
#: What a process meets that had the store open before a restore ran (all its sessions were gone, e.g. after a
#: PostgreSQL restart, so the restore did not see it): what it holds in memory is the replaced store's.
RESTORED: Final[str] = "the PostgreSQL store was restored since this process opened it: restart it"
RESTORES_TABLE: Final[str] = "hedui_restores"  # one row per restore (node.store.postgres.backup writes it)
_restoring: set[str] = set()  # URLs this process itself holds restore_lock() exclusive on (see restoring())
_fenced: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()  # pools that met a restore made since they opened
_fenced_urls: set[str] = set()  # URLs of those pools: this process's leases on them are given up (see fenced())


def restore_lock() -> int:
    """The session advisory lock every pooled Hedui session holds SHARED for its whole life (taken when it
    connects) and a restore holds EXCLUSIVE for its whole run: a restore starts only when no Hedui session is
    open, and no session opens until it has finished (SECURITY G47)."""
    return lock_key("restore")


def hold_shared(conn: psycopg.Connection, url: str) -> None:
    """Take the restore lock shared on this session (never waiting); StoreError(RESTORING) while a restore holds it.
    Sessions of a restore's own process (restoring(url)) skip it."""
    if url in _restoring:
        return
    if not conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (restore_lock(),)).fetchone()[0]:
        raise StoreError(f"{redact(url)}: {RESTORING}")


def fence(url: str) -> None:
    """Mark `url` restored since this process opened it (see fenced())."""
    _fenced_urls.add(url)


def fenced(url: str) -> bool:
    """Whether a pool of this process on `url` met a restore made since it opened (it refuses with RESTORED): the
    process must not lead anything on that store either (leases give themselves up) until it is restarted."""
    return url in _fenced_urls


def restores(conn: psycopg.Connection) -> int:
    """How many restores the store has had (rows of hedui_restores; 0 before the first)."""
    if conn.execute("SELECT to_regclass(%s) IS NULL", (RESTORES_TABLE,)).fetchone()[0]:
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {RESTORES_TABLE}").fetchone()[0])


@contextlib.contextmanager
def restoring(url: str) -> Iterator[None]:
    """For the block, this process holds the restore lock exclusive on `url`: its own pools do not take it shared."""
    with _lock:
        _restoring.add(url)
    try:
        yield
    finally:
        with _lock:
            _restoring.discard(url)


def check_origin(conn: psycopg.Connection) -> None:
    """StoreError unless the session runs with session_replication_role = origin (in replica mode only
    always-enabled triggers fire: the facts' change triggers and anything else would silently stop)."""
    role = conn.execute("SELECT current_setting('session_replication_role')").fetchone()[0]
    if role != "origin":
        raise StoreError(f"refusing a PostgreSQL session with session_replication_role = {role!r} (must be 'origin'): "
                         "check ALTER ROLE/DATABASE settings and the URL's options")


def _configure(url: str, readonly: bool, owner: list[ConnectionPool]):  # noqa: ANN202 - a psycopg_pool callback
    seen: list[int] = []  # the restore count the pool's first session found

    def configure(conn: psycopg.Connection) -> None:
        """Every session: the restore lock shared (and no restore since the pool's first session), durable commits
        whatever the server default, read-only when asked."""
        conn.autocommit = True
        check_origin(conn)
        hold_shared(conn, url)
        count = restores(conn)
        if seen and seen[0] != count and url not in _restoring:
            _fenced.update(owner)
            fence(url)
            raise StoreError(RESTORED)
        seen[:] = [count]
        conn.execute("SET synchronous_commit = on")
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.execute("SET application_name = 'hedui'")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")
    return configure


#: The one message of a URL libpq cannot parse: libpq's own quotes the URI, password included.
BAD_URL: Final[str] = "the PostgreSQL store url is not a valid libpq URL (such as postgresql://USER@HOST:PORT/DBNAME)"


def check_url(url: str) -> str:
    """`url` when libpq can parse it, else StoreError(BAD_URL): every entry point calls this before connecting."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except (psycopg.Error, TypeError, ValueError):
        raise StoreError(BAD_URL) from None
    return url


def connect_failure(url: str, exc: psycopg.Error) -> str:
    """Why connecting to `url` failed, for a message: libpq's first line for a connection error (it names host,
    port and user, never the password, which is removed should it appear), else a fixed text; never str(exc) of
    an error raised before any connection existed."""
    if not isinstance(exc, psycopg.OperationalError):
        return f"cannot connect to PostgreSQL at {redact(url)}"
    reason = next(iter(str(exc).strip().splitlines()), "")
    password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    if password and str(password) in reason:
        reason = ""
    return f"cannot connect to PostgreSQL at {redact(url)}" + (f": {reason}" if reason else "")


def acquire(url: str, *, readonly: bool = False) -> ConnectionPool:
    """The process's pool for `url` (opened on first use, waiting for its first connection); release() it after."""
    check_url(url)
    key = (os.getpid(), url, readonly)
    with _lock:
        found = _pools.get(key)
        if found is not None:
            found[1][0] += 1
            return found[0]
        try:  # first a plain connect: a server that is down or refuses us is one precise error, at once
            with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=True) as probe:
                check_origin(probe)
                hold_shared(probe, url)  # a restore in progress: this one line, not a pool retrying until its timeout
        except psycopg.Error as exc:
            raise StoreError(connect_failure(url, exc)) from None
        owner: list[ConnectionPool] = []
        pool = ConnectionPool(url, min_size=1, max_size=MAX_CONNECTIONS, open=False, timeout=POOL_WAIT_S,
                              kwargs={"connect_timeout": _CONNECT_TIMEOUT_S}, configure=_configure(url, readonly, owner),
                              check=ConnectionPool.check_connection, reconnect_timeout=RECONNECT_S,
                              name=f"hedui-{'ro' if readonly else 'rw'}", num_workers=1)
        owner.append(pool)
        try:
            pool.open(wait=True, timeout=_TIMEOUT_S)
        except PoolTimeout:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}") from None
        _pools[key] = (pool, [1])
        return pool


def release(pool: ConnectionPool) -> None:
    """Give back a pool from acquire(); the last release closes it."""
    with _lock:
        for key, (found, refs) in list(_pools.items()):
            if found is pool:
                refs[0] -= 1
                if refs[0] > 0:
                    return
                del _pools[key]
                break
    pool.close()


@contextlib.contextmanager
def connection(pool: ConnectionPool, what: str) -> Iterator[psycopg.Connection]:
    """A pooled connection; psycopg and pool errors leave as StoreError naming `what` (no values, no SQL).
    The wait is POOL_WAIT_S, or DOWN_WAIT_S while the pool is down (its last wait ran out)."""
    if pool in _fenced:
        raise StoreError(f"{what} failed: {RESTORED}")
    down = pool in _down
    try:
        with pool.connection(timeout=DOWN_WAIT_S if down else None) as conn:
            if down:
                _down.discard(pool)
            yield conn
    except PoolTimeout:
        if pool in _fenced:
            raise StoreError(f"{what} failed: {RESTORED}") from None
        _down.add(pool)
        waited = DOWN_WAIT_S if down else POOL_WAIT_S
        raise StoreError(f"{what} failed: no PostgreSQL connection within {waited:g} s") from None
    except psycopg.Error as exc:
        raise StoreError(f"{what} failed: {describe(exc)}") from None


def describe(exc: psycopg.Error) -> str:
    """The error's class, SQLSTATE and the server's primary message: never its DETAIL, which can quote row
    values, nor str(exc) of a client-side error (a URL parse error quotes the URL, password included)."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}: {primary or 'no server message'}"


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable PostgreSQL URL>"
    host, port, db = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{db}"


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for these names (stable across processes and hosts)."""
    digest = hashlib.sha256("\x00".join(("hedui", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def missing(message: str, location: str) -> StoreError:
    """The error of a read-only open that found nothing: StoreMissing where the tree has it (issue 14's errors)."""
    try:
        from node.store.errors import StoreMissing  # type: ignore[attr-defined]
    except ImportError:  # before node.store.errors gained StoreMissing
        return StoreError(message)
    return StoreMissing(message, location)  # type: ignore[no-any-return]
