"""The namespace harness itself: hosts reach each other, a cut drops packets silently, a heal restores, nothing is
left behind; and the user-space link emulator (node/testing/linkemu.py) delays, drops, carries large transfers
intact, goes away on undelay and still lets a cut partition.

The emulator tests use `Network(emulation="linkemu")`, so they test the emulator on every kernel (with or without
netem); one test checks which mechanism `delay()` picks by default. No timed assertion has an upper bound.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator

import pytest

from node.testing import netns

SERVER = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
          "s.bind(('0.0.0.0',9000));s.listen();print('listening',flush=True)\n"
          "while True:\n c,_=s.accept();c.sendall(b'hi');c.close()\n")


def reach(host: netns.Host, address: str) -> str:
    """From `host`, connect to `address`:9000 with a 1.5 s timeout: "hi", or the error's name."""
    client = (f"import socket\ntry:\n print(socket.create_connection(('{address}',9000),timeout=1.5).recv(2).decode())\n"
              "except OSError as e:\n print(type(e).__name__)\n")
    return host.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=30).stdout.strip()


def network(emulation: str = "auto") -> netns.Network:
    try:
        return netns.Network(emulation)
    except netns.NetnsUnavailable as exc:
        pytest.fail(f"tests across hosts cannot run: {exc}")


@pytest.fixture
def net() -> Iterator[netns.Network]:
    with network() as made:
        yield made


@pytest.fixture
def emulated() -> Iterator[netns.Network]:
    """A network whose delay() always uses the user-space link emulator."""
    with network("linkemu") as made:
        yield made


def serving(host: netns.Host, script: str = SERVER) -> subprocess.Popen[str]:
    """`script` started on `host`, returned once it printed "listening" (readiness, no sleep)."""
    proc = host.popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def bridge_ports(net: netns.Network) -> set[str]:
    """The interfaces on the switch's bridge."""
    shown = subprocess.run(["ip", "-n", net.switch, "-o", "link", "show", "master", "br0"], capture_output=True,
                           text=True, check=True, timeout=30).stdout
    return {line.split(":")[1].strip().partition("@")[0] for line in shown.splitlines() if line.strip()}


def running_in(namespace: str) -> list[int]:
    """The pids of the processes running in `namespace`."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30).stdout
    return [int(pid) for pid in listed.split()]


def gone(pid: int) -> bool:
    """Whether no linkemu process runs as `pid` any more."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"linkemu" not in f.read()
    except FileNotFoundError:
        return True


DELAY_MS = 200


def test_a_cut_host_is_unreachable_until_healed(net: netns.Network) -> None:
    """A host's cut link makes connections to it time out (dropped, not refused); healing makes them work again."""
    a, b = net.host("a"), net.host("b")
    serving(b)
    assert reach(a, b.address) == "hi"
    net.cut(b)
    assert reach(a, b.address) == "TimeoutError"
    net.heal(b)
    assert reach(a, b.address) == "hi"


def test_closing_ends_the_processes_and_deletes_the_namespaces(net: netns.Network) -> None:
    """After close, no namespace of the network remains and the process started on a host is gone."""
    host = net.host("a")
    proc = host.popen([sys.executable, "-c", "import time; time.sleep(600)"])
    net.close()
    assert proc.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.tag not in listed


def test_closing_ends_the_link_emulator(emulated: netns.Network) -> None:
    """A network closed while a host is behind the link emulator leaves no emulator process and no namespace."""
    host = emulated.host("a")
    emulated.delay(host, 10)
    pids = running_in(emulated.switch)
    assert pids and not all(gone(pid) for pid in pids)
    emulated.close()
    assert all(gone(pid) for pid in pids)
    assert emulated.tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_stale_namespaces_of_a_dead_run_are_cleaned(net: netns.Network) -> None:
    """A namespace named for a process that no longer runs is deleted by the next network's start."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    left = subprocess.Popen(["ip", "netns", "exec", stale, sys.executable, "-c", "import time; time.sleep(600)"])
    while not running_in(stale):  # readiness: the process has entered the namespace
        assert left.poll() is None
    assert stale in netns.clean_stale()
    assert left.wait(timeout=30) == -9  # what a dead run left running there (e.g. its link emulator) was killed
    assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def timed_reach(host: netns.Host, address: str) -> dict[str, object]:
    """From `host`, connect to `address`:9000 and read its "hi": the answer and the seconds taken (monotonic)."""
    client = ("import json,socket,time\nt=time.monotonic()\n"
              f"s=socket.create_connection(('{address}',9000),timeout=30)\nhi=s.recv(2).decode()\n"
              "print(json.dumps({'answer':hi,'elapsed_s':time.monotonic()-t}))\n")
    proc = host.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reply: dict[str, object] = json.loads(proc.stdout)
    return reply


def test_delay_uses_netem_where_the_kernel_has_it_and_the_link_emulator_elsewhere(net: netns.Network) -> None:
    """By default `delay()` applies netem when the kernel has it, otherwise the link emulator, and says which."""
    host = net.host("a")
    problem = netns.netem_problem(host)
    net.delay(host, 5)
    if problem is None:
        assert net.emulated_by == {"a": "netem"}
        shown = host.run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
        assert "netem" in shown
    else:
        assert net.emulated_by == {"a": "linkemu"}
        assert host.port not in bridge_ports(net) and net.link_stats(host)["dropped"] == 0


def test_netem_only_fails_loudly_where_the_kernel_lacks_it() -> None:
    """A network restricted to netem raises LinkEmulationUnavailable naming netem on a kernel without it (and
    applies netem where the kernel has it)."""
    with network("netem") as net:
        host = net.host("a")
        if netns.netem_problem(host) is None:
            net.delay(host, 5)
            assert net.emulated_by == {"a": "netem"}
        else:
            with pytest.raises(netns.LinkEmulationUnavailable, match="netem"):
                net.delay(host, 5)


def test_the_link_emulator_fails_loudly_when_it_cannot_open_its_interfaces() -> None:
    """linkemu exits with status 1 and the reason on stderr when it cannot bind its packet sockets (never runs
    silently without forwarding)."""
    proc = subprocess.run([sys.executable, netns.LINKEMU, "serve", "nosuch0", "nosuch1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "cannot forward frames between nosuch0 and nosuch1" in proc.stderr
    assert proc.stdout == ""


def test_an_emulated_delay_shows_in_round_trips(emulated: netns.Network) -> None:
    """With 200 ms on b's outgoing frames, a connect to b and its first bytes take at least 400 ms (the SYN-ACK and
    the data each wait 200 ms; the data is sent only once the handshake's last ACK came back)."""
    a, b = emulated.host("a"), emulated.host("b")
    serving(b)
    assert reach(a, b.address) == "hi"
    emulated.delay(b, DELAY_MS)
    timed = timed_reach(a, b.address)
    assert timed["answer"] == "hi" and timed["elapsed_s"] >= 2 * DELAY_MS / 1000, timed  # type: ignore[operator]
    assert emulated.emulated_by == {"b": "linkemu"}


def binomial_tail(n: int, p: float, low: int, high: int) -> float:
    """P(X < low or X > high) for X ~ Binomial(n, p), summed exactly (in logs)."""
    def pmf(k: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))
    return sum(pmf(k) for k in range(n + 1) if k < low or k > high)


DATAGRAMS = 2000
LOSS_PERCENT = 20.0
MISSING_BOUNDS = (0.05, 0.40)  # a share outside these happens by chance with probability binomial_tail(...) < 1e-9
RECEIVER = ("import os,socket,sys\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "u.setsockopt(socket.SOL_SOCKET,33,16<<20)\nu.bind(('0.0.0.0',9001))\n"
            "t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);t.bind(('0.0.0.0',9002));t.listen()\n"
            "print('listening',flush=True)\nc,_=t.accept();assert c.makefile().readline().strip()=='done'\n"
            "u.setblocking(False);seen=set()\n"
            "while True:\n try: seen.add(int.from_bytes(u.recv(64)[:8],'big'))\n except BlockingIOError: break\n"
            "print(len(seen),flush=True)\n")
SENDER = ("import socket,sys\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
          "for i in range(int(sys.argv[2])): u.sendto(i.to_bytes(8,'big').ljust(64,b'.'),(sys.argv[1],9001))\n"
          "c=socket.create_connection((sys.argv[1],9002),timeout=60);c.sendall(b'done\\n');c.close()\n")


def test_emulated_loss_drops_a_share_of_the_frames(emulated: netns.Network) -> None:
    """Of 2000 UDP datagrams b sends with 20 % loss on its link, between 5 % and 40 % never arrive (a chance
    failure has probability < 1e-9), and the emulator counted its drops among b's frames."""
    assert binomial_tail(DATAGRAMS, LOSS_PERCENT / 100, int(DATAGRAMS * MISSING_BOUNDS[0]),
                         int(DATAGRAMS * MISSING_BOUNDS[1])) < 1e-9
    a, b = emulated.host("a"), emulated.host("b")
    receiver = serving(a, RECEIVER)
    serving(b)
    assert reach(a, b.address) == "hi"  # both neighbours (ARP) resolved before any frame is dropped
    emulated.delay(b, 0, loss_percent=LOSS_PERCENT)
    sent = b.run([sys.executable, "-c", SENDER, a.address, str(DATAGRAMS)], capture_output=True, text=True,
                 timeout=300)
    assert sent.returncode == 0, sent.stderr
    assert receiver.stdout is not None
    arrived = int(receiver.stdout.readline())
    missing = (DATAGRAMS - arrived) / DATAGRAMS
    assert MISSING_BOUNDS[0] <= missing <= MISSING_BOUNDS[1], (arrived, emulated.link_stats(b))
    stats = emulated.link_stats(b)
    assert stats["dropped"] >= DATAGRAMS * MISSING_BOUNDS[0] and stats["oversize"] == 0, stats


BULK_BYTES = 8 << 20
BULK_SERVER = ("import hashlib,random,socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
               "s.bind(('0.0.0.0',9003));s.listen();print('listening',flush=True)\nc,_=s.accept();h=hashlib.sha256()\n"
               "while (d:=c.recv(1<<16)): h.update(d)\n"
               f"c.sendall(h.hexdigest().encode()+random.Random(2).randbytes({BULK_BYTES}));c.close()\n")
BULK_CLIENT = ("import hashlib,random,socket,sys\nc=socket.create_connection((sys.argv[1],9003),timeout=120)\n"
               f"out=random.Random(1).randbytes({BULK_BYTES});c.sendall(out);c.shutdown(socket.SHUT_WR)\n"
               "got=bytearray()\nwhile (d:=c.recv(1<<16)): got+=d\n"
               f"ok=bytes(got)==hashlib.sha256(out).hexdigest().encode()+random.Random(2).randbytes({BULK_BYTES})\n"
               "print('intact' if ok else f'damaged: {len(got)} bytes')\n")


def test_a_large_transfer_crosses_the_emulated_link_intact(emulated: netns.Network) -> None:
    """8 MB each way over TCP through the emulator (20 ms on b's frames) arrive byte for byte, and no frame was
    too large to forward (offloads are off on the interfaces it reads)."""
    a, b = emulated.host("a"), emulated.host("b")
    serving(b, BULK_SERVER)
    emulated.delay(b, 20)
    done = a.run([sys.executable, "-c", BULK_CLIENT, b.address], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "intact", done.stdout + done.stderr
    stats = emulated.link_stats(b)
    assert stats["oversize"] == 0 and stats["from_host"] >= BULK_BYTES // 1500, stats


def test_undelay_puts_the_host_back_on_the_bridge(emulated: netns.Network) -> None:
    """After undelay the emulator is gone, the host's own port is on the bridge again (the emulator's pair
    deleted), and connections work."""
    a, b = emulated.host("a"), emulated.host("b")
    serving(b)
    emulated.delay(b, DELAY_MS)
    assert b.port not in bridge_ports(emulated) and f"q{b.port[1:]}" in bridge_ports(emulated)
    pids = running_in(emulated.switch)
    emulated.undelay(b)
    assert all(gone(pid) for pid in pids) and emulated.emulated_by == {}
    assert bridge_ports(emulated) == {a.port, b.port}
    assert reach(a, b.address) == "hi"


def test_a_cut_still_partitions_an_emulated_host(emulated: netns.Network) -> None:
    """Behind the emulator a cut host's connections still time out (dropped, not refused), and healing restores
    them through the emulator."""
    a, b = emulated.host("a"), emulated.host("b")
    serving(b)
    emulated.delay(b, 50)
    assert reach(a, b.address) == "hi"
    emulated.cut(b)
    assert reach(a, b.address) == "TimeoutError"
    emulated.heal(b)
    assert reach(a, b.address) == "hi"
    assert emulated.emulated_by == {"b": "linkemu"}


def test_a_drop_budget_stops_the_loss_after_that_many_frames(emulated: netns.Network) -> None:
    """With 100 % loss and a budget of 5, the emulator drops exactly 5 of b's frames and forwards the rest: at
    least 15 of 20 datagrams arrive (a bounded loss, what keeps the federation's lossy phase deterministic)."""
    a, b = emulated.host("a"), emulated.host("b")
    receiver = serving(a, RECEIVER)
    serving(b)
    assert reach(a, b.address) == "hi"
    emulated.delay(b, 0, loss_percent=100, max_drops=5)
    sent = b.run([sys.executable, "-c", SENDER, a.address, "20"], capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stderr
    assert receiver.stdout is not None
    assert int(receiver.stdout.readline()) >= 15
    assert emulated.link_stats(b)["dropped"] == 5
