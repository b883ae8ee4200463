"""Waiting for a member to be ready: its server answers health checks over mutual TLS and, for a
province node, the coordinator's directory routes to it and holds its locator (`hedui node wait`,
`hedui coordinator wait`)."""

from __future__ import annotations

import threading
import time
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.client.client import PeerRefused, PeerUnreachable, translate
from node.client.coordinator import CoordinatorClient
from node.config import MemberConfig
from node.crypto import discovery
from node.domain.regions import COORDINATOR_TLS_NAME, province_tls_name
from node.errors import BadInput
from node.member import Member
from node.server import tls
from node.wire.v1 import coordinator_pb2

#: How often the coordinator's directory is asked again while a node's announcement is awaited.
DIRECTORY_POLL_S: Final[float] = 0.1
_WILDCARD_HOSTS: Final[frozenset[str]] = frozenset({"0.0.0.0", "::", "[::]", ""})
_RETRY: Final[frozenset[grpc.StatusCode]] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def dial_address(cfg: MemberConfig) -> str:
    """Where this member's own server is reached from this host: its listen address, loopback for a wildcard."""
    host, _, port = cfg.listen.rpartition(":")
    if port == "0":
        raise BadInput(f"{cfg.path} listens on port 0 (any free port): give the bound port with --to HOST:PORT")
    return f"127.0.0.1:{port}" if host in _WILDCARD_HOSTS else cfg.listen


def wait_ready(member: Member, *, timeout_s: float, address: str | None = None) -> str:
    """Block until the member's server reports SERVING (and, for a node, the coordinator's directory
    lists its province); return the address dialled. PeerUnreachable when `timeout_s` passes first."""
    if not 0 < timeout_s <= 3600:
        raise BadInput("--timeout must be more than 0 and at most 3600 seconds")
    cfg = member.cfg
    deadline = time.monotonic() + timeout_s
    target = address or dial_address(cfg)
    _wait_serving(cfg, target, deadline, timeout_s)
    if cfg.province is not None and cfg.coordinator:
        _wait_listed(member, deadline, timeout_s)
    return target


def _remaining(deadline: float, what: str, timeout_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise PeerUnreachable("DEADLINE_EXCEEDED", f"{what} not ready within {timeout_s:g} s")
    return left


def _wait_serving(cfg: MemberConfig, target: str, deadline: float, timeout_s: float) -> None:
    """Watch the server's overall health until it is SERVING (no polling: the server pushes changes)."""
    own = province_tls_name(cfg.province) if cfg.province is not None else COORDINATOR_TLS_NAME  # this member's server
    with grpc.secure_channel(target, tls.channel_credentials(cfg),
                             options=tls.channel_options(cfg.limits, server_name=own)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left = _remaining(deadline, target, timeout_s)
            try:
                for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=left, wait_for_ready=True):
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY:
                    raise translate(exc) from None


def _wait_listed(member: Member, deadline: float, timeout_s: float) -> None:
    """Ask the coordinator's directory until it lists this province (the node has announced itself) and
    the coordinator holds its locator for the current discovery epoch (its subjects can be found)."""
    what = f"province {member.province} in the coordinator's directory"
    pause = threading.Event()
    with CoordinatorClient(member, deadline_s=_remaining(deadline, what, timeout_s)) as coordinator:
        while True:
            left = coordinator.deadline_s = _remaining(deadline, what, timeout_s)
            try:
                entries = coordinator.directory(max_age_s=0)
            except PeerUnreachable:
                entries = {}
            if member.province in entries and _located(coordinator):
                return
            pause.wait(min(DIRECTORY_POLL_S, left))


def _located(coordinator: CoordinatorClient) -> bool:
    """Whether the coordinator holds this province's locator for the current discovery epoch (else a
    routed query right now would not find the node's subjects)."""
    try:
        epoch = discovery.current_epoch(coordinator.discovery_epoch_s())
        held = coordinator.call("HeldLocators", coordinator_pb2.HeldLocatorsRequest())
    except (PeerUnreachable, BadInput):
        return False
    except PeerRefused:  # a coordinator that cannot say: the directory listing has to do
        return True
    return any(h.epoch == epoch for h in held.locators)
