"""Work one process of a province does for all its replicas (locator publication) is done by one replica across hosts."""

from __future__ import annotations

import pytest

from tests.hosts.conftest import HostedFederation

pytestmark = pytest.mark.slow  # federations across network namespaces (root): scripts/test and CI run them


def test_one_sichuan_replica_publishes_the_locators(hosted: HostedFederation) -> None:
    """Of the two Sichuan replicas sharing one store, exactly one publishes the province's discovery locators (one
    publication lead per province, not one per host: on PostgreSQL a lease in the database, not a file lock in
    each replica's data directory)."""
    publishers = [h for h in ("sc1", "sc2")
                  if any(e.get("event") == "locator_published" for e in hosted.served[h].events)]
    assert publishers == ["sc1"], publishers  # sc1 started first and holds the lead; sc2 waits for it
