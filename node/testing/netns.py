"""Hosts for tests as Linux network namespaces on one switch: real addresses, links to cut, heal and slow down.

A `Network` is one switch namespace holding a bridge, and one namespace per host joined to it by
a veth pair (the host's `eth0`, an IPv4 address in 10.99.0.0/24). Names carry a prefix and the
creating process's pid (`hx<pid>-<n>-<host>`), so runs never collide and `clean_stale()` deletes
what a crashed run left (namespaces whose pid no longer runs, after killing what runs inside). `cut(host)`
sets the host's switch port down: its packets, and packets to it, are dropped without an answer (a
partition, not a refusal); `heal(host)` sets it up again.

`delay(host, ms, loss_percent=…)` delays (and drops a share of) the frames the host sends, like netem on its
eth0's egress. Where the kernel has `sch_netem` that is what is used; where it has not (this machine's kernel),
the user-space link emulator `node/testing/linkemu.py` is: the host's switch port is taken off the bridge and
the emulator, in the switch namespace, forwards raw Ethernet frames (AF_PACKET) between it and a new veth pair
on the bridge, holding and dropping the host's. It is a link, not a relay: TCP connections stay end to end
between the hosts' kernels, and a cut (the port set down) still partitions. A drop budget (`max_drops`) only
the emulator offers, so a host asked for one is always emulated. `emulated_by[host.name]` (and a log line) says
which mechanism is in force; `LinkEmulationUnavailable` says why neither can be used (a failure, never a skip).
Everything needs root (CAP_NET_ADMIN); `require_root()` fails a test with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

PREFIX: Final[str] = "hx"
SUBNET: Final[str] = "10.99.0"
_SEQUENCE = itertools.count()  # networks made by this process
_NETEM: dict[str, str | None] = {}  # "": None when netem works, else why it does not (checked once)
LINKEMU: Final[str] = str(Path(__file__).with_name("linkemu.py"))  # run by path: stdlib only, no package needed
EMULATIONS: Final[tuple[str, ...]] = ("auto", "netem", "linkemu")
log = logging.getLogger(__name__)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or `ip netns` refused)."""


class LinkEmulationUnavailable(RuntimeError):
    """Delay and loss cannot be applied: netem is missing where it was required, or the link emulator refused."""


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
            "netem cannot delay or drop here (the user-space link emulator can: emulation=\"auto\" or \"linkemu\")")
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


@dataclass
class Emulator:
    """A running link emulator (node/testing/linkemu.py) for one host, and the veth pair it made."""

    proc: subprocess.Popen[str]
    pair: str  # the end on the bridge
    free: str  # the end it reads and writes

    def ask(self, command: str) -> str:
        """Send one command line; its one-line answer (LinkEmulationUnavailable when the emulator is gone)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except (BrokenPipeError, ValueError):
            answer = ""
        if not answer:
            raise LinkEmulationUnavailable(f"the link emulator exited: {self.error()}")
        return answer.strip()

    def error(self) -> str:
        """What the emulator wrote to stderr (once it has exited)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return (self.proc.stderr.read().strip() if self.proc.stderr else "") or f"exit status {self.proc.returncode}"

    def stop(self) -> None:
        """End it (SIGKILL: the frames it holds are lost, as on a link taken away) and wait for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Network:
    """A switch and hosts on it; closing it ends every process started on a host and deletes every namespace."""

    def __init__(self, emulation: str = "auto") -> None:
        """`emulation`: how `delay()` works: "auto" (netem where the kernel has it, else the emulator), "netem"
        (only netem: LinkEmulationUnavailable without it) or "linkemu" (always the user-space emulator)."""
        if emulation not in EMULATIONS:
            raise ValueError(f"emulation is one of {EMULATIONS}")
        require_root()
        clean_stale()
        self.emulation = emulation
        self.tag = f"{PREFIX}{os.getpid()}-{next(_SEQUENCE)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.emulated_by: dict[str, str] = {}  # host name -> "netem" or "linkemu", while a delay is in force
        self._emulators: dict[str, Emulator] = {}
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

    def delay(self, host: Host, delay_ms: int, *, loss_percent: float = 0.0, max_drops: int | None = None) -> None:
        """Delay `host`'s outgoing frames by `delay_ms` and drop `loss_percent` of them at random (at most
        `max_drops` from now on, when given); replaces what was set before."""
        mechanism = self._mechanism(host, max_drops)
        if mechanism == "netem":
            args = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", f"{delay_ms}ms"]
            if loss_percent:
                args += ["loss", f"{loss_percent}%"]
            subprocess.run(host.argv(args), check=True, capture_output=True, timeout=30)
        else:
            emulator = self._emulators.get(host.name) or self._emulate(host)
            answer = emulator.ask(f"set {delay_ms} {loss_percent} {-1 if max_drops is None else max_drops}")
            if answer != "ok":
                raise LinkEmulationUnavailable(f"the link emulator refused the settings: {answer}")
        if self.emulated_by.get(host.name) != mechanism:
            log.info("netns: delay and loss on host %s by %s", host.name, mechanism)
        self.emulated_by[host.name] = mechanism

    def _mechanism(self, host: Host, max_drops: int | None) -> str:
        """netem or linkemu for `host`: the emulator once it serves the host, or when asked for, or for a drop
        budget (netem has none), or where netem is missing (unless only netem was allowed)."""
        if self.emulation == "netem" and max_drops is not None:
            raise LinkEmulationUnavailable("netem has no drop budget (max_drops): only the link emulator has one")
        if host.name in self._emulators or self.emulation == "linkemu" or max_drops is not None:
            if self.emulated_by.get(host.name) == "netem":
                self.undelay(host)
            return "linkemu"
        problem = netem_problem(host)
        if problem is None:
            return "netem"
        if self.emulation == "netem":
            raise LinkEmulationUnavailable(problem)
        return "linkemu"

    def _offloads_off(self, namespace: str, interfaces: Sequence[str]) -> None:
        argv = ["ip", "netns", "exec", namespace, sys.executable, LINKEMU, "offloads-off", *interfaces]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise LinkEmulationUnavailable(f"cannot turn offloads off on {', '.join(interfaces)}: "
                                           f"{proc.stderr.strip() or proc.returncode}")

    def _emulate(self, host: Host) -> Emulator:
        """Put the link emulator between `host`'s switch port and the bridge; it forwards before the port moves."""
        number = host.port[1:]
        pair, free = f"q{number}", f"r{number}"
        _ip("-n", self.switch, "link", "add", pair, "type", "veth", "peer", "name", free)
        proc: subprocess.Popen[str] | None = None
        try:
            # No super-frames (GSO/TSO) and no checksums left to a NIC on anything whose frames the emulator reads
            # (they stay off after undelay: only slower).
            self._offloads_off(self.switch, [host.port, pair, free])
            self._offloads_off(host.namespace, ["eth0"])
            _ip("-n", self.switch, "link", "set", pair, "up")
            _ip("-n", self.switch, "link", "set", free, "up")
            proc = subprocess.Popen(["ip", "netns", "exec", self.switch, sys.executable, LINKEMU, "serve", host.port,
                                     free], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            emulator = Emulator(proc, pair, free)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":  # it prints "ready" once both sockets are bound
                raise LinkEmulationUnavailable(f"the link emulator cannot run here: {emulator.error()}")
            self._emulators[host.name] = emulator
            _ip("-n", self.switch, "link", "set", host.port, "nomaster")
            _ip("-n", self.switch, "link", "set", pair, "master", "br0")
        except BaseException:
            self._emulators.pop(host.name, None)
            if proc is not None:
                Emulator(proc, pair, free).stop()
            _ip("-n", self.switch, "link", "del", pair, check=False)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", check=False)
            raise
        return emulator

    def link_stats(self, host: Host) -> dict[str, int]:
        """The emulator's counts for `host` (frames from and to it, dropped, queued, oversize, send errors)."""
        emulator = self._emulators.get(host.name)
        if emulator is None:
            raise LinkEmulationUnavailable(f"host {host.name} is not behind the link emulator")
        stats: dict[str, int] = json.loads(emulator.ask("stats"))
        return stats

    def undelay(self, host: Host) -> None:
        """Remove the delay/loss `delay()` put on `host`'s link (nothing to do when there is none): the emulator
        stops and the host's port is back on the bridge, or netem's qdisc is deleted."""
        mechanism = self.emulated_by.pop(host.name, None)
        emulator = self._emulators.pop(host.name, None)
        if emulator is not None:
            emulator.stop()
            _ip("-n", self.switch, "link", "del", emulator.pair, check=False)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0")
        elif mechanism != "linkemu":
            subprocess.run(host.argv(["tc", "qdisc", "del", "dev", "eth0", "root"]), capture_output=True, timeout=30)

    def close(self) -> None:
        """SIGKILL every process a host still runs (ours, by pid), then delete every namespace; always safe to call again."""
        if self._closed:
            return
        self._closed = True
        for emulator in self._emulators.values():
            emulator.stop()
        self._emulators.clear()
        for host in self.hosts.values():
            for proc in host.processes:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            _kill_inside(host.namespace)
            _ip("netns", "del", host.namespace, check=False)
        _kill_inside(self.switch)  # an emulator this process lost track of
        _ip("netns", "del", self.switch, check=False)
