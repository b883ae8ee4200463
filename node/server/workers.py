"""`--workers N`: several server processes on one port (SO_REUSEPORT), sharing the member's data.

The kernel spreads connections over the workers. They share the SQLite store, nonces, audit
log and (for the coordinator) the ledger and directory file, all of which are safe for
several writing processes. Only the first worker serves metrics (a port cannot be shared).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT, so workers (same user) can bind the same port; port 0 picks one.

    SO_REUSEADDR is set for the bind only, as every server does (gRPC's listeners too), so a restart binds over
    the TIME_WAIT connections its predecessor left; it is cleared once bound, because on a socket that is not
    listening it would let another user's SO_REUSEADDR socket bind and listen on the port first."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    return sock, sock.getsockname()[1]


def run_workers(kind: str, config: Path, listen: str, workers: int, *, metrics: str | None = None,
                log_level: str | None = None) -> int:
    """Start `workers` processes of `hedui KIND serve` on one port; forward SIGTERM/SIGINT; wait for all."""
    host, _, port_text = listen.rpartition(":")
    reserved, port = reserve_port(host or "127.0.0.1", int(port_text))
    base = [sys.executable, "-m", "node.cli.main"] + (["--log-level", log_level] if log_level else [])
    children = []
    for i in range(workers):
        cmd = base + [kind, "serve", "--config", str(config), "--listen", f"{host}:{port}", "--reuse-port"]
        if metrics and i == 0:
            cmd += ["--metrics", metrics]
        children.append(subprocess.Popen(cmd))
    print(json.dumps({"event": "workers_started", "port": port, "workers": workers}), file=sys.stderr, flush=True)
    reserved.close()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs) if any(codes) else 0
