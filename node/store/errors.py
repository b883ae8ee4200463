"""Errors of the fact store and of ingest; messages never carry an ID number or a data value."""

from __future__ import annotations

from collections.abc import Sequence

from node.errors import BadInput, HeduiError


class StoreError(HeduiError):
    """The store cannot be opened, read or written."""


class StoreCorrupt(StoreError):
    """The store file is not a Hedui store or fails its integrity check."""


class StoreMissing(StoreError):
    """A read-only open found nothing there yet (no such file or table); `location` says where it looked."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.location = location


class IngestRejected(BadInput):
    """A data file was rejected as a whole; nothing from it was stored.

    `errors` lists (line, reason) for every bad line: line numbers are as in the file
    (1-based, the CSV header is line 1); line 0 means the file as a whole (e.g. not found).
    """

    def __init__(self, message: str, errors: Sequence[tuple[int, str]]) -> None:
        super().__init__(message)
        self.errors: list[tuple[int, str]] = list(errors)
