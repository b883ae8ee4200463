"""Several endpoints per member: the directory lists each replica's own signed announcement, with freshness."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from node import config as config_mod
from node.coordinator.directory import ANNOUNCEMENT, ENDPOINT_TTL_S, Directory, verify_directory
from node.coordinator.directory_cache import VerifiedDirectory
from node.crypto import pki, sealing
from node.member import Member
from node.testing.cluster import Federation, build_federation
from node.wire.v1 import coordinator_pb2


HEDUI = [sys.executable, "-m", "node.cli.main"]


class Clock:
    """A settable clock (seconds), for announcement freshness."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    yield build_federation(tmp_path_factory.mktemp("replicas"), ["44", "51"])


def announcement(member: Member, endpoint: str, *, issued_at_ms: int = 1, seal_public_key: bytes | None = None,
                 ) -> tuple[coordinator_pb2.SignedAnnouncement, bytes]:
    """Province `member`'s signed announcement of `endpoint`, and its TLS certificate's SHA-256."""
    cert = pki.load_cert(member.cfg.tls_cert)
    tls_sha = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    seal = seal_public_key or sealing.public_bytes(pki.load_seal_keys(member.cfg.seal_key, member.cfg.seal_pub)[1])
    body = coordinator_pb2.AnnouncementBody(
        province=member.province, endpoint=endpoint, seal_suite=sealing.SUITE_NAME, seal_public_key=seal,
        tls_cert_sha256=tls_sha, issued_at_ms=issued_at_ms, tls_name=pki.certificate_tls_name(cert)).SerializeToString()
    return coordinator_pb2.SignedAnnouncement(body=body, signature=member.signer.sign(ANNOUNCEMENT, body)), tls_sha


def directory(fed: Federation, path: Path, clock: Clock) -> tuple[Directory, Member]:
    coordinator = Member(config_mod.load(fed.coordinator_config))
    return Directory(path, signer=coordinator.signer, verifier=coordinator.verifier, clock=clock), coordinator


def test_every_replica_endpoint_is_listed_and_verified(fed: Federation, tmp_path: Path) -> None:
    """Two replicas of Sichuan announce their own endpoints: the signed directory lists both (the first in
    `members`, for older readers; the other in `replicas`) and a reader gets both, in a stable order."""
    clock = Clock()
    d, coordinator = directory(fed, tmp_path / "directory.json", clock)
    sc = fed.member("51")
    for endpoint in ("10.0.0.3:7443", "10.0.0.2:7443"):
        signed, tls_sha = announcement(sc, endpoint)
        d.announce("51", signed, presented=tls_sha)
    assert d.entries()["51"].endpoints == ("10.0.0.2:7443", "10.0.0.3:7443")
    body = coordinator_pb2.DirectoryBody.FromString(d.signed().body)
    (member,) = body.members
    assert coordinator_pb2.AnnouncementBody.FromString(member.body).endpoint == "10.0.0.2:7443"
    assert [coordinator_pb2.AnnouncementBody.FromString(r.body).endpoint for r in body.replicas] == ["10.0.0.3:7443"]
    read = verify_directory(d.signed(), fed.member("44").verifier)
    assert read["51"].endpoint == "10.0.0.2:7443" and read["51"].endpoints == ("10.0.0.2:7443", "10.0.0.3:7443")
    older = coordinator_pb2.DirectoryBody(members=body.members).SerializeToString()  # what a 0.2 reader keeps
    older_signed = coordinator_pb2.SignedDirectory(body=older, signature=coordinator.signer.sign("hedui/v1/directory", older))
    assert verify_directory(older_signed, fed.member("44").verifier)["51"].endpoints == ("10.0.0.2:7443",)


def test_the_digest_covers_the_endpoint_list(fed: Federation, tmp_path: Path) -> None:
    """A replica joining changes the directory's digest, so a requester holding the older one fetches again;
    the cached verification of the new bytes includes the replica's certificate."""
    clock = Clock()
    d, _ = directory(fed, tmp_path / "directory.json", clock)
    sc = fed.member("51")
    signed, tls_sha = announcement(sc, "10.0.0.2:7443")
    d.announce("51", signed, presented=tls_sha)
    before = d.digest()
    signed, tls_sha = announcement(sc, "10.0.0.3:7443")
    d.announce("51", signed, presented=tls_sha)
    assert d.digest() != before
    cache = VerifiedDirectory(fed.member("44").verifier)
    assert cache.get(d.signed())["51"].endpoints == ("10.0.0.2:7443", "10.0.0.3:7443")
    assert cache.digest == d.digest()


def test_an_endpoint_not_announced_again_drops_out_but_the_last_heard_stays(fed: Federation, tmp_path: Path) -> None:
    """An endpoint silent for longer than ENDPOINT_TTL_S leaves the directory while its sibling keeps
    re-announcing; the same announcement again only refreshes it (no re-signing), and a member whose every
    endpoint went silent keeps its last-heard one."""
    clock = Clock()
    d, _ = directory(fed, tmp_path / "directory.json", clock)
    sc = fed.member("51")
    first, tls_sha = announcement(sc, "10.0.0.2:7443")
    second, _ = announcement(sc, "10.0.0.3:7443")
    d.announce("51", first, presented=tls_sha)
    d.announce("51", second, presented=tls_sha)
    signed = d.signed()
    clock.now += ENDPOINT_TTL_S / 2
    d.announce("51", second, presented=tls_sha)  # the refresh a live replica sends
    assert d.signed() is signed
    clock.now += ENDPOINT_TTL_S / 2 + 1
    assert d.entries()["51"].endpoints == ("10.0.0.3:7443",)
    assert d.signed() is not signed
    assert verify_directory(d.signed(), sc.verifier)["51"].endpoints == ("10.0.0.3:7443",)
    clock.now += 10 * ENDPOINT_TTL_S  # every replica silent: the province stays at its last-heard endpoint
    assert d.entries()["51"].endpoints == ("10.0.0.3:7443",)


def test_a_replica_under_other_keys_is_not_an_endpoint_of_the_member(fed: Federation, tmp_path: Path) -> None:
    """Announcements of one province under different sealing keys are never merged: the directory lists the
    endpoints of the newest-issued key set, and a reader ignores a carried replica whose keys differ."""
    clock = Clock()
    d, coordinator = directory(fed, tmp_path / "directory.json", clock)
    sc = fed.member("51")
    old, tls_sha = announcement(sc, "10.0.0.2:7443", issued_at_ms=1, seal_public_key=b"\x07" * 32)
    new, _ = announcement(sc, "10.0.0.3:7443", issued_at_ms=2)
    d.announce("51", old, presented=tls_sha)
    d.announce("51", new, presented=tls_sha)
    assert d.entries()["51"].endpoints == ("10.0.0.3:7443",)
    forged = coordinator_pb2.DirectoryBody(members=[new], replicas=[old]).SerializeToString()
    signed = coordinator_pb2.SignedDirectory(body=forged, signature=coordinator.signer.sign("hedui/v1/directory", forged))
    assert verify_directory(signed, sc.verifier)["51"].endpoints == ("10.0.0.3:7443",)


def test_coordinator_processes_sharing_the_store_see_each_others_announcements(fed: Federation, tmp_path: Path) -> None:
    """Each replica announces to a different coordinator process; both processes, reading one store, list both
    endpoints with their freshness (an endpoint heard by the other process is kept)."""
    clock = Clock()
    a, _ = directory(fed, tmp_path / "directory.json", clock)
    b, _ = directory(fed, tmp_path / "directory.json", clock)
    sc = fed.member("51")
    first, tls_sha = announcement(sc, "10.0.0.2:7443")
    second, _ = announcement(sc, "10.0.0.3:7443")
    a.announce("51", first, presented=tls_sha)
    time.sleep(0.01)  # a later modification stamp (the file is re-read on change)
    b.announce("51", second, presented=tls_sha)
    assert a.entries()["51"].endpoints == b.entries()["51"].endpoints == ("10.0.0.2:7443", "10.0.0.3:7443")
    assert a.digest() != b"" and verify_directory(a.signed(), sc.verifier)["51"].endpoints == \
        verify_directory(b.signed(), sc.verifier)["51"].endpoints


def test_a_re_announcement_is_not_audited_again_but_a_new_endpoint_is(planted: dict[str, Path], tmp_path: Path) -> None:
    """The 30 s refresh (the same signed announcement again) adds no coordinator audit record; a replica's new
    endpoint does."""
    from node.testing import run_cluster
    from tests.security.test_server_identity import announce

    with run_cluster(["32", "51"], root=tmp_path) as running:
        link = running.servers["51"].link

        def announced() -> int:
            exported = subprocess.run([*HEDUI, "audit", "export", "--config", str(running.coordinator_config)],
                                      capture_output=True, text=True, timeout=60)
            return [json.loads(x)["decision"] for x in exported.stdout.splitlines()].count("announce")

        before = announced()
        announce(running, "51", link._announced.body)  # what the node re-sends every REANNOUNCE_S
        assert announced() == before
        announce(running, "51", link.announcement("127.0.0.2:7443").body)
        assert announced() == before + 1


class _SlowSave:
    """A replica's real announcement store whose write waits (at most 2 s) for the other replica to have read the
    store too: the interleaving in which an unlocked read-modify-write loses one announcement."""

    def __init__(self, inner: object, other_read: threading.Event, read: threading.Event) -> None:
        self.inner, self.other_read, self.read = inner, other_read, read

    def changed(self) -> object:
        found = self.inner.changed()  # type: ignore[attr-defined]
        self.read.set()
        return found

    def save(self, heard: object) -> None:
        self.other_read.wait(2.0)
        self.inner.save(heard)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_replicas_accepting_at_once_keep_both_announcements(fed: Federation, tmp_path: Path, store: str,
                                                                request: pytest.FixtureRequest) -> None:
    """Two coordinator replicas sharing the storage accept two provinces' announcements at the same instant:
    each is a read-modify-write under the document's lock, so the stored directory keeps both (SECURITY G48)."""
    from node.coordinator.announcement_store import AnnouncementDocument, announcement_file
    from node.store.factory import open_url

    coordinator = Member(config_mod.load(fed.coordinator_config))
    storage = None
    if store == "postgresql":
        storage = open_url(request.getfixturevalue("postgres_url"), tmp_path)

        def shared() -> object:
            return AnnouncementDocument(storage.document("directory.json"))  # type: ignore[union-attr]
    else:
        def shared() -> object:
            return announcement_file(tmp_path / "directory.json")
    try:
        reads = {code: threading.Event() for code in ("44", "51")}
        replicas = {code: Directory(_SlowSave(shared(), reads["51" if code == "44" else "44"], reads[code]),
                                    signer=coordinator.signer, verifier=coordinator.verifier)
                    for code in ("44", "51")}
        for event in reads.values():
            event.clear()  # the replicas' first reads (at construction) do not count
        signed = {code: announcement(fed.member(code), f"10.0.0.{code}:7443") for code in ("44", "51")}
        threads = [threading.Thread(target=replicas[code].announce, args=(code, signed[code][0]),
                                    kwargs={"presented": signed[code][1]}) for code in ("44", "51")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        fresh = Directory(shared(), signer=coordinator.signer, verifier=coordinator.verifier)  # type: ignore[arg-type]
        assert sorted(fresh.entries()) == ["44", "51"]
    finally:
        if storage is not None:
            storage.close()
