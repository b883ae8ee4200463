"""Federations for tests and demos: PKI, node configs, data, and servers on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from node import config as config_mod
from node.cli.node_cmd import install_member_keys
from node.crypto.pki import init_pki, issue_member
from node.domain.regions import province_uri
from node.member import Member
from node.store.ingest import ingest_file
from node.store.factory import open_storage

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop in a daemon thread, for hosting servers inside synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hedui-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def set_coordinator(cfg_path: Path, address: str) -> None:
    """Point a node config at a coordinator address."""
    import tomllib

    data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    data["member"]["coordinator"] = address
    config_mod.write(cfg_path, data)


def write_node_config(root: Path, pki: Path, code: str, *, coordinator: str | None = None,
                      extra: dict[str, Any] | None = None) -> Path:
    """Set up one province node under `root/nodeCODE` (as `hedui node init` does) and return its config path."""
    data_dir = (root / f"node{code}").resolve()
    keys = install_member_keys(pki, code, data_dir, linkage=True)
    member: dict[str, Any] = {"identity": province_uri(code), "province": code, "listen": "127.0.0.1:0",
                              "data_dir": str(data_dir)}
    if coordinator:
        member["coordinator"] = coordinator
    cfg_path = root / f"node{code}.toml"
    config_mod.write(cfg_path, {"member": member, "keys": keys, **(extra or {})})
    with open_storage(config_mod.load(cfg_path)) as storage:
        storage.facts().close()
    return cfg_path


@dataclass
class Federation:
    """A running (or built) federation: where everything is, and handles to its servers."""

    root: Path
    pki: Path
    configs: dict[str, Path]
    loop: LoopThread | None = None
    servers: dict[str, Any] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    coordinator_config: Path | None = None
    coordinator_port: int | None = None

    def member(self, code: str) -> Member:
        return Member.from_config(self.configs[code])

    def coordinator(self, code: str, *, deadline_s: float | None = None) -> Any:
        """A CoordinatorClient acting as province `code`."""
        from node.client.coordinator import CoordinatorClient

        return CoordinatorClient(self.member(code), deadline_s=deadline_s)

    def grant(self, code: str, ids: Sequence[str], purpose: str = "dibao", **kw: Any) -> Any:
        """Register a consent as province `code`; returns the ConsentInfo."""
        with self.coordinator(code) as c:
            return c.grant(ids, purpose, **kw)

    def revoke(self, code: str, consent_id: str) -> Any:
        with self.coordinator(code) as c:
            return c.revoke(consent_id)

    def receipt(self, code: str, consent_id: str) -> Any:
        from node.client.coordinator import fetch_receipt

        return fetch_receipt(self.member(code), consent_id)

    def verify(self, code: str, ids: Sequence[str], checks: Sequence[str], *, consent_id: str,
               purpose: str = "dibao", to: str | None = None, deadline_s: float | None = None) -> Any:
        """Verify as province `code`: routed through the coordinator, or directly `to` a province."""
        from node.client.routed import routed_verify

        receipt = self.receipt(code, consent_id)
        if to is None:
            return routed_verify(self.member(code), ids, purpose, checks, consent=receipt, deadline_s=deadline_s)
        with self.client(code, to=to, deadline_s=deadline_s) as peer:
            return peer.verify(ids, purpose, checks, consent=receipt)

    def household(self, code: str, ids: Sequence[str], region: str, *, consent_id: str, purpose: str = "dibao",
                  period: str | None = None, deadline_s: float | None = None) -> Any:
        """The household means test as province `code` (node.client.household): a HouseholdResult."""
        from node.client.household import household_check

        return household_check(self.member(code), ids, purpose, region, consent=self.receipt(code, consent_id),
                               period=period, deadline_s=deadline_s)

    def household_batch(self, code: str, households: Sequence[tuple[str, Sequence[str], str, str]], *,
                        purpose: str = "dibao", period: str | None = None, chunk: int = 128) -> list[dict[str, Any]]:
        """The household means test for many households as province `code` (node.client.household_batch):
        `households` are (key, ID numbers, region, consent id); one result line per household, in order."""
        from node.client.household_batch import BatchHousehold, household_check_batch

        return household_check_batch(self.member(code), [
            BatchHousehold(key, ids, region, self.receipt(code, consent_id)) for key, ids, region, consent_id in households
        ], purpose, period=period, chunk=chunk)

    def publish_standards(self, code: str, path: Path) -> Any:
        """Publish a standards document (TOML) as province `code`; it is in the directory from then on."""
        from node.client.standards import publish_standards

        return publish_standards(self.member(code), path)

    def start_coordinator(self) -> int:
        """Start (or restart) the coordinator; point every node config at it."""
        from node.coordinator.server import CoordinatorServer

        assert self.loop is not None and self.coordinator_config is not None
        cfg = config_mod.load(self.coordinator_config)
        port = self.coordinator_port or 0
        server = CoordinatorServer(cfg)
        port = self.loop.run(server.start(f"127.0.0.1:{port}"))
        self.servers["coordinator"] = server
        self.coordinator_port = port
        self.addresses["coordinator"] = f"127.0.0.1:{port}"
        for path in self.configs.values():
            set_coordinator(path, self.addresses["coordinator"])
        return port

    def client(self, code: str, *, to: str, deadline_s: float | None = None, province: str | None = None) -> Any:
        """A synchronous PeerClient of province `code` talking to province `to` (or a HOST:PORT, the
        province then found in the directory; `province` names it instead)."""
        from node.client.client import PeerClient

        expected = province or (to if to in self.configs else None)
        return PeerClient(self.member(code), self.addresses.get(to, to), province=expected, deadline_s=deadline_s)

    def start_node(self, code: str, server_class: type | None = None) -> int:
        """Start (or restart) one province's node on a fresh port; return the port.

        `server_class` (a NodeServer subclass, e.g. a hostile member in a security test) runs instead.
        """
        from node.server.node_server import NodeServer

        assert self.loop is not None
        server = (server_class or NodeServer)(config_mod.load(self.configs[code]))
        port = self.loop.run(server.start())
        self.servers[code] = server
        self.addresses[code] = f"127.0.0.1:{port}"
        return port

    def stop_node(self, code: str, grace: float = 0) -> None:
        """Stop one province's node or the coordinator (its address stays known, so calls fail as unreachable)."""
        assert self.loop is not None
        server = self.servers.pop(code)
        self.loop.run(server.stop(grace))

    def ingest(self, code: str, path: Path) -> None:
        m = self.member(code)
        with open_storage(m.cfg) as storage, storage.facts() as store:
            ingest_file(store, path, linkage_key=m.linkage_key, catalogue=m.catalogue)


def build_federation(root: Path, provinces: Sequence[str], *, data: dict[str, Path] | None = None,
                     config_extra: dict[str, Any] | None = None,
                     coordinator_extra: dict[str, Any] | None = None) -> Federation:
    """Create PKI, keys and node configs for `provinces` under `root`, and ingest `data` per province.

    `config_extra` adds tables to every node config, `coordinator_extra` to the coordinator's
    (e.g. {"claims": {"min_sample": 3}}).
    """
    from node.cli.coordinator_cmd import coordinator_config

    pki = root / "pki"
    init_pki(pki)
    configs = {}
    for code in provinces:
        issue_member(pki, code, loopback=True)
        configs[code] = write_node_config(root, pki, code, extra=config_extra)
    issue_member(pki, "coordinator", loopback=True)
    coordinator = root / "coordinator.toml"
    config_mod.write(coordinator, {**coordinator_config(pki, "127.0.0.1:0", root / "coordinator"),
                                   **(coordinator_extra or {})})
    fed = Federation(root=root, pki=pki, configs=configs, coordinator_config=coordinator)
    for code, path in (data or {}).items():
        fed.ingest(code, path)
    return fed


@contextlib.contextmanager
def run_cluster(
    provinces: Sequence[str] = ("32", "44", "51"),
    *,
    root: Path | None = None,
    data: dict[str, Path] | None = None,
    config_extra: dict[str, Any] | None = None,
    coordinator_extra: dict[str, Any] | None = None,
) -> Iterator[Federation]:
    """Build a federation in a temp dir (or `root`); start the coordinator and every node on port 0.

    Every node has announced itself and synced consent state when this yields. All stop on exit.
    """
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hedui-")))
        fed = build_federation(root, provinces, data=data, config_extra=config_extra,
                               coordinator_extra=coordinator_extra)
        fed.loop = LoopThread()
        stack.callback(fed.loop.close)
        try:
            fed.start_coordinator()
            for code in provinces:
                fed.start_node(code)
            yield fed
        finally:
            for code in sorted(fed.servers, key=lambda c: c == "coordinator"):
                fed.stop_node(code)
