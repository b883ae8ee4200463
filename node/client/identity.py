"""Whom a direct call means: the province at a HOST:PORT, and the name its TLS certificate must carry."""

from __future__ import annotations

from typing import Final

from node.coordinator.directory import Entry, server_name
from node.domain.regions import is_province, province_tls_name
from node.errors import BadInput, HeduiError
from node.member import Member

#: How long a direct call waits for the directory that names the announced certificate.
LOOKUP_DEADLINE_S: Final[float] = 2.0


def peer_server_name(member: Member, target: str, province: str | None = None) -> tuple[str, str]:
    """(province, TLS name) for a direct call to `target`: the province given, or the one the directory
    lists at `target`; the name of its announced certificate when the directory has one, else the
    province's own name (a coordinator that cannot be reached only loses the certificate pin)."""
    found, name, _ = peer_target(member, target, province)
    return found, name


def peer_target(member: Member, target: str, province: str | None = None) -> tuple[str, str, tuple[str, ...]]:
    """As `peer_server_name`, and the endpoints to try: `target` first, then the province's other listed
    endpoints (its replicas) when the directory lists `target` among them; (target,) otherwise."""
    if province is not None and not is_province(province):
        raise BadInput("--province must be a two-digit province code")
    entries = _directory(member, required=province is None)
    if province is None:
        listed = [e for e in entries.values() if target in e.endpoints]
        if len(listed) != 1:
            raise BadInput(f"{target} is not a province in the federation directory: name the province "
                           "expected there with --province CODE")
        return listed[0].province, server_name(listed[0]), _endpoints(listed[0], target)
    entry = entries.get(province)
    if entry is None:
        return province, province_tls_name(province), (target,)
    return province, server_name(entry), _endpoints(entry, target)


def _endpoints(entry: Entry, target: str) -> tuple[str, ...]:
    if target not in entry.endpoints:
        return (target,)
    return (target, *(e for e in entry.endpoints if e != target))


def _directory(member: Member, *, required: bool) -> dict[str, Entry]:
    if not member.cfg.coordinator:
        if required:
            raise BadInput("this node has no coordinator to look the server up: name the province with --province CODE")
        return {}
    from node.client.coordinator import CoordinatorClient

    deadline = min(LOOKUP_DEADLINE_S, member.cfg.limits.default_deadline_s)
    try:
        with CoordinatorClient(member, deadline_s=deadline) as coordinator:
            return coordinator.directory(max_age_s=0)
    except HeduiError:
        if required:
            raise
        return {}
