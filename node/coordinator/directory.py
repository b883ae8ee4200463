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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf.message import DecodeError

from node import files
from node.crypto import signing
from node.crypto.pki import is_certificate_tls_name, serial_of_tls_name
from node.coordinator.standards import PublishedStandards, verify_standards
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain.regions import province_tls_name
from node.domain.standards import StandardsDocument
from node.coordinator.shared_file import changed_entries
from node.service.signed import coordinator_signed
from node.errors import ErrorCode, Refusal
from node.wire.v1 import coordinator_pb2

ANNOUNCEMENT: Final[str] = "hedui/v1/announcement"
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
    return FederationDirectory(entries, *_verified_standards(body, verifier), discovery_epoch_s=body.discovery_epoch_s)


class Directory:
    """The coordinator's view of where provinces listen; persisted so a restart keeps it."""

    def __init__(self, path: Path, *, signer: signing.Signer, verifier: signing.Verifier,
                 clock: Callable[[], float] = time.time, standards: PublishedStandards | None = None,
                 discovery_epoch_s: int = 0) -> None:
        self.standards = standards
        self.discovery_epoch_s = discovery_epoch_s
        self._standards_revision: tuple[tuple[str, int], ...] = ()
        self.path = path
        self.signer = signer
        self.verifier = verifier
        self.clock = clock
        self._lock = threading.Lock()
        self._announcements: dict[str, coordinator_pb2.SignedAnnouncement] = {}
        self._entries: dict[str, Entry] = {}
        self._signed: coordinator_pb2.SignedDirectory | None = None
        self._digest: tuple[coordinator_pb2.SignedDirectory | None, bytes] = (None, b"")
        self._stamp: int | None = None
        # the contactable entries, for the entries and revocations they were filtered under
        self._contactable: tuple[int, frozenset[int] | None, dict[str, Entry]] = (-1, None, {})
        self._version = 0  # bumped on every change of _entries
        self._reload()

    def _reload(self) -> None:
        """Re-read the persisted directory when another coordinator worker changed it."""
        changed = changed_entries(self.path, self._stamp, "members")
        if changed is None:
            return
        self._stamp, members = changed
        for raw in members:
            signed = coordinator_pb2.SignedAnnouncement.FromString(bytes.fromhex(raw))
            try:
                entry = verify_announcement(signed, self.verifier)
            except Refusal:
                continue
            if self._announcements.get(entry.province) != signed:
                self._announcements[entry.province] = signed
                self._entries[entry.province] = entry
                self._signed = None
                self._version += 1

    def announce(self, peer_province: str, signed: coordinator_pb2.SignedAnnouncement, *, presented: bytes | None) -> Entry:
        """Accept a province's announcement of itself; `presented` is the SHA-256 of the TLS certificate
        the announcing call came with (None: unknown, refused), which must be the one announced, so callers
        pin a certificate the province really serves."""
        entry = verify_announcement(signed, self.verifier)
        if entry.province != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        if presented is None or entry.tls_cert_sha256 != presented:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH, "the announced TLS certificate is not the one this call came with")
        with self._lock:
            self._reload()
            self._announcements[entry.province] = signed
            self._entries[entry.province] = entry
            self._signed = None
            self._version += 1
            self._persist()
        return entry

    def _persist(self) -> None:
        files.write_file(self.path, json.dumps({"members": [a.SerializeToString().hex() for a in self._announcements.values()]}),
                         replace=True)
        self._stamp = self.path.stat().st_mtime_ns

    def entries(self) -> dict[str, Entry]:
        """Members that may be contacted: a member whose signing certificate, or announced TLS certificate,
        was revoked is left out."""
        with self._lock:
            self._reload()
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
        """The current directory, signed by the coordinator (re-signed only after a change)."""
        with self._lock:
            self._reload()
            if self.standards is not None and self.standards.revision() != self._standards_revision:
                self._standards_revision = self.standards.revision()
                self._signed = None
            if self._signed is None:
                body = coordinator_pb2.DirectoryBody(
                    issued_at_ms=int(self.clock() * 1000),
                    members=[self._announcements[p] for p in sorted(self._announcements)],
                    standards=self.standards.signed_documents() if self.standards is not None else [],
                    discovery_epoch_s=self.discovery_epoch_s,
                ).SerializeToString()
                self._signed = coordinator_pb2.SignedDirectory(body=body, signature=self.signer.sign(signing.DIRECTORY, body))
            return self._signed
