"""The order a member's endpoints are tried in, and each attempt's share of the deadline."""

from __future__ import annotations

from node.server.failover import MIN_ATTEMPT_S, PENALTY_S, EndpointOrder, attempt_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_endpoint_goes_last_for_the_penalty_then_returns_to_its_place() -> None:
    """The listed order is kept; an endpoint that failed is tried last for PENALTY_S, or until it succeeds."""
    clock = Clock()
    order = EndpointOrder(clock=clock)
    listed = ["a:1", "b:1", "c:1"]
    assert order.order(listed) == listed
    order.failed("a:1")
    assert order.order(listed) == ["b:1", "c:1", "a:1"]
    clock.now += PENALTY_S + 0.1
    assert order.order(listed) == listed
    order.failed("b:1")
    order.succeeded("b:1")
    assert order.order(listed) == listed


def test_each_attempt_gets_a_share_of_what_remains_and_the_last_gets_all_of_it() -> None:
    """With k endpoints left an attempt gets remaining/k (at least MIN_ATTEMPT_S while that much remains); the last one gets the rest; none past the deadline."""
    assert attempt_timeout(10.0, 2, 4.0) == 3.0
    assert attempt_timeout(10.0, 1, 4.0) == 6.0
    assert attempt_timeout(10.0, 4, 9.9) == MIN_ATTEMPT_S
    assert attempt_timeout(10.0, 4, 9.99) < MIN_ATTEMPT_S  # never past the deadline
    assert attempt_timeout(10.0, 1, 11.0) == 0.0
