"""Household batches from the web: an uploaded households CSV and consents CSV (as `hedui household
check-batch` takes them) decided in a background thread through the node's own client API
(`HouseholdBatchSession`), with progress in `web.sqlite` and the files (0600) under
`<data_dir>/web-batches/<id>/`: households.csv, consents.csv, results.jsonl, rejects.csv."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node import logs
from node.client.batch import (IN_FLIGHT, chunked, complete, pipeline, read_consents, read_households, reject_household,
                               write_rejects)
from node.client.coordinator import CoordinatorClient
from node.client.household import StandardsInForce
from node.client.household_batch import BatchHousehold, HouseholdBatchSession
from node.client.standards import current_period
from node.domain import idnumber
from node.domain.standards import fallback_regions
from node.errors import BadInput, HeduiError
from node.member import Member
from node.web.db import WebDb

BATCH_DIR: Final[str] = "web-batches"
MAX_CSV: Final[int] = 8 * 1024 * 1024
CHUNK: Final[int] = 128
FILES: Final[dict[str, str]] = {"households": "households.csv", "consents": "consents.csv",
                                "results": "results.jsonl", "rejects": "rejects.csv"}
_log = logs.get("web")


@dataclass(frozen=True)
class Batch:
    """A batch's state: running → done or failed; counts of households decided so far."""

    id: str
    office: str
    created_by: str
    created_ms: int
    purpose: str
    region: str
    status: str
    total: int
    done: int
    incomplete: int
    rejected: int
    error: str
    finished_ms: int

    @property
    def percent(self) -> int:
        return 100 if self.status != "running" and not self.total else (100 * self.done // self.total if self.total else 0)


_COLUMNS: Final[str] = ("id, office, created_by, created_ms, purpose, region, status, total, done, incomplete, "
                        "rejected, error, finished_ms")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


class Batches:
    """Start, follow and find the files of household batches; one background thread per running batch."""

    def __init__(self, db: WebDb, member: Member, *, on_end: Callable[[Batch], None] | None = None) -> None:
        self.db, self.member, self.on_end = db, member, on_end
        self.root = member.cfg.data_dir / BATCH_DIR
        self.root.mkdir(mode=0o700, exist_ok=True)
        self._threads: dict[str, threading.Thread] = {}

    def start(self, *, office: str, account_id: str, purpose: str, region: str, households: bytes,
              consents: bytes) -> Batch:
        """Check the uploads (BadInput for a file that is not one), keep them 0600, and start deciding in the background."""
        self.member.policy.purpose(purpose)
        if region:
            fallback_regions(region)
        for name, data in (("households", households), ("consents", consents)):
            if not data.strip():
                raise BadInput(f"the {name} file is empty")
            if len(data) > MAX_CSV:
                raise BadInput(f"the {name} file is larger than {MAX_CSV // (1024 * 1024)} MiB")
        batch_id = "b" + secrets.token_hex(5)
        folder = self.root / batch_id
        folder.mkdir(mode=0o700)
        _write_private(folder / FILES["households"], households)
        _write_private(folder / FILES["consents"], consents)
        try:
            good, rejects = read_households(folder / FILES["households"], max_members=self.member.cfg.limits.max_subjects)
            receipts = read_consents(folder / FILES["consents"])
        except BadInput as exc:
            for name in ("households", "consents"):
                (folder / FILES[name]).unlink(missing_ok=True)
            folder.rmdir()
            raise BadInput(idnumber.redact(str(exc).replace(str(folder) + os.sep, ""))) from None
        now = _now_ms()
        with self.db.tx() as conn:
            conn.execute(f"INSERT INTO batches({_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                         (batch_id, office, account_id, now, purpose, region, "running", len(good), 0, 0, len(rejects),
                          "", 0))
        thread = threading.Thread(target=self._run, args=(batch_id, folder, purpose, region, good, rejects, receipts),
                                  name=f"web-batch-{batch_id}", daemon=True)
        self._threads[batch_id] = thread
        thread.start()
        batch = self.get(batch_id)
        assert batch is not None
        return batch

    def get(self, batch_id: str) -> Batch | None:
        row = self.db.one(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
        return None if row is None else Batch(*row)

    def list(self, office: str | None = None, limit: int = 200) -> list[Batch]:
        if office is None:
            rows = self.db.all(f"SELECT {_COLUMNS} FROM batches ORDER BY created_ms DESC LIMIT ?", (limit,))
        else:
            rows = self.db.all(f"SELECT {_COLUMNS} FROM batches WHERE office = ? ORDER BY created_ms DESC LIMIT ?",
                               (office, limit))
        return [Batch(*r) for r in rows]

    def file(self, batch: Batch, name: str) -> Path:
        return self.root / batch.id / FILES[name]

    def join(self, batch_id: str, timeout: float | None = None) -> None:
        """Wait for a batch's thread to end (tests, and closing the application)."""
        thread = self._threads.get(batch_id)
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        for batch_id in list(self._threads):
            self.join(batch_id, timeout=60)

    # -- the background run ----------------------------------------------------------------

    def _update(self, batch_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.db.tx() as conn:
            conn.execute(f"UPDATE batches SET {sets} WHERE id = ?", (*values.values(), batch_id))

    def _run(self, batch_id: str, folder: Path, purpose: str, region: str, good: list[Any], rejects: list[Any],
             receipts: dict[str, Any]) -> None:
        """As `hedui household check-batch`: households without a consent or a standard are rejected, the rest
        decided in chunks; whole lines in results.jsonl as they come, rejects.csv at the end, whatever happens."""
        member, period = self.member, current_period()
        status, error = "done", ""
        out = os.fdopen(os.open(folder / FILES["results"], os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600),
                        "w", encoding="utf-8")
        try:
            with CoordinatorClient(member) as coordinator:
                standards = StandardsInForce(member, coordinator.signed_directory(max_age_s=0))
            todo = []
            for h in good:
                try:
                    if h.key not in receipts:
                        raise BadInput("no consent for this household in the consents file")
                    where = h.region or region
                    if not where:
                        raise BadInput("the household has no region: give a region column or the batch's region")
                    standards.find(where, purpose, period)
                except BadInput as exc:
                    rejects.append(reject_household(h, str(exc)))
                    continue
                todo.append(BatchHousehold(h.key, h.ids, where, receipts[h.key]))
            self._update(batch_id, total=len(todo), rejected=len(rejects))
            asyncio.run(self._decide(batch_id, todo, purpose, period, out))
        except HeduiError as exc:
            status, error = "failed", idnumber.redact(str(exc))
        except Exception as exc:  # noqa: BLE001 - a background run ends with a status, never silently
            _log.error("web_batch_failed", batch=batch_id, error=type(exc).__name__)
            status, error = "failed", f"internal error ({type(exc).__name__})"
        finally:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            write_rejects(folder / FILES["rejects"], sorted(rejects, key=lambda r: r.line))
            self._update(batch_id, status=status, error=error, rejected=len(rejects), finished_ms=_now_ms())
            ended = self.get(batch_id)
            if self.on_end is not None and ended is not None:
                self.on_end(ended)

    async def _decide(self, batch_id: str, todo: list[BatchHousehold], purpose: str, period: str, out: Any) -> None:
        session = HouseholdBatchSession(self.member, purpose, period=period)
        done = incomplete = 0
        try:
            async for lines in pipeline(chunked(todo, CHUNK), session.check, IN_FLIGHT):
                out.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines))
                out.flush()
                done += len(lines)
                incomplete += sum(1 for r in lines if not complete(r))
                self._update(batch_id, done=done, incomplete=incomplete)
        finally:
            await session.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
