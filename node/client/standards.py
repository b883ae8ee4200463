"""A province publishes its standards document and reads everyone's from the verified federation directory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node.client.coordinator import CoordinatorClient
from node.coordinator.directory import FederationDirectory
from node.crypto import signing
from node.domain.regions import province_name
from node.domain.standards import Standard, StandardsDocument, canonical_bytes, check_period, fallback_regions, load_standards
from node.errors import BadInput
from node.member import Member
from node.wire.v1 import coordinator_pb2


@dataclass(frozen=True)
class Published:
    """What the coordinator accepted: the document as signed and the version it now carries."""

    document: StandardsDocument
    version: int
    entries: int


def sign_standards(member: Member, doc: StandardsDocument) -> coordinator_pb2.SignedStandards:
    """The document's canonical form signed with this province's signing key."""
    body = canonical_bytes(doc)
    return coordinator_pb2.SignedStandards(body=body, signature=member.signer.sign(signing.STANDARDS, body))


def publish_standards(member: Member, path: Path, *, deadline_s: float | None = None) -> Published:
    """Validate the TOML file at `path` here (one-line StandardsError), sign it and publish it at the coordinator."""
    doc = load_standards(path, member.catalogue, member.policy)
    if doc.province != member.province:
        raise BadInput(f"{path}: the document is province {doc.province}'s ({province_name(doc.province)}); "
                       f"this node is province {member.province}'s and publishes only its own")
    with CoordinatorClient(member, deadline_s=deadline_s) as coordinator:
        reply = coordinator.call("PublishStandards", sign_standards(member, doc))
    return Published(doc, reply.version, reply.entries)


def fetch_directory(member: Member, *, deadline_s: float | None = None) -> FederationDirectory:
    """The verified federation directory (members and standards documents) from the coordinator."""
    with CoordinatorClient(member, deadline_s=deadline_s) as coordinator:
        directory = coordinator.directory(max_age_s=0)
    assert isinstance(directory, FederationDirectory)
    return directory


def fetch_standards(member: Member, *, deadline_s: float | None = None) -> dict[str, StandardsDocument]:
    """province -> its published standards document, each with the province's signature verified."""
    return dict(fetch_directory(member, deadline_s=deadline_s).standards)


def find_in(documents: Mapping[str, StandardsDocument], region: str, purpose: str, period: str) -> Standard | None:
    """The standard in force for a household's region, purpose and month among published documents
    (the region's province publishes it; county -> city -> province fallback), or None."""
    fallback_regions(region)
    check_period(period)
    doc = documents.get(region[:2])
    return doc.find(region, purpose, period) if doc is not None else None


def find_standard(member: Member, region: str, purpose: str, period: str | None = None, *,
                  documents: Mapping[str, StandardsDocument] | None = None) -> Standard | None:
    """The published standard for `region`, `purpose` and `period` (default: this month, UTC); pass
    `documents` (from fetch_standards) to look up many households without fetching again."""
    period = period or current_period()
    return find_in(documents if documents is not None else fetch_standards(member), region, purpose, period)


def current_period() -> str:
    """This month, UTC, as "YYYY-MM"."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")
