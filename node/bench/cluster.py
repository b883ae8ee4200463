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
def bench_cluster(provinces: Sequence[str], *, root: Path, data: dict[str, Path] | None = None) -> Iterator[Any]:
    """A federation as node.testing.cluster.run_cluster builds it, but its coordinator a subprocess.

    Yields the Federation (nodes in this process on `fed.loop`), with `fed.coordinator_pid` set and
    `fed.server_cpu()` the CPU seconds so far of every serving process (this one and the coordinator).
    """
    from node.testing.cluster import LoopThread, build_federation, set_coordinator

    fed = build_federation(root, provinces, data=data)
    assert fed.coordinator_config is not None
    with contextlib.ExitStack() as stack:
        proc, port = stack.enter_context(coordinator_process(fed.coordinator_config, root / "coordinator.log"))
        fed.coordinator_port = port
        fed.addresses["coordinator"] = f"127.0.0.1:{port}"
        for path in fed.configs.values():
            set_coordinator(path, fed.addresses["coordinator"])
        fed.loop = LoopThread()
        stack.callback(fed.loop.close)
        fed.coordinator_pid = proc.pid
        fed.server_cpu = serving_cpu(proc.pid)
        try:
            for code in provinces:
                fed.start_node(code)
            yield fed
        finally:
            for code in list(fed.servers):
                fed.stop_node(code)


def serving_cpu(*pids: int) -> Callable[[], float]:
    """CPU seconds so far of this process and of `pids` (the bench's serving processes)."""
    return lambda: _cpu_seconds() + sum(proc_cpu(pid) for pid in pids)

