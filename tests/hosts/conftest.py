"""A federation across namespace hosts: coordinator, Guangdong, two replicas of Sichuan, and the requester each on its own host."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node import config as config_mod
from node.cli.coordinator_cmd import coordinator_config
from node.crypto.pki import init_pki, issue_member
from node.member import Member
from node.store.ingest import ingest_file
from node.store.factory import open_storage
from node.testing.cluster import write_node_config
from node.testing.netns import Host, Network, NetnsUnavailable

ROOT = Path(__file__).resolve().parents[2]
HEDUI = [sys.executable, "-m", "node.cli.main"]
PORT = 7443  # every host has its own stack: one fixed port per host cannot collide
#: The stores the two Sichuan replicas can share; the lead adds "postgresql" (node.testing.postgres) here.
REPLICA_STORES = ["sqlite"]


@dataclass
class Served:
    """A `serve` process on a host and the JSON log lines it wrote (read by a thread)."""

    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def answered(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "answered"]


def serve(host: Host, role: str, config: Path, timeout: float = 90) -> Served:
    """`hedui ROLE serve` on `host` at HOST:7443; returned once it logs "serving" (readiness, no sleep)."""
    proc = host.popen([*HEDUI, "--log-level", "debug", role, "serve", "--config", str(config),
                       "--listen", f"{host.address}:{PORT}"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    served = Served(proc)
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            served.events.append(event)
            if event.get("event") == "serving":
                ready.set()
        ready.set()  # exited: the wait below sees it

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or proc.poll() is not None:
        raise AssertionError(f"{role} on {host.name} did not start: {served.events[-5:]}")
    return served


class Requester:
    """Province 32's client on its own host (tests/hosts/requester.py), one JSON command per call."""

    def __init__(self, host: Host, config: Path) -> None:
        self.proc = host.popen([sys.executable, "-m", "tests.hosts.requester", str(config)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the requester exited"
        return line

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(self._line())
        return reply


@dataclass
class HostedFederation:
    """The network, its hosts, the configs, and the processes serving."""

    net: Network
    hosts: dict[str, Host]
    configs: dict[str, Path]
    coordinator_config: Path
    served: dict[str, Served]
    requester: Requester

    def member(self, code: str) -> Member:
        return Member.from_config(self.configs[code])


@pytest.fixture(params=REPLICA_STORES)
def replica_store(request: pytest.FixtureRequest) -> str:
    """The store both Sichuan replicas share: "sqlite" is one data directory on the common filesystem."""
    return str(request.param)


@pytest.fixture
def hosted(planted: dict[str, Path], tmp_path: Path, replica_store: str) -> Iterator[HostedFederation]:
    """coordinator on `coord`, Guangdong (44) on `gd`, Sichuan (51) on `sc1` and `sc2` from one store, the
    requester (32) on `req`; every process is ended and every namespace deleted afterwards, whatever happens."""
    if replica_store != "sqlite":  # the seam: give node 51's config the store's [store] url here
        pytest.fail(f"replica store {replica_store!r} is not wired into tests/hosts/conftest.py yet")
    try:
        net = Network()
    except NetnsUnavailable as exc:
        pytest.fail(f"tests across hosts cannot run: {exc}")
    with net:
        hosts = {name: net.host(name) for name in ("coord", "gd", "sc1", "sc2", "req")}
        coordinator_at = f"{hosts['coord'].address}:{PORT}"
        pki = tmp_path / "pki"
        init_pki(pki)
        issue_member(pki, "coordinator", hosts=[hosts["coord"].address])
        names = {"32": ["req"], "44": ["gd"], "51": ["sc1", "sc2"]}
        configs = {}
        for code, on in names.items():  # the TLS certificates name the hosts' addresses
            issue_member(pki, code, hosts=[hosts[h].address for h in on])
            configs[code] = write_node_config(tmp_path, pki, code, coordinator=coordinator_at)
        coordinator = tmp_path / "coordinator.toml"
        config_mod.write(coordinator, coordinator_config(pki, coordinator_at, tmp_path / "coordinator"))
        for code in ("44", "51"):
            member = Member.from_config(configs[code])
            with open_storage(member.cfg) as storage:
                ingest_file(storage.facts(), planted[code], linkage_key=member.linkage_key, catalogue=member.catalogue)
        served = {"coordinator": serve(hosts["coord"], "coordinator", coordinator)}
        served["gd"] = serve(hosts["gd"], "node", configs["44"])
        served["sc1"] = serve(hosts["sc1"], "node", configs["51"])  # one config, one data directory: one store
        served["sc2"] = serve(hosts["sc2"], "node", configs["51"])
        yield HostedFederation(net, hosts, configs, coordinator, served, Requester(hosts["req"], configs["32"]))

