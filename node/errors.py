"""The base of every Hedui error.

    HeduiError
    ├── BadInput            (node.domain.errors: user or peer supplied something invalid)
    │   └── InvalidIdNumber
    └── ...                 (each layer adds its own in its errors module)

Messages of these errors are public: they never contain an ID number or a data value.
"""

from __future__ import annotations


class HeduiError(Exception):
    """Base of all errors raised by Hedui code; the message is safe to show and log."""


class BadInput(HeduiError):
    """Something supplied by a user or a peer is invalid (CLI exit 2, gRPC INVALID_ARGUMENT)."""
