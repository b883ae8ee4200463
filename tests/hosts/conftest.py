"""A federation across namespace hosts: coordinator, Guangdong, two replicas of Sichuan, the requester (and PostgreSQL) each on its own host."""

from __future__ import annotations

import json
import shutil
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
from node.testing.postgres import PostgresServer, PostgresUnavailable, put_on_postgres

ROOT = Path(__file__).resolve().parents[2]
HEDUI = [sys.executable, "-m", "node.cli.main"]
PORT = 7443  # every host has its own stack: one fixed port per host cannot collide
#: The stores the two Sichuan replicas share: "sqlite" = one data directory on the common filesystem;
#: "postgresql" = one database on the PostgreSQL server on host `pg`, each replica with its own data directory.
REPLICA_STORES = ["sqlite", "postgresql"]


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
    replica_configs: dict[str, Path] = field(default_factory=dict)  # host -> the config its 51 replica serves
    postgres: PostgresServer | None = None

    def member(self, code: str) -> Member:
        return Member.from_config(self.configs[code])

    def local_config(self, config: Path) -> Path:
        """`config` as the test process (in the root namespace, no route to the hosts) opens its store: the same
        database over PostgreSQL's unix socket instead of TCP on host pg; the config itself for SQLite."""
        return local_config(config, self.postgres)


def local_config(config: Path, server: PostgresServer | None) -> Path:
    """A copy of `config` whose [store] url reaches `server` over its unix socket (the config itself without one)."""
    import tomllib
    from urllib.parse import urlsplit

    data = tomllib.loads(config.read_text(encoding="utf-8"))
    if server is None or "store" not in data:
        return config
    data["store"]["url"] = server.url(urlsplit(data["store"]["url"]).path.lstrip("/"))
    path = config.with_name(f"{config.stem}-local.toml")
    config_mod.write(path, data)
    return path


def open_network() -> Network:
    """A new namespace network, or the test fails with the reason (never a skip)."""
    try:
        return Network()
    except NetnsUnavailable as exc:
        pytest.fail(f"tests across hosts cannot run: {exc}")


def postgres_on(host: Host) -> PostgresServer:
    """A throwaway PostgreSQL server run inside `host`'s namespace, on TCP at the host's address."""
    try:
        return PostgresServer(host=host.address, wrap=host.argv([])).start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL cannot run on host {host.name}: {exc}")


def second_replica(config: Path, name: str) -> Path:
    """A copy of node `config` for another replica host: same identity, keys (copied) and [store], own data_dir."""
    import tomllib

    data = tomllib.loads(config.read_text(encoding="utf-8"))
    old = Path(data["member"]["data_dir"])
    new = old.with_name(f"{old.name}-{name}")
    new.mkdir(mode=0o700)
    shutil.copytree(old / "keys", new / "keys")
    data["member"]["data_dir"] = str(new)
    data["keys"] = {k: str(v).replace(str(old), str(new)) if isinstance(v, str) else v for k, v in data["keys"].items()}
    path = config.with_name(f"{config.stem}-{name}.toml")
    config_mod.write(path, data)
    return path


@pytest.fixture(params=REPLICA_STORES)
def replica_store(request: pytest.FixtureRequest) -> str:
    """The store both Sichuan replicas share: "sqlite" is one data directory on the common filesystem."""
    return str(request.param)


@pytest.fixture
def hosted(planted: dict[str, Path], tmp_path: Path, replica_store: str) -> Iterator[HostedFederation]:
    """coordinator on `coord`, Guangdong (44) on `gd`, Sichuan (51) on `sc1` and `sc2` from one store, the
    requester (32) on `req` (and, for "postgresql", the PostgreSQL server on `pg` holding every store); every
    process is ended, the server stopped and every namespace deleted afterwards, whatever happens."""
    net = open_network()
    with net:
        names = ["coord", "gd", "sc1", "sc2", "req"] + (["pg"] if replica_store == "postgresql" else [])
        hosts = {name: net.host(name) for name in names}
        server = postgres_on(hosts["pg"]) if replica_store == "postgresql" else None
        try:
            yield _federation(net, hosts, server, planted, tmp_path)
        finally:
            if server is not None:
                server.close()


def _federation(net: Network, hosts: dict[str, Host], server: PostgresServer | None, planted: dict[str, Path],
                tmp_path: Path) -> HostedFederation:
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
    if server is not None:  # the coordinator, 44 and 51 each in their own database, reached over TCP on host pg
        put_on_postgres([coordinator, configs["44"], configs["51"]], server, tcp=True)
        replicas = {"sc1": configs["51"], "sc2": second_replica(configs["51"], "sc2")}
    else:  # one config, one data directory on the common filesystem: one store
        replicas = {"sc1": configs["51"], "sc2": configs["51"]}
    for code in ("44", "51"):
        member = Member.from_config(local_config(configs[code], server))
        with open_storage(member.cfg) as storage:
            ingest_file(storage.facts(), planted[code], linkage_key=member.linkage_key, catalogue=member.catalogue)
    served = {"coordinator": serve(hosts["coord"], "coordinator", coordinator)}
    served["gd"] = serve(hosts["gd"], "node", configs["44"])
    served["sc1"] = serve(hosts["sc1"], "node", replicas["sc1"])
    served["sc2"] = serve(hosts["sc2"], "node", replicas["sc2"])
    return HostedFederation(net, hosts, configs, coordinator, served, Requester(hosts["req"], configs["32"]),
                            replicas, server)


#: Whether the two coordinator replicas keep separate data directories: they do, since the coordinator's
#: directory announcements, standards and locators are in Storage (branch `coordstate`, merged). False puts
#: them on ONE data directory on the common filesystem (what these tests had to do before coordstate).
COORDINATOR_DATA_DIRS_SEPARATE = True


@dataclass
class CoordinatedFederation:
    """Two coordinator replicas on hosts coord1/coord2 sharing one PostgreSQL database (host pg), Guangdong (44)
    on gd, Sichuan (51) on sc and the requester (32) on req, every member configured with both coordinators."""

    net: Network
    hosts: dict[str, Host]
    configs: dict[str, Path]
    coordinator_configs: dict[str, Path]  # host -> its coordinator config
    served: dict[str, Served]
    requester: Requester
    postgres: PostgresServer

    def endpoint(self, host: str) -> str:
        return f"{self.hosts[host].address}:{PORT}"

    def local_config(self, config: Path) -> Path:
        return local_config(config, self.postgres)


@pytest.fixture
def coordinated(planted: dict[str, Path], tmp_path: Path) -> Iterator[CoordinatedFederation]:
    """The federation of CoordinatedFederation; every process is ended, the server stopped and every namespace
    deleted afterwards, whatever happens."""
    import tomllib

    net = open_network()
    with net:
        hosts = {name: net.host(name) for name in ("coord1", "coord2", "gd", "sc", "req", "pg")}
        server = postgres_on(hosts["pg"])
        try:
            coordinators = [f"{hosts[h].address}:{PORT}" for h in ("coord1", "coord2")]
            pki = tmp_path / "pki"
            init_pki(pki)
            issue_member(pki, "coordinator", hosts=[hosts["coord1"].address, hosts["coord2"].address])
            configs = {}
            for code, on in {"32": "req", "44": "gd", "51": "sc"}.items():
                issue_member(pki, code, hosts=[hosts[on].address])
                configs[code] = write_node_config(tmp_path, pki, code, coordinator=coordinators[0])
                data = tomllib.loads(configs[code].read_text(encoding="utf-8"))
                data["member"]["coordinator"] = coordinators  # both replicas, in order
                config_mod.write(configs[code], data)
            coordinator_configs = {}
            for n, host in enumerate(("coord1", "coord2")):
                data_dir = tmp_path / (f"coordinator-{host}" if COORDINATOR_DATA_DIRS_SEPARATE else "coordinator")
                path = tmp_path / f"coordinator-{host}.toml"
                config_mod.write(path, coordinator_config(pki, coordinators[n], data_dir))
                coordinator_configs[host] = path
            url = put_on_postgres([coordinator_configs["coord1"]], server, tcp=True)[coordinator_configs["coord1"]]
            data = tomllib.loads(coordinator_configs["coord2"].read_text(encoding="utf-8"))
            data["store"] = {"url": url}  # the one database both replicas serve from
            config_mod.write(coordinator_configs["coord2"], data)
            for code in ("44", "51"):
                member = Member.from_config(configs[code])
                with open_storage(member.cfg) as storage:
                    ingest_file(storage.facts(), planted[code], linkage_key=member.linkage_key,
                                catalogue=member.catalogue)
            served = {h: serve(hosts[h], "coordinator", coordinator_configs[h]) for h in ("coord1", "coord2")}
            served["gd"] = serve(hosts["gd"], "node", configs["44"])
            served["sc"] = serve(hosts["sc"], "node", configs["51"])
            yield CoordinatedFederation(net, hosts, configs, coordinator_configs, served,
                                        Requester(hosts["req"], configs["32"]), server)
        finally:
            server.close()
