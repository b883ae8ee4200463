"""Replicas on different hosts (different data dirs) sharing one PostgreSQL agree on the state that is not a chain.

Each test starts a second replica of a real member from the same config with another data_dir, as a
second host would, on the same database: what one replica records, the other must see (issue 14).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import config as config_mod
from node.client.standards import sign_standards
from node.domain.standards import parse_standards
from node.errors import Refusal
from node.coordinator.server import CoordinatorServer
from node.server.node_server import NodeServer
from node.testing.cluster import Federation, LoopThread, build_federation
from node.testing.postgres import PostgresServer, put_on_postgres

_STANDARDS = """
province = "44"
version = 1
example = true
[[standard]]
region = "440100"
name_zh = "测试市"
name_en = "Test city"
purpose = "dibao"
period_from = "2024-01"
standard_per_person = 90000
income_monthly = ["income_monthly"]
rules = ["income"]
source = "test figure"
"""


@pytest.fixture
def fed(tmp_path: Path, planted: dict[str, Path], postgres_server: PostgresServer) -> Iterator[Federation]:
    """Coordinator and Guangdong (44) on their own PostgreSQL databases, over real mutual TLS on loopback."""
    federation = build_federation(tmp_path, ["44"])
    assert federation.coordinator_config is not None
    put_on_postgres([federation.coordinator_config, *federation.configs.values()], postgres_server)
    federation.ingest("44", planted["44"])
    federation.loop = LoopThread()
    with contextlib.ExitStack() as stack:
        stack.callback(federation.loop.close)
        try:
            federation.start_coordinator()
            federation.start_node("44")
            yield federation
        finally:
            for code in sorted(federation.servers, key=lambda c: c == "coordinator"):
                federation.stop_node(code)


def _host_dir(tmp_path: Path, name: str) -> Path:
    """The other host's data directory (created, as `hedui node init` would have)."""
    path = tmp_path / name
    path.mkdir(mode=0o700)
    return path


@contextlib.contextmanager
def _second(fed: Federation, server: object) -> Iterator[object]:
    assert fed.loop is not None
    started = False
    try:
        fed.loop.run(server.start("127.0.0.1:0") if isinstance(server, CoordinatorServer)  # type: ignore[attr-defined]
                     else server.start())  # type: ignore[attr-defined]
        started = True
        yield server
    finally:
        if started:
            fed.loop.run(server.stop(0))  # type: ignore[attr-defined]


def test_a_probe_counted_by_one_node_replica_counts_at_the_other(fed: Federation, tmp_path: Path) -> None:
    """A budgeted cut admitted at replica 1 uses the budget replica 2 (another host's data dir) enforces."""
    cfg = dataclasses.replace(config_mod.load(fed.configs["44"]), data_dir=_host_dir(tmp_path, "host2"))
    one = fed.servers["44"]
    with _second(fed, NodeServer(cfg)) as two:
        assert one.probes.admit("32", "c-1", {"income": "<5000"}, 1) == (None, 1)
        assert two.probes.uses("32", "c-1", "income") == 1  # type: ignore[attr-defined]
        assert two.probes.admit("32", "c-1", {"income": "<6000"}, 1) == ("income", 0)  # type: ignore[attr-defined]
    assert not (tmp_path / "host2" / "probes.sqlite").exists()


def test_one_checkpoint_lead_and_one_locator_publisher_across_replica_hosts(fed: Federation, tmp_path: Path) -> None:
    """Of two node replicas on two data dirs, only one leads checkpoint lodging and locator publication."""
    cfg = dataclasses.replace(config_mod.load(fed.configs["44"]), data_dir=_host_dir(tmp_path, "host2"))
    one = fed.servers["44"]
    assert one.link is not None and one.link.locators is not None
    assert one.link._lead.held() and one.link.locators._lead.held()
    with _second(fed, NodeServer(cfg)) as two:
        link = two.link  # type: ignore[attr-defined]
        assert link._lead.held() is False
        assert link.locators._lead.held() is False
        one.link._lead.release()
        one.link.locators._lead.release()
        assert link._lead.held() is True and link.locators._lead.held() is True
        assert one.link._lead.held() is False


def test_coordinator_replicas_on_two_hosts_share_announcements_locators_and_standards(fed: Federation, tmp_path: Path) -> None:
    """A node's announcement, locator and standards lodged at coordinator 1 are served by coordinator 2 (another data dir)."""
    assert fed.coordinator_config is not None
    cfg = dataclasses.replace(config_mod.load(fed.coordinator_config), data_dir=_host_dir(tmp_path, "coord-host2"))
    one = fed.servers["coordinator"]
    assert "44" in one.servicer.directory.entries()
    with _second(fed, CoordinatorServer(cfg)) as two:
        directory = two.servicer.directory  # type: ignore[attr-defined]
        assert directory.entries()["44"].endpoint == one.servicer.directory.entries()["44"].endpoint
        epoch = next(iter(one.router.locators.epochs())) + 1
        held = one.router.locators.held("44", epoch)
        assert held is not None
        again = two.router.locators.held("44", epoch)  # type: ignore[attr-defined]
        assert again is not None and again.generation == held.generation
        member = fed.member("44")
        doc = parse_standards(_STANDARDS, member.catalogue, member.policy)
        one.servicer.directory.standards.publish("44", sign_standards(member, doc))
        published = two.servicer.directory.standards  # type: ignore[attr-defined]
        assert published.revision() == (("44", 1),)
        with pytest.raises(Refusal):  # the version in force at replica 1 binds replica 2
            published.publish("44", sign_standards(member, doc))
    assert not (tmp_path / "coord-host2" / "directory.json").exists()
    assert not (tmp_path / "coord-host2" / "locators.sqlite").exists()
    assert not (tmp_path / "coord-host2" / "standards.json").exists()
