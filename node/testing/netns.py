"""Hosts for tests as Linux network namespaces on one switch: real addresses, links to cut and heal, processes inside.

A `Network` is one switch namespace holding a bridge, and one namespace per host joined to it by
a veth pair (the host's `eth0`, an IPv4 address in 10.99.0.0/24). Names carry a prefix and the
creating process's pid (`hx<pid>-<n>-<host>`), so runs never collide and `clean_stale()` deletes
what a crashed run left (namespaces whose pid no longer runs). `cut(host)` sets the host's
switch port down: its packets, and packets to it, are dropped without an answer (a partition,
not a refusal); `heal(host)` sets it up again. Delay and loss need the kernel's `sch_netem`;
this harness checks once and `delay()` raises `NetemMissing` (a loud failure, never a skip)
where it is absent (tests then fail unless HEDUI_ALLOW_NO_NETEM=1, which scripts/test sets
only after printing that delay/loss scenarios are NOT run): no user-space stand-in is offered, because a relay would change what a
cut means (the relay, not the kernel, would hold the connections).
Everything needs root (CAP_NET_ADMIN); `require_root()` fails a test with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

PREFIX: Final[str] = "hx"
SUBNET: Final[str] = "10.99.0"
_SEQUENCE = itertools.count()  # networks made by this process
_NETEM: dict[str, str | None] = {}  # "": None when netem works, else why it does not (checked once)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or `ip netns` refused)."""


class NetemMissing(RuntimeError):
    """The kernel has no `netem` queueing discipline: delay and loss cannot be applied."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def require_root() -> None:
    """Raise NetnsUnavailable with the reason when this process cannot build namespaces."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network-namespace tests need root (CAP_NET_ADMIN); run them as root, as CI does")
    try:
        _ip("netns", "list")
    except (OSError, NetnsUnavailable) as exc:
        raise NetnsUnavailable(f"`ip netns` does not work here: {exc}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete namespaces of this harness left by runs whose process is gone; the names deleted."""
    gone = []
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(PREFIX):].partition("-")[0]
        if name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def _kill_inside(namespace: str) -> None:
    """SIGKILL what still runs in `namespace` (processes a test started there, by pid)."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def netem_problem(host: Host) -> str | None:
    """None when `tc qdisc … netem` works on this kernel, else the reason (tried once per process, on `host`)."""
    if "" not in _NETEM:
        proc = host.run(["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms"],
                        capture_output=True, text=True, timeout=30)
        host.run(["tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True, timeout=30)
        _NETEM[""] = None if proc.returncode == 0 else (
            f"the kernel has no netem qdisc (`tc qdisc add ... netem` said: {proc.stderr.strip()}); "
            "delay and loss cannot be applied: load sch_netem or run on a kernel that has it")
    return _NETEM[""]


@dataclass
class Host:
    """One namespace on the switch: its name, address and the processes started in it."""

    name: str
    namespace: str
    address: str
    port: str  # the switch-side end of its link
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this host (its own session, so it and its children are signalled as one)."""
        proc = subprocess.Popen(self.argv(argv), start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(argv), **kw)


class Network:
    """A switch and hosts on it; closing it ends every process started on a host and deletes every namespace."""

    def __init__(self) -> None:
        require_root()
        clean_stale()
        self.tag = f"{PREFIX}{os.getpid()}-{next(_SEQUENCE)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except NetnsUnavailable:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        """A new host `name` on the switch, with the next address (10.99.0.1, .2, …) and loopback up."""
        if not name.isalnum() or len(name) > 8 or name in self.hosts:
            raise ValueError("a host name is 1-8 letters or digits, unique in the network")
        namespace = f"{self.tag}-{name}"
        address = f"{SUBNET}.{len(self.hosts) + 1}"
        port = f"p{len(self.hosts) + 1}"
        host = Host(name, namespace, address, port)
        self.hosts[name] = host
        _ip("netns", "add", namespace)
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def cut(self, host: Host) -> None:
        """Partition `host`: its switch port goes down, every packet to or from it is dropped silently."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        """Reconnect `host` (its switch port up again)."""
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def delay(self, host: Host, delay_ms: int, *, loss_percent: float = 0.0) -> None:
        """Delay (and drop a share of) `host`'s outgoing packets with netem; NetemMissing where the kernel lacks it."""
        problem = netem_problem(host)
        if problem is not None:
            raise NetemMissing(problem)
        args = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", f"{delay_ms}ms"]
        if loss_percent:
            args += ["loss", f"{loss_percent}%"]
        subprocess.run(host.argv(args), check=True, capture_output=True, timeout=30)

    def undelay(self, host: Host) -> None:
        """Remove the delay/loss `delay()` put on `host`'s link (nothing to do when there is none)."""
        subprocess.run(host.argv(["tc", "qdisc", "del", "dev", "eth0", "root"]), capture_output=True, timeout=30)

    def close(self) -> None:
        """SIGKILL every process a host still runs (ours, by pid), then delete every namespace; always safe to call again."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            for proc in host.processes:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            _kill_inside(host.namespace)
            _ip("netns", "del", host.namespace, check=False)
        _ip("netns", "del", self.switch, check=False)
