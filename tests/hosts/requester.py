"""A requester on its own host: reads one JSON command per line on stdin, answers one JSON line on stdout.

Run inside the requester's namespace (`python -m tests.hosts.requester CONFIG`), so its calls leave
from that host. Commands: {"op": "grant", "ids": [...]} -> {"consent_id", "request_body" (hex)};
{"op": "revoke", "consent_id"} -> {"revoked"}; {"op": "direct", "to", "province", ...as verify} -> {"answers"}; {"op": "verify", "ids",
"checks", "consent_id", "deadline_s"} -> {"elapsed_s", "routing", "answers": [{province, valid,
query_body (hex)}]}, with the time taken by the routed call alone; {"error", "elapsed_s"} when a call raised.
A consent's receipt is fetched once and kept (so a routed call does not depend on fetching it again).
An optional "via": HOST:PORT sends the command to that coordinator replica only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

from node.client.client import PeerClient
from node.client.coordinator import CoordinatorClient, fetch_receipt
from node.client.routed import routed_verify
from node.errors import HeduiError
from node.member import Member


RECEIPTS: dict[str, Any] = {}


class Recording(CoordinatorClient):
    """A coordinator client that keeps the registration requests it sent (their signed bodies carry the nonces)."""

    def __init__(self, member: Member) -> None:
        super().__init__(member)
        self.sent: list[Any] = []

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        if method == "RegisterConsent":
            self.sent.append(request)
        return super().call(method, request, timeout=timeout)


def via(member: Member, endpoint: str | None) -> Member:
    """`member` talking to the coordinator replica at `endpoint` only (itself when None)."""
    if endpoint is None:
        return member
    return dataclasses.replace(member, cfg=dataclasses.replace(member.cfg, coordinator=endpoint,
                                                               coordinators=(endpoint,)))


def handle(member: Member, command: dict[str, Any]) -> dict[str, Any]:
    member = via(member, command.get("via"))
    if command["op"] == "grant":
        with Recording(member) as coordinator:
            consent_id = coordinator.grant(command["ids"], "dibao").consent_id
            return {"consent_id": consent_id, "request_body": coordinator.sent[-1].body.hex()}
    if command["op"] == "revoke":
        with CoordinatorClient(member) as coordinator:
            coordinator.revoke(command["consent_id"])
            return {"revoked": command["consent_id"]}
    if command["consent_id"] not in RECEIPTS:
        RECEIPTS[command["consent_id"]] = fetch_receipt(member, command["consent_id"])
    receipt = RECEIPTS[command["consent_id"]]
    started = time.monotonic()
    if command["op"] == "direct":  # straight to the holder at command["to"] (its pinned certificate from the directory)
        with PeerClient(member, command["to"], province=command["province"], deadline_s=command["deadline_s"]) as peer:
            direct = peer.verify(command["ids"], "dibao", command["checks"], consent=receipt)
        return {"elapsed_s": time.monotonic() - started, "answers": [
            {"province": a.province, "valid": a.signature_valid, "query_body": a.query_body.hex()} for a in direct.answers]}
    result = routed_verify(member, command["ids"], "dibao", command["checks"], consent=receipt,
                           deadline_s=command["deadline_s"])
    return {"elapsed_s": time.monotonic() - started, "routing": result.routing, "request_id": result.request_id,
            "answers": [{"province": a.province, "valid": a.signature_valid, "query_body": a.query_body.hex()}
                        for a in result.answers]}


def main() -> None:
    member = Member.from_config(sys.argv[1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        started = time.monotonic()
        try:
            reply = handle(member, json.loads(line))
        except HeduiError as exc:
            reply = {"error": str(exc), "elapsed_s": time.monotonic() - started}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
