"""The namespace harness itself: hosts reach each other, a cut drops packets silently, a heal restores, nothing is left behind."""

from __future__ import annotations

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


@pytest.fixture
def net() -> Iterator[netns.Network]:
    try:
        network = netns.Network()
    except netns.NetnsUnavailable as exc:
        pytest.fail(f"tests across hosts cannot run: {exc}")
    yield network
    network.close()


def test_a_cut_host_is_unreachable_until_healed(net: netns.Network) -> None:
    """A host's cut link makes connections to it time out (dropped, not refused); healing makes them work again."""
    a, b = net.host("a"), net.host("b")
    server = b.popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
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


def test_stale_namespaces_of_a_dead_run_are_cleaned(net: netns.Network) -> None:
    """A namespace named for a process that no longer runs is deleted by the next network's start."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in netns.clean_stale()
    assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_delay_needs_netem_and_says_so_when_the_kernel_lacks_it(net: netns.Network) -> None:
    """`delay()` applies netem where the kernel has it, and otherwise raises NetemMissing naming the missing qdisc."""
    host = net.host("a")
    problem = netns.netem_problem(host)
    if problem is None:
        net.delay(host, 5)
        shown = host.run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
        assert "netem" in shown
    else:
        with pytest.raises(netns.NetemMissing, match="netem"):
            net.delay(host, 5)
