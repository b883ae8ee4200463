"""Storage: the contracts (interfaces), the factory that opens a config's backend, and what every backend shares."""

from __future__ import annotations

from node.store.errors import IngestRejected, StoreCorrupt, StoreError
from node.store.interfaces import Fact, FactStore

__all__ = ["Fact", "FactStore", "IngestRejected", "StoreCorrupt", "StoreError"]
