"""Prometheus metrics of a node or coordinator, served on their own (configurable) port.

Labels carry method names, statuses, outcomes, province codes and refusal reasons: never a
subject, a token or a value. Several members in one process (tests, demos) share a registry
and are told apart by the `member` label. Counters move with single calls, so the port is
loopback-only unless it is served over TLS (`[metrics] tls_cert`/`tls_key`, optionally
`tls_client_ca` to require scrapers' certificates) or `allow_plain_remote = true` is set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from node.config import ConfigError, MemberConfig
from node.wire.v1 import common_pb2

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS = Histogram("hedui_call_seconds", "Handler latency by method and status", ["member", "method", "status"],
                  registry=REGISTRY, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
OUTCOMES = Counter("hedui_outcomes_total", "Check outcomes answered", ["member", "outcome"], registry=REGISTRY)
FANOUT = Counter("hedui_fanout_total", "Routed calls by destination province and status",
                 ["member", "province", "status"], registry=REGISTRY)
REFUSALS = Counter("hedui_refusals_total", "Refused calls by reason", ["member", "reason"], registry=REGISTRY)
CLAIMS = Counter("hedui_claims_total", "Held claims judged on routed queries (coordinator), by holder and verdict",
                 ["member", "province", "verdict"], registry=REGISTRY)
IMPLAUSIBLE = Gauge("hedui_claims_implausible_requesters",
                    "Requesters the coordinator no longer routes to this province for (contradicted claims)",
                    ["member", "province"], registry=REGISTRY)
LEDGER_CHANGES = Counter("hedui_ledger_changes_total", "Coordinator ledger epochs started or gone back, as a node saw them "
                         "(kind: new_epoch, restored, rolled_back, replaced)", ["member", "kind"], registry=REGISTRY)
AUDIT_LENGTH = Gauge("hedui_audit_chain_length", "Entries in the audit chain", ["member"], registry=REGISTRY)


@dataclass(frozen=True)
class MemberMetrics:
    """The metrics of one member, labelled with its identity (labelled children cached: hot path)."""

    member: str
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.member, *labels)
        return child

    def call(self, method: str, status: str, seconds: float) -> None:
        self._child(CALLS, method, status).observe(seconds)

    def refusal(self, reason: str) -> None:
        self._child(REFUSALS, reason).inc()

    def outcomes(self, counts: dict[str, int]) -> None:
        for outcome, n in counts.items():
            self._child(OUTCOMES, outcome).inc(n)

    def answered(self, results: Iterable[Any]) -> None:
        """Count the outcomes of an answer's results (wire `Result`s): one dict update per result, no name lookups."""
        counts: dict[int, int] = {}
        for r in results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        for code, n in counts.items():
            child = self._children.get((OUTCOMES, code))
            if child is None:  # the labelled child of an outcome code, named once
                child = self._children[(OUTCOMES, code)] = self._child(OUTCOMES, _outcome_name(code))
            child.inc(n)

    def fanout(self, province: str, status: str) -> None:
        FANOUT.labels(self.member, province, status).inc()

    def claims(self, province: str, confirmed: int, contradicted: int) -> None:
        if confirmed:
            self._child(CLAIMS, province, "confirmed").inc(confirmed)
        if contradicted:
            self._child(CLAIMS, province, "contradicted").inc(contradicted)

    def implausible(self, province: str, requesters: int) -> None:
        self._child(IMPLAUSIBLE, province).set(requesters)

    def ledger_change(self, kind: str) -> None:
        LEDGER_CHANGES.labels(self.member, kind).inc()

    def audit_length(self, n: int) -> None:
        AUDIT_LENGTH.labels(self.member).set(n)


def _outcome_name(code: int) -> str:
    try:
        return common_pb2.Outcome.Name(code)
    except ValueError:  # a code this build does not know: counted, not named after a peer's number
        return "UNKNOWN"


def listen_address(cfg: MemberConfig) -> tuple[str, int]:
    """The (host, port) metrics are served on; ConfigError when it is not HOST:PORT, or not
    loopback without TLS or the explicit `allow_plain_remote` opt-in."""
    listen = cfg.metrics_listen or ""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics address must be HOST:PORT, got {listen!r}")
    if bool(cfg.metrics_tls_cert) != bool(cfg.metrics_tls_key):
        raise ConfigError("metrics TLS needs both [metrics] tls_cert and tls_key")
    if cfg.metrics_tls_client_ca and not cfg.metrics_tls_cert:
        raise ConfigError("[metrics] tls_client_ca needs tls_cert and tls_key")
    if not (_is_loopback(host) or cfg.metrics_tls_cert or cfg.metrics_allow_plain_remote):
        raise ConfigError(f"metrics on {listen} would be plain HTTP beyond this host: listen on 127.0.0.1, "
                          "set [metrics] tls_cert and tls_key, or set [metrics] allow_plain_remote = true")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: MemberConfig) -> tuple[Any, int]:
    """Expose the registry at `cfg.metrics_listen` (port 0 picks one), over TLS when configured; return (server, port)."""
    host, port = listen_address(cfg)
    tls: dict[str, Any] = {}
    if cfg.metrics_tls_cert and cfg.metrics_tls_key:
        tls = {"certfile": str(cfg.metrics_tls_cert), "keyfile": str(cfg.metrics_tls_key)}
        if cfg.metrics_tls_client_ca:
            tls |= {"client_cafile": str(cfg.metrics_tls_client_ca), "client_auth_required": True}
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY, **tls)
    return server, server.server_port
