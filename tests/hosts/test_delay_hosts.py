"""Delay and loss on a holder's link: answers within the deadline, or the holder reported failed within it.

What runs where: the `hosted` federation (tests/hosts/conftest.py: coordinator, Guangdong on `gd`, two Sichuan
replicas, the requester, each in its own namespace). Delay and loss are put on the frames Guangdong's host sends
(its eth0 egress): by the kernel's netem where it has one, else by the user-space link emulator in the switch
namespace (node/testing/linkemu.py, a frame forwarder: connections stay end to end); the lossy phase always runs
on the emulator, the only one that bounds the drops. `net.emulated_by` says which ran; nothing is skipped.

Why no phase can fail by chance (every connection on the path is made by a first call before the link changes):
* slow, 150 ms, no loss, 3 s deadline: nothing is lost, gd's answer waits 150 ms per flight (one or two).
* lossy, 150 ms, 5 % of gd's frames dropped at random but at most LOSS_BUDGET (1) from the moment it is set,
  10 s deadline: the worst one drop costs is one retransmission, ~0.35-1 s (RTO, or a 1 s SYN-ACK of a pooled
  channel still connecting in the background, which no call waits on); and Guangdong's consent view (refreshed
  every second, failing closed after 4 s) stays fresh, since one lost poll segment costs under 1 s. Unbounded
  random loss would not do: the same segment lost three times (0.05^3 ~ 1e-4 per segment) costs ~3 s, enough
  to time a poll out and fail the view closed. The share dropped is tested on its own, with no deadline, in
  tests/hosts/test_netns_harness.py::test_emulated_loss_drops_a_share_of_the_frames.
* dead slow, 5 s > the 3 s deadline: no answer can come back in time, whatever the load; the bound asserted is
  the router's deadline plus MARGIN_S.
"""

from __future__ import annotations

import pytest

from tests.conftest import WORKER
from tests.hosts.conftest import HostedFederation
from tests.hosts.test_province_hosts import DEADLINE_S, MARGIN_S, answered_by, verify

SLOW_LINK_MS = 150  # one way, on Guangdong's outgoing frames
LOSS_PERCENT = 5.0
LOSS_BUDGET = 1  # frames the lossy phase may drop: its worst case stays far inside LOSSY_DEADLINE_S
LOSSY_DEADLINE_S = 10.0
#: Calls made until the budget is spent: each call makes gd send frames (>= 2), so 200 calls leave it unspent
#: with probability < 0.95 ** 400 ~ 1e-9; usually the first call or two spend it.
MAX_LOSSY_CALLS = 200
DEAD_SLOW_MS = 5000  # longer than the whole deadline: no answer can come back in time


@pytest.mark.slow
@pytest.mark.parametrize("replica_store", ["sqlite"])
def test_a_slow_lossy_link_still_answers_and_a_link_slower_than_the_deadline_is_reported_within_it(
        hosted: HostedFederation) -> None:
    """With 150 ms on Guangdong's link the routed call is answered within the 3 s deadline and takes at least the
    150 ms; with 5 % loss as well, calls during which a frame of Guangdong's was dropped are still answered within
    their deadline; with 5 s delay Guangdong is reported failed (UNAVAILABLE or DEADLINE_EXCEEDED) within the
    deadline while Sichuan answers."""
    fed = hosted
    gd = fed.hosts["gd"]
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    warm = verify(fed, consent)  # every connection on the path is up before the link changes
    assert answered_by(fed, warm, "44"), warm
    fed.net.delay(gd, SLOW_LINK_MS)
    try:
        slow = verify(fed, consent)
        slow_by = fed.net.emulated_by["gd"]
        fed.net.delay(gd, SLOW_LINK_MS, loss_percent=LOSS_PERCENT, max_drops=LOSS_BUDGET)
        before = fed.net.link_stats(gd)["dropped"]
        lossy = []
        while fed.net.link_stats(gd)["dropped"] < before + LOSS_BUDGET:  # until the budget is spent
            assert len(lossy) < MAX_LOSSY_CALLS, f"no frame dropped in {len(lossy)} calls"
            lossy.append(verify(fed, consent, LOSSY_DEADLINE_S))
        lossy.append(verify(fed, consent, LOSSY_DEADLINE_S))  # and one after the drop
        dropped = fed.net.link_stats(gd)["dropped"] - before
        fed.net.delay(gd, DEAD_SLOW_MS)
        dead = verify(fed, consent)
    finally:
        fed.net.undelay(gd)
    assert slow_by in ("netem", "linkemu")
    assert answered_by(fed, slow, "44") and SLOW_LINK_MS / 1000 <= slow["elapsed_s"] <= DEADLINE_S + MARGIN_S, slow  # type: ignore[operator]
    assert dropped == LOSS_BUDGET
    for reply in lossy:
        assert answered_by(fed, reply, "44") and reply["elapsed_s"] <= LOSSY_DEADLINE_S + MARGIN_S, reply  # type: ignore[operator]
    assert dead["routing"]["44"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), dead  # type: ignore[index]
    assert answered_by(fed, dead, "51")
    assert dead["elapsed_s"] <= DEADLINE_S + MARGIN_S, dead  # type: ignore[operator]
