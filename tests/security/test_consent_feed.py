"""A node's consent feed keeps its revocation view fresh while the node is busy (fail closed only when the
coordinator cannot be reached, never because of the node's own start-up work)."""

from __future__ import annotations

import threading
from pathlib import Path

from node import logs
from node.server.coordinator_link import POLL_INTERVAL_S, RETRY_AFTER_S, CoordinatorLink, next_poll_delay
from node.server.locator_publisher import build_shards
from node.service.consent import RevocationView
from node.store.sqlite.facts import Store
from node.testing.cluster import LoopThread, build_federation

WAIT_S = 30.0  # a bound on waiting for the feed, never a speed requirement


class _NotifyingView(RevocationView):
    """A real revocation view that also says when a coordinator reply was applied."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = threading.Event()

    def apply(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        change = super().apply(*args, **kwargs)
        self.applied.set()
        return change


def test_consent_feed_runs_while_the_locators_are_built(tmp_path: Path) -> None:
    """The feed refreshes the view while start() is still building the node's locators (seconds on a large
    store, with the server already answering): before, it began only after them and the view went stale."""
    fed = build_federation(tmp_path, ["44", "51"])
    fed.loop = LoopThread()
    refreshed: list[bool] = []
    try:
        fed.start_coordinator()
        member = fed.member("44")
        store = Store.open(member.cfg.data_dir)
        view = _NotifyingView()


        async def make_link() -> CoordinatorLink:  # its channel belongs to the cluster's loop
            return CoordinatorLink(member, view, logs.get("node"), store=store)

        link = fed.loop.run(make_link())
        assert link.locators is not None

        def slow_build(store_: Store, epoch: int):  # type: ignore[no-untyped-def]
            """The real build, held until the feed has refreshed the view once more (or WAIT_S passed)."""
            view.applied.clear()  # the start's own first sync is done by now
            refreshed.append(view.applied.wait(WAIT_S))
            return build_shards(store_, epoch)

        link.locators.build = slow_build
        try:
            assert fed.loop.run(link.start("127.0.0.1:1"), timeout=4 * WAIT_S)
        finally:
            fed.loop.run(link.stop())
            store.close()
    finally:
        for code in list(fed.servers):
            fed.stop_node(code)
        fed.loop.close()
    assert refreshed and refreshed[0], "the consent view was not refreshed while the locators were built"


def test_a_failed_sync_is_retried_sooner_than_the_interval() -> None:
    """After a failed feed round the next comes after RETRY_AFTER_S, doubling per failure up to the interval,
    so one lost reply (3 s deadline) does not leave the view stale for another whole interval; after a good
    but slow round the next starts one interval after that round began, not an interval after it ended."""
    assert next_poll_delay(0) == POLL_INTERVAL_S
    assert next_poll_delay(0, 0.4) == POLL_INTERVAL_S - 0.4 and next_poll_delay(0, 2.5) == 0.0
    assert next_poll_delay(1) == RETRY_AFTER_S < POLL_INTERVAL_S
    delays = [next_poll_delay(n) for n in range(1, 12)]
    assert delays == sorted(delays) and delays[-1] == POLL_INTERVAL_S
