"""The federation directory: provinces' signed announcements, re-signed as one list by the coordinator.

Each entry keeps the province's own signature, so a member reading the directory can check
that a sealing key really belongs to that province: the coordinator cannot swap in its own.
The same holds for the provinces' published standards documents the directory carries.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.pki import is_certificate_tls_name, serial_of_tls_name
from node.coordinator.standards import PublishedStandards, verify_standards
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain.regions import province_tls_name
from node.domain.standards import StandardsDocument
from node.coordinator.announcement_store import AnnouncementStore, Heard, announcement_file
from node.service.signed import coordinator_signed
from node.errors import ErrorCode, Refusal
from node.wire.v1 import coordinator_pb2

ANNOUNCEMENT: Final[str] = "hedui/v1/announcement"
#: An endpoint of a member not announced again within this long drops out of the directory (the
#: member's last-heard endpoint never does); nodes announce every `coordinator_link.REANNOUNCE_S`.
ENDPOINT_TTL_S: Final[float] = 90.0
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_endpoint(endpoint: str) -> None:
    """Refuse anything but HOST:PORT: a DNS name, an IPv4 address or a bracketed IPv6 address, port 1-65535.

    A gRPC target may name a transport ("unix:/run/x.sock", "vsock:…", "dns:///…"): an
    announced endpoint must never be able to point the coordinator at one.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        raise Refusal(ErrorCode.MALFORMED, "announced endpoint must be HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]") and "%" not in host:
        try:
            ipaddress.IPv6Address(host[1:-1])
            return
        except ValueError:
            pass
    else:
        labels = host.removesuffix(".").split(".")
        if len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels) and (
                not labels[-1].isdigit() or _is_ipv4(host)):
            return
    raise Refusal(ErrorCode.MALFORMED, "announced endpoint must be HOST:PORT with a DNS name or an IP address")


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """A verified directory entry."""

    province: str
    endpoint: str
    seal_suite: str
    seal_public_key: bytes
    tls_cert_sha256: bytes
    sign_serial: int = 0
    mask_public_key: bytes = b""  # empty for a node that predates the household secure sum
    tls_name: str = ""  # the name only the announced TLS certificate carries; "" for an older certificate
    #: Every endpoint of the member, in the order to try them (`endpoint` first); (endpoint,) when it has one.
    endpoints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.endpoints:
            object.__setattr__(self, "endpoints", (self.endpoint,))

    def keys(self) -> tuple[object, ...]:
        """What replicas of one member share: every announced key, certificate and the signer."""
        return (self.seal_suite, self.seal_public_key, self.tls_cert_sha256, self.sign_serial, self.mask_public_key,
                self.tls_name)


def verify_announcement(signed: coordinator_pb2.SignedAnnouncement, verifier: signing.Verifier) -> Entry:
    """Check a province's signed announcement; Refusal when it does not verify."""
    try:
        verified = verifier.verify(signed.signature, ANNOUNCEMENT, signed.body)
        body = coordinator_pb2.AnnouncementBody.FromString(signed.body)
    except (SignatureInvalid, CertificateRejected, DecodeError):
        raise Refusal(ErrorCode.UNAUTHENTICATED, "announcement does not verify") from None
    if verified.identity.province is None or verified.identity.province != body.province:
        raise Refusal(ErrorCode.IDENTITY_MISMATCH)
    if len(body.seal_public_key) != 32 or not body.endpoint or len(body.endpoint) > 255:
        raise Refusal(ErrorCode.MALFORMED, "announcement lacks endpoint or sealing key")
    check_endpoint(body.endpoint)
    if body.mask_public_key and len(body.mask_public_key) != 32:
        raise Refusal(ErrorCode.MALFORMED, "announcement's mask key is not 32 bytes")
    if body.tls_name and not is_certificate_tls_name(body.tls_name, body.province):
        raise Refusal(ErrorCode.MALFORMED, "announcement's TLS name is not a certificate name of that province")
    return Entry(body.province, body.endpoint, body.seal_suite, body.seal_public_key, body.tls_cert_sha256,
                 verified.identity.serial, body.mask_public_key, body.tls_name)


def server_name(entry: Entry) -> str:
    """The name a caller requires of the province's TLS certificate: the announced certificate's own
    name, or (an announcement of an older certificate) the province's."""
    return entry.tls_name or province_tls_name(entry.province)


class FederationDirectory(dict[str, Entry]):
    """A verified directory: province -> Entry, plus each province's verified standards document."""

    def __init__(self, entries: dict[str, Entry], standards: dict[str, StandardsDocument] | None = None,
                 rejected_standards: tuple[str, ...] = (), discovery_epoch_s: int = 0) -> None:
        super().__init__(entries)
        #: The coordinator's discovery epoch length (0: a coordinator that publishes none).
        self.discovery_epoch_s = discovery_epoch_s
        self.standards: dict[str, StandardsDocument] = dict(standards or {})
        #: Provinces whose carried standards document did not verify (left out of `standards`).
        self.rejected_standards = rejected_standards


def _verified_standards(body: coordinator_pb2.DirectoryBody,
                        verifier: signing.Verifier) -> tuple[dict[str, StandardsDocument], tuple[str, ...]]:
    """Each carried standards document whose province's signature verifies (the highest version of each)."""
    documents: dict[str, StandardsDocument] = {}
    rejected: list[str] = []
    for signed in body.standards:
        try:
            doc = verify_standards(signed, verifier)
        except Refusal:
            rejected.append(_claimed_publisher(signed))
            continue
        if doc.province not in documents or doc.version > documents[doc.province].version:
            documents[doc.province] = doc
    return documents, tuple(sorted(set(rejected) - set(documents)))


def _claimed_publisher(signed: coordinator_pb2.SignedStandards) -> str:
    """The province a document that failed claims to come from (for reporting only), or "?"."""
    try:
        province = json.loads(signed.body.decode("utf-8")).get("province")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return "?"
    return province if isinstance(province, str) and len(province) == 2 and province.isdigit() else "?"


def verify_directory(signed: coordinator_pb2.SignedDirectory, verifier: signing.Verifier) -> FederationDirectory:
    """Check the coordinator's signature, every member's announcement and every province's standards
    document; skip entries that fail (a failed standards document is named in `rejected_standards`)."""
    body = coordinator_signed(signed.signature, signing.DIRECTORY, signed.body, coordinator_pb2.DirectoryBody,
                              verifier, "directory")
    entries: dict[str, Entry] = {}
    for announcement in body.members:
        try:
            entry = verify_announcement(announcement, verifier)
        except Refusal:
            continue
        entries[entry.province] = entry
    for announcement in body.replicas:  # another endpoint of a listed member, with that member's keys
        try:
            replica = verify_announcement(announcement, verifier)
        except Refusal:
            continue
        entry = entries.get(replica.province)
        if entry is not None and replica.keys() == entry.keys() and replica.endpoint not in entry.endpoints:
            entries[entry.province] = replace(entry, endpoints=(*entry.endpoints, replica.endpoint))
    return FederationDirectory(entries, *_verified_standards(body, verifier), discovery_epoch_s=body.discovery_epoch_s)


@dataclass(frozen=True)
class _Held:
    """One accepted announcement at one endpoint, verified, and when it was last heard (unix ms)."""

    signed: coordinator_pb2.SignedAnnouncement
    entry: Entry
    issued_at_ms: int
    seen_ms: int


def _held(heard: Heard, verifier: signing.Verifier) -> _Held | None:
    signed = coordinator_pb2.SignedAnnouncement.FromString(heard.announcement)
    try:
        entry = verify_announcement(signed, verifier)
    except Refusal:
        return None
    return _Held(signed, entry, coordinator_pb2.AnnouncementBody.FromString(signed.body).issued_at_ms, heard.seen_ms)


def select_endpoints(held: list[_Held], now_ms: int, ttl_ms: int) -> list[_Held]:
    """A member's endpoints in force, sorted by endpoint: each heard within `ttl_ms` (the one heard last
    always, so a member is never dropped for silence), with the keys of the newest-issued of them."""
    last = max(h.seen_ms for h in held)
    fresh = [h for h in held if now_ms - h.seen_ms <= ttl_ms or h.seen_ms == last]
    keys = max(fresh, key=lambda h: (h.issued_at_ms, h.seen_ms)).entry.keys()
    return sorted((h for h in fresh if h.entry.keys() == keys), key=lambda h: h.entry.endpoint)


class Directory:
    """The coordinator's view of where provinces listen, endpoint by endpoint; persisted so a restart
    (and every other coordinator process on the same store) keeps it."""

    def __init__(self, path: Path | AnnouncementStore, *, signer: signing.Signer, verifier: signing.Verifier,
                 clock: Callable[[], float] = time.time, standards: PublishedStandards | None = None,
                 discovery_epoch_s: int = 0, endpoint_ttl_s: float = ENDPOINT_TTL_S) -> None:
        self.standards = standards
        self.discovery_epoch_s = discovery_epoch_s
        self._standards_revision: tuple[tuple[str, int], ...] = ()
        self.store: AnnouncementStore = announcement_file(path) if isinstance(path, Path) else path
        self.path: Path | None = path if isinstance(path, Path) else getattr(path, "path", None)  # directory.json, when the store is that file
        self.signer = signer
        self.verifier = verifier
        self.clock = clock
        self.ttl_ms = int(endpoint_ttl_s * 1000)
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, _Held]] = {}  # province -> endpoint -> its announcement
        # the endpoints in force per province, until (unix ms) one of them goes stale
        self._selected: dict[str, list[_Held]] = {}
        self._selected_until = -1
        self._entries: dict[str, Entry] = {}
        self._signed: coordinator_pb2.SignedDirectory | None = None
        self._signed_of: tuple[bytes, ...] = ()  # the announcements the signed directory lists
        # what the selection lists: members (first endpoints), replicas, and their bytes
        self._listing: tuple[list[coordinator_pb2.SignedAnnouncement], list[coordinator_pb2.SignedAnnouncement],
                             tuple[bytes, ...]] = ([], [], ())
        self._digest: tuple[coordinator_pb2.SignedDirectory | None, bytes] = (None, b"")
        # the contactable entries, for the entries and revocations they were filtered under
        self._contactable: tuple[int, frozenset[int] | None, dict[str, Entry]] = (-1, None, {})
        self._version = 0  # bumped on every change of _entries
        self._reload()

    def _reload(self) -> None:
        """Re-read the stored announcements when another coordinator process changed them (lock held)."""
        heard = self.store.changed()
        if heard is None:
            return
        held: dict[str, dict[str, _Held]] = {}
        for record in heard:
            h = _held(record, self.verifier)
            if h is not None:
                held.setdefault(h.entry.province, {})[h.entry.endpoint] = h
        self._held = held
        self._selected_until = -1

    def _select(self) -> dict[str, list[_Held]]:
        """The endpoints in force per province (lock held), selected again when one may have gone stale."""
        now = int(self.clock() * 1000)
        if now < self._selected_until:
            return self._selected
        selected = {p: select_endpoints(list(by_endpoint.values()), now, self.ttl_ms)
                    for p, by_endpoint in self._held.items() if by_endpoint}
        last = {p: max(h.seen_ms for h in self._held[p].values()) for p in selected}
        stale_at = [h.seen_ms + self.ttl_ms + 1 for p in selected for h in self._held[p].values()
                    if h.seen_ms != last[p] and h.seen_ms + self.ttl_ms >= now]
        self._selected_until = min(stale_at, default=now + self.ttl_ms)
        entries = {p: replace(hs[0].entry, endpoints=tuple(h.entry.endpoint for h in hs)) for p, hs in selected.items()}
        if entries != self._entries:
            self._entries = entries
            self._version += 1
        self._selected = selected
        provinces = sorted(selected)
        members = [selected[p][0].signed for p in provinces]
        replicas = [h.signed for p in provinces for h in selected[p][1:]]
        self._listing = (members, replicas, tuple(a.SerializeToString() for a in (*members, *replicas)))
        return selected

    def announce(self, peer_province: str, signed: coordinator_pb2.SignedAnnouncement, *, presented: bytes | None) -> Entry:
        """Accept a province's announcement of one of its endpoints; `presented` is the SHA-256 of the TLS certificate
        the announcing call came with (None: unknown, refused), which must be the one announced, so callers
        pin a certificate the province really serves. The same announcement again only refreshes that
        endpoint (`ENDPOINT_TTL_S`)."""
        entry = verify_announcement(signed, self.verifier)
        if entry.province != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        if presented is None or entry.tls_cert_sha256 != presented:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH, "the announced TLS certificate is not the one this call came with")
        issued = coordinator_pb2.AnnouncementBody.FromString(signed.body).issued_at_ms
        with self._lock, self.store.locked():  # read, add, write: no other replica's write in between (G48)
            self._reload()
            now = int(self.clock() * 1000)
            self._held.setdefault(entry.province, {})[entry.endpoint] = _Held(signed, entry, issued, now)
            self._selected_until = -1
            self._persist(now)
        return entry

    def holds(self, signed: coordinator_pb2.SignedAnnouncement) -> bool:
        """Whether this very announcement is held already (announcing it again only keeps its endpoint fresh)."""
        try:
            body = coordinator_pb2.AnnouncementBody.FromString(signed.body)
        except DecodeError:
            return False
        with self._lock:
            self._reload()
            held = self._held.get(body.province, {}).get(body.endpoint)
        return held is not None and held.signed == signed

    def _persist(self, now_ms: int) -> None:
        """Store what is held, less endpoints gone stale (a province's last-heard one is always kept)."""
        kept: list[_Held] = []
        for by_endpoint in self._held.values():
            last = max((h.seen_ms for h in by_endpoint.values()), default=0)
            kept += [h for h in by_endpoint.values() if h.seen_ms == last or now_ms - h.seen_ms <= self.ttl_ms]
        self.store.save([Heard(h.signed.SerializeToString(), h.seen_ms) for h in kept])

    def entries(self) -> dict[str, Entry]:
        """Members that may be contacted, each with its endpoints in force: a member whose signing
        certificate, or announced TLS certificate, was revoked is left out."""
        with self._lock:
            self._reload()
            self._select()
            anchor = self.verifier.anchor
            version, revoked, contactable = self._contactable
            if version != self._version or revoked is not anchor.revoked_serials:  # filtered once per change
                revoked = anchor.revoked_serials
                contactable = {p: e for p, e in self._entries.items()
                               if not anchor.is_revoked(e.sign_serial) and not anchor.is_revoked(serial_of_tls_name(e.tls_name) or -1)}
                self._contactable = (self._version, revoked, contactable)
            return contactable

    def digest(self) -> bytes:
        """SHA-256 of the current signed directory's body (`DiscoverResponse.directory_digest`)."""
        signed = self.signed()
        if self._digest[0] is not signed:
            self._digest = (signed, hashlib.sha256(signed.body).digest())
        return self._digest[1]

    def signed(self) -> coordinator_pb2.SignedDirectory:
        """The current directory, signed by the coordinator (re-signed only after a change of what it lists)."""
        with self._lock:
            self._reload()
            self._select()
            members, replicas, listed = self._listing
            if listed != self._signed_of:
                self._signed_of = listed
                self._signed = None
            if self.standards is not None and self.standards.revision() != self._standards_revision:
                self._standards_revision = self.standards.revision()
                self._signed = None
            if self._signed is None:
                body = coordinator_pb2.DirectoryBody(
                    issued_at_ms=int(self.clock() * 1000),
                    members=members,
                    standards=self.standards.signed_documents() if self.standards is not None else [],
                    discovery_epoch_s=self.discovery_epoch_s,
                    replicas=replicas,
                ).SerializeToString()
                self._signed = coordinator_pb2.SignedDirectory(body=body, signature=self.signer.sign(signing.DIRECTORY, body))
            return self._signed
