"""The province's fact store (SQLite, subject tokens only) and departmental data ingest."""

from __future__ import annotations

from node.store.errors import IngestRejected, StoreCorrupt, StoreError
from node.store.store import Fact, Store

__all__ = ["Fact", "IngestRejected", "Store", "StoreCorrupt", "StoreError"]
