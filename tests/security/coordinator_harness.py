"""A coordinator alone on loopback (real mutual TLS, SQLite or PostgreSQL) for tests of its consent calls:
the `fed` fixture (one on each store), channels as a member, signed registration requests, a signer whose batch
signing waits for the test, ledgers whose reads or appends fail."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.store.errors import StoreError
from node.service.consent import SALT_BYTES, commitment
from node.testing import Federation
from node.testing.cluster import LoopThread, build_federation
from node.wire.v1 import coordinator_pb2

WAIT_S = 30.0  # a bound on waiting for a parked call, never a speed requirement


class GatedSigner:
    """The coordinator's real signer; its batch signing (the receipts, inside the batch's ledger transaction)
    waits until the test sets `release`; `entered` is set when it is reached."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def sign_many(self, items: Any) -> Any:
        self.entered.set()
        self.release.wait(WAIT_S)
        return self.inner.sign_many(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class AppendFailsOnce:
    """The coordinator's real ledger; its next append runs `build` inside the real transaction, then fails (rolled
    back) as when the replica died before its commit; later appends go through. `attempted` counts appends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.attempted = 0

    def append_next(self, build: Any, **kw: Any) -> Any:
        self.attempted += 1
        if self.attempted > 1:
            return self.inner.append_next(build, **kw)

        def dies(head: Any) -> Any:
            build(head)
            raise StoreError("append to chain ledger failed: the connection to the store was lost")
        return self.inner.append_next(dies, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LoopReadsFail:
    """The coordinator's real ledger, whose `head()` on the event loop fails while `failing` is set (the store out
    of reach after a worker thread committed): worker threads' appends go through. With `after_append`, the
    first append sets `failing`."""

    def __init__(self, inner: Any, *, after_append: bool = False) -> None:
        self.inner = inner
        self.failing = False
        self.after_append = after_append
        self.refused = 0  # reads on the loop that failed

    def head(self) -> tuple[int, bytes]:
        if self.failing and threading.current_thread().name == "hedui-loop":
            self.refused += 1
            raise StoreError("reading chain ledger failed: no PostgreSQL connection within 0.25 s")
        return self.inner.head()  # type: ignore[no-any-return]

    def append_next(self, build: Any, **kw: Any) -> Any:
        done = self.inner.append_next(build, **kw)
        self.failing = self.failing or self.after_append
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(name="fed", params=["sqlite", "postgres"])
def coordinator_fed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Federation]:
    """`fed`: a coordinator on each store (the ledger's write lock a file lock on SQLite, an advisory lock on
    PostgreSQL); a test module imports it to use it."""
    extra = {"store": {"url": request.getfixturevalue("postgres_url")}} if request.param == "postgres" else {}
    with coordinator_only(tmp_path, extra) as fed:
        yield fed


@contextlib.contextmanager
def coordinator_only(tmp_path: Path, coordinator_extra: dict[str, Any] | None = None) -> Iterator[Federation]:
    """Members 44 and 51 built, only the coordinator started (on the store `coordinator_extra` names)."""
    fed = build_federation(tmp_path, ["44", "51"], coordinator_extra=coordinator_extra)
    fed.loop = LoopThread()
    try:
        fed.start_coordinator()
        yield fed
    finally:
        for code in list(fed.servers):
            fed.stop_node(code)
        fed.loop.close()


def channel(fed: Federation, member: str) -> grpc.Channel:
    """A mutual-TLS channel to the coordinator with `member`'s certificate."""
    folder = fed.pki / "members" / member
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki / "ca.pem").read_bytes(),
                                         private_key=(folder / "tls.key").read_bytes(),
                                         certificate_chain=(folder / "tls.pem").read_bytes())
    return grpc.secure_channel(fed.addresses["coordinator"], creds)


def consent_body(nonce: bytes | None = None, purpose: str = "dibao") -> coordinator_pb2.ConsentRequestBody:
    """A fresh consent request of 51 for one random subject commitment, valid for a day."""
    now_ms = int(time.time() * 1000)
    salt = os.urandom(SALT_BYTES)
    return coordinator_pb2.ConsentRequestBody(
        requester="51", request_id=uuid.uuid4().hex, nonce=nonce or os.urandom(16), issued_at_ms=now_ms, purpose=purpose,
        subject_salt=salt, subject_commitments=[commitment(salt, os.urandom(32))],
        not_before_ms=now_ms - 60_000, not_after_ms=now_ms + 86_400_000)


def signed(fed: Federation, body: coordinator_pb2.ConsentRequestBody | None = None) -> coordinator_pb2.RegisterConsentRequest:
    """`body` (a fresh one by default) signed by 51, as RegisterConsent takes it."""
    raw = (body or consent_body()).SerializeToString()
    return coordinator_pb2.RegisterConsentRequest(body=raw, signature=fed.member("51").signer.sign(CONSENT_REQUEST_DOMAIN, raw))
