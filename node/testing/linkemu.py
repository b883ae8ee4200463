"""A user-space link emulator: forwards Ethernet frames between two interfaces, delaying and dropping one direction's.

Used by node/testing/netns.py where the kernel has no `sch_netem`. It runs in the switch namespace between a
host's switch-side veth end (`host`, taken off the bridge) and the free end of a new veth pair whose other end is
on the bridge (`bridge`). Frames the host sends (read on `host`) are held `delay_ms` (a heap, monotonic clock)
and a `loss_percent` share is dropped at random, as netem on the host's eth0 egress does; frames to the host
(read on `bridge`) are passed on at once. It forwards raw frames (AF_PACKET), so TCP connections stay end to
end between the hosts' kernels. Offloads must be off on the interfaces involved (`offloads_off`): a GSO/TSO
super-frame larger than the MTU cannot be sent again through a packet socket, and a frame with a checksum
left to the hardware would arrive with a wrong one.

Run: `python linkemu.py serve HOST BRIDGE` (prints "ready" once both sockets are bound; reads commands on
stdin, one a line, each answered with one line: `set DELAY_MS LOSS_PERCENT MAX_DROPS` -> "ok" (MAX_DROPS: how
many frames the loss may still drop from now on, -1 for no bound), `stats` -> JSON; EOF ends it), or `python linkemu.py offloads-off IFACE...` (inside the namespace holding the interfaces).
"""

from __future__ import annotations

import array
import errno
import fcntl
import heapq
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SIOCETHTOOL = 0x8946
#: ethtool "set" commands (linux/ethtool.h) for tx checksumming, TSO, GSO and GRO, each with struct ethtool_value.
ETHTOOL_OFF = {"tx-checksumming": 0x17, "tcp-segmentation-offload": 0x1F, "generic-segmentation-offload": 0x24,
               "generic-receive-offload": 0x2C}
BUFFER_BYTES = 16 << 20  # socket buffers: a burst of frames waits here rather than being dropped
FRAME_MAX = 1 << 16  # receive size: anything longer than the MTU allows is counted as oversize


@dataclass
class Stats:
    """What the emulator has done since it started (frames)."""

    from_host: int = 0
    to_host: int = 0
    dropped: int = 0  # by the loss share
    queued: int = 0  # held for their delay now
    oversize: int = 0  # longer than the interface's MTU allows (offloads left on): not forwarded
    send_errors: int = 0  # a send refused (e.g. the port set down by a cut): the frame is lost, as on a dead link
    receive_errors: int = 0  # a receive refused (the port set down)


def offloads_off(ifname: str) -> None:
    """Turn tx checksumming, TSO, GSO and GRO off on `ifname` (SIOCETHTOOL), in the calling namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name, command in ETHTOOL_OFF.items():
            value = array.array("B", struct.pack("II", command, 0))
            request = struct.pack("16sP", ifname.encode(), value.buffer_info()[0])
            try:
                fcntl.ioctl(sock, SIOCETHTOOL, request)
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise OSError(exc.errno, f"ethtool {name} off on {ifname}: {exc.strerror}") from None


def mtu(ifname: str) -> int:
    """The MTU of `ifname` (in the calling namespace's sysfs)."""
    with open(f"/sys/class/net/{ifname}/mtu", encoding="ascii") as f:
        return int(f.read())


def packet_socket(ifname: str) -> socket.socket:
    """A raw AF_PACKET socket bound to `ifname`, promiscuous, large buffers, blind to the frames it sends."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, 33, BUFFER_BYTES)  # SO_RCVBUFFORCE (root)
    sock.setsockopt(socket.SOL_SOCKET, 32, BUFFER_BYTES)  # SO_SNDBUFFORCE
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((ifname, 0))
    index = socket.if_nametoindex(ifname)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    sock.setblocking(False)
    return sock


class Emulator:
    """The forwarding loop between `host` and `bridge`, with the delay and loss applied to the host's frames."""

    def __init__(self, host: str, bridge: str, seed: int | None = None) -> None:
        self.host, self.bridge = packet_socket(host), packet_socket(bridge)
        self.limit = {self.host: mtu(host) + 18, self.bridge: mtu(bridge) + 18}  # MTU + Ethernet header + VLAN tag
        self.delay_s = 0.0
        self.loss = 0.0
        self.budget = -1  # drops still allowed (-1: no bound)
        self.random = random.Random(seed)
        self.heap: list[tuple[float, int, bytes]] = []
        self.sequence = 0
        self.stats = Stats()

    def command(self, line: str) -> str:
        """Apply one stdin command; its one-line answer."""
        words = line.split()
        if words[:1] == ["set"] and len(words) == 4:
            usage = "error: set DELAY_MS LOSS_PERCENT MAX_DROPS with delay >= 0, 0 <= loss <= 100, drops >= -1"
            try:
                delay_ms, loss_percent, budget = float(words[1]), float(words[2]), int(words[3])
            except ValueError:
                return usage
            if budget < -1 or delay_ms < 0 or not 0 <= loss_percent <= 100:
                return usage
            self.delay_s, self.loss, self.budget = delay_ms / 1000, loss_percent / 100, budget
            return "ok"
        if words == ["stats"]:
            self.stats.queued = len(self.heap)
            return json.dumps(asdict(self.stats))
        return f"error: unknown command {line.strip()!r}"

    def _send(self, sock: socket.socket, frame: bytes) -> None:
        try:
            sock.send(frame)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self.stats.oversize += 1
            else:
                self.stats.send_errors += 1

    def _receive(self, sock: socket.socket) -> None:
        for _ in range(256):  # drain a burst, but let due frames and commands in between
            try:
                frame, address = sock.recvfrom(FRAME_MAX)
            except BlockingIOError:
                return
            except OSError:  # ENETDOWN once when the port is set down (a cut); the socket serves again once it is up
                self.stats.receive_errors += 1
                return
            if address[2] == PACKET_OUTGOING:
                continue
            if len(frame) > self.limit[sock]:
                self.stats.oversize += 1
            elif sock is self.bridge:
                self.stats.to_host += 1
                self._send(self.host, frame)
            else:
                self.stats.from_host += 1
                if self.loss and self.budget != 0 and self.random.random() < self.loss:
                    self.stats.dropped += 1
                    if self.budget > 0:
                        self.budget -= 1
                elif self.delay_s:
                    self.sequence += 1
                    heapq.heappush(self.heap, (time.monotonic() + self.delay_s, self.sequence, frame))
                else:
                    self._send(self.bridge, frame)

    def run(self, commands: int) -> None:
        """Forward until `commands` (a file descriptor) reaches EOF."""
        selector = selectors.DefaultSelector()
        selector.register(self.host, selectors.EVENT_READ)
        selector.register(self.bridge, selectors.EVENT_READ)
        selector.register(commands, selectors.EVENT_READ)
        pending = b""
        while True:
            timeout = max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else None
            for key, _ in selector.select(timeout):
                if key.fileobj == commands:
                    chunk = os.read(commands, 4096)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, _, pending = pending.partition(b"\n")
                        print(self.command(line.decode()), flush=True)
                else:
                    self._receive(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            while self.heap and self.heap[0][0] <= now:
                self._send(self.bridge, heapq.heappop(self.heap)[2])


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "offloads-off":
        try:
            for ifname in argv[1:]:
                offloads_off(ifname)
        except OSError as exc:
            print(f"linkemu: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 3 or argv[0] != "serve":
        print("usage: linkemu.py serve HOST BRIDGE | linkemu.py offloads-off IFACE...", file=sys.stderr)
        return 2
    try:
        emulator = Emulator(argv[1], argv[2])
    except OSError as exc:
        print(f"linkemu: cannot forward frames between {argv[1]} and {argv[2]}: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    emulator.run(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
