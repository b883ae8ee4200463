"""Merkle trees for batch signatures: RFC 6962 hashing with a per-leaf salt.

One signature over a root covers many leaves; each leaf carries its salt and audit path so it
verifies on its own. Salts keep a leaf's siblings from revealing anything about other leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(salt: bytes, data: bytes) -> bytes:
    """Hash of one leaf: SHA-256(0x00 || salt || data)."""
    return hashlib.sha256(_LEAF + salt + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a non-empty list of leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(root(leaves[:k]), root(leaves[k:]))


def paths(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Audit paths (leaf to root) for every leaf."""
    return root_and_paths(leaves)[1]


def root_and_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's audit path, hashing each inner node once."""
    n = len(leaves)
    if n == 1:
        return leaves[0], [[]]
    k = _split(n)
    left_root, left_paths = root_and_paths(leaves[:k])
    right_root, right_paths = root_and_paths(leaves[k:])
    for p in left_paths:
        p.append(right_root)
    for p in right_paths:
        p.append(left_root)
    return _node(left_root, right_root), left_paths + right_paths


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """Recompute the root from a leaf and its audit path; None if the path has the wrong shape.

    The leaf's side at each level is worked out top-down from (index, count), then the path is
    folded bottom-up: one hash per path entry, no recursion and no copies of the path.
    """
    if not 0 <= index < count:
        return None
    sides: list[bool] = []  # per level, top first: True when the sibling is on the right
    while count > 1:
        k = _split(count)
        if index < k:
            sides.append(True)
            count = k
        else:
            sides.append(False)
            index -= k
            count -= k
    if len(sides) != len(path):
        return None
    sha256 = hashlib.sha256
    node = leaf
    for sibling_right, sibling in zip(reversed(sides), path, strict=True):
        node = sha256(_NODE + node + sibling).digest() if sibling_right else sha256(_NODE + sibling + node).digest()
    return node
