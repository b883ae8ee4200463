"""Which process of a node's `--workers` does the node's one-at-a-time work: the one holding a lock file.

Checkpoints of one audit chain, witness files and locators must come from one process (two
processes' checkpoints would not extend each other; two publishers would race). The first
process to take the lock (a non-blocking `flock`) leads until it exits or releases it; the
others ask again later and take over then. Without a Storage (tests and tools that build the
link by hand) this is the SQLite backend's lease on a file; with one, `Storage.lease(name)`.
"""

from __future__ import annotations

from node.store.sqlite.leases import FileLease as Lead

__all__ = ["Lead"]
