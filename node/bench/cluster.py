"""The bench's federations: the coordinator in a process of its own (as deployed), the province nodes in this one.

With the coordinator on the nodes' event loop, the consent feed starved under load: grpc.aio admits one
new call per loop iteration, every long iteration (a node's batch work) released all nodes' 1 s poll
timers at once, and their ConsentUpdates waited behind one another for the coordinator's accepts until
they missed their 3 s deadline, so nodes failed closed (UNAVAILABLE) for reasons no deployment has.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from node.bench.config import BenchError
from node.bench.harness import _cpu_seconds, proc_cpu, stop_process

COORDINATOR_START_S = 120.0  # at most, for `hedui coordinator serve` to bind and write its port file


@contextlib.contextmanager
def coordinator_process(config: Path, log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`hedui coordinator serve --config CONFIG` on a free port; (process, port) once it serves; SIGTERM on exit."""
    port_file = log_path.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "node.cli.main", "coordinator", "serve", "--config", str(config),
           "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            while not (port_file.exists() and port_file.read_text(encoding="ascii").strip()):
                if proc.poll() is not None or time.perf_counter() - started > COORDINATOR_START_S:
                    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                    raise BenchError(f"coordinator serve did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.05)  # polling a child process's port file, not a test
            yield proc, int(port_file.read_text(encoding="ascii").strip())
        finally:
            stop_process(proc)


@contextlib.contextmanager
def bench_cluster(provinces: Sequence[str], *, root: Path, data: dict[str, Path] | None = None,
                  store: str = "sqlite") -> Iterator[Any]:
    """A federation as node.testing.cluster.run_cluster builds it, but its coordinator a subprocess.

    Yields the Federation (nodes in this process on `fed.loop`), with `fed.coordinator_pid` set and
    `fed.server_cpu()` the CPU seconds so far of every serving process (this one, the coordinator and,
    with `store="postgresql"`, the throwaway PostgreSQL server every member keeps its own database on).
    """
    from node.testing.cluster import LoopThread, build_federation, set_coordinator

    fed = build_federation(root, provinces, data=None if store == "postgresql" else data)
    assert fed.coordinator_config is not None
    with contextlib.ExitStack() as stack:
        pg_pids: Callable[[], list[int]] = list
        if store == "postgresql":
            from node.testing.postgres import PostgresServer, put_on_postgres

            server = stack.enter_context(PostgresServer(settings={"max_connections": "800"}))  # its own dir in /tmp
            put_on_postgres([fed.coordinator_config, *fed.configs.values()], server)
            for code, path in (data or {}).items():
                fed.ingest(code, path)
            pg_pids = server.pids
        proc, port = stack.enter_context(coordinator_process(fed.coordinator_config, root / "coordinator.log"))
        fed.coordinator_port = port
        fed.addresses["coordinator"] = f"127.0.0.1:{port}"
        for path in fed.configs.values():
            set_coordinator(path, fed.addresses["coordinator"])
        fed.loop = LoopThread()
        stack.callback(fed.loop.close)
        fed.coordinator_pid = proc.pid
        fed.server_cpu = serving_cpu(proc.pid, also=pg_pids)
        try:
            for code in provinces:
                fed.start_node(code)
            yield fed
        finally:
            for code in list(fed.servers):
                fed.stop_node(code)


def serving_cpu(*pids: int, also: Callable[[], list[int]] = list) -> Callable[[], float]:
    """CPU seconds so far of this process, of `pids` (the bench's serving processes) and of the processes
    `also()` names at each reading (a PostgreSQL server's backends come and go)."""
    return lambda: _cpu_seconds() + sum(proc_cpu(pid) for pid in (*pids, *also()))

