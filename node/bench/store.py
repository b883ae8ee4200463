"""The store part: ingest facts/s, and point lookups on a large store."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from node.bench.config import BenchError, LOOKUP_ATTRIBUTES
from node.bench.data import id_numbers, write_facts_csv
from node.bench.harness import _pct


def bench_ingest(work: Path, n_subjects: int, linkage_key: bytes, catalogue: Any) -> dict[str, Any]:
    """Time ingest_file of a generated 5-facts-per-subject CSV into a fresh store."""
    from node.store.factory import DEFAULT_URL, open_url
    from node.store.ingest import ingest_file

    csv_path = work / "ingest.csv"
    facts = write_facts_csv(csv_path, id_numbers(n_subjects, region="440304"), facts_per_subject=5)
    with open_url(DEFAULT_URL, work / "ingest-store") as storage, storage.facts() as store:
        started = time.perf_counter()
        report = ingest_file(store, csv_path, linkage_key=linkage_key, catalogue=catalogue)
        seconds = time.perf_counter() - started
    if report.facts_written != facts or report.subjects != n_subjects:
        raise BenchError(f"ingest wrote {report.facts_written} facts for {report.subjects} subjects, "
                         f"expected {facts} for {n_subjects}")
    csv_path.unlink()
    return {"ingest_facts": facts, "ingest_subjects": n_subjects, "ingest_seconds": seconds,
            "ingest_facts_per_s": facts / seconds}


def build_lookup_store(work: Path, n_subjects: int, linkage_key: bytes, catalogue: Any,
                       data_dir: Path | None = None) -> tuple[Path, list[str], dict[str, Any]]:
    """A store of `n_subjects` subjects with 2-3 facts each (one ingest) in `data_dir` (default
    work/lookup-store); returns dir, IDs, stats."""
    from node.store.factory import DEFAULT_URL, open_url
    from node.store.ingest import ingest_file

    started = time.perf_counter()
    ids = id_numbers(n_subjects, region="440103")
    csv_path = work / "lookup.csv"
    facts = write_facts_csv(csv_path, ids, facts_per_subject=2.5, seed=11)
    generated = time.perf_counter()
    data_dir = data_dir or work / "lookup-store"
    with open_url(DEFAULT_URL, data_dir) as storage, storage.facts() as store:
        report = ingest_file(store, csv_path, linkage_key=linkage_key, catalogue=catalogue)
        counts = store.counts()
    csv_path.unlink()
    if counts["subjects"] != n_subjects:
        raise BenchError(f"lookup store holds {counts['subjects']} subjects, expected {n_subjects}")
    done = time.perf_counter()
    return data_dir, ids, {
        "lookup_store_subjects": n_subjects,
        "lookup_store_facts": facts,
        "lookup_store_build_s": done - started,
        "lookup_store_csv_s": generated - started,
        "lookup_store_ingest_facts_per_s": facts / report.seconds,
        "lookup_store_mb": sum(p.stat().st_size for p in data_dir.glob("store.sqlite*")) / 2**20,
    }


def bench_lookups(data_dir: Path, ids: list[str], linkage_key: bytes, *, seconds: float,
                  warmup: float, pool: int = 100_000, seed: int = 3) -> dict[str, Any]:
    """Store.lookup of one random token x 5 attributes, one at a time, for `seconds`."""
    from node.crypto.tokens import subject_token
    from node.store.factory import DEFAULT_URL, open_url

    rng = random.Random(seed)
    tokens = [subject_token(linkage_key, n) for n in rng.choices(ids, k=min(pool, len(ids) * 4))]
    attrs = list(LOOKUP_ATTRIBUTES)
    with open_url(DEFAULT_URL, data_dir) as storage, storage.facts() as store:
        lookup = store.lookup
        i, n_tokens = 0, len(tokens)
        deadline = time.perf_counter() + warmup
        while time.perf_counter() < deadline:
            lookup([tokens[i % n_tokens]], attrs)
            i += 1
        latencies: list[float] = []
        hits = 0
        perf = time.perf_counter
        started = perf()
        deadline = started + seconds
        while True:
            t0 = perf()
            if t0 >= deadline:
                break
            found = lookup([tokens[i % n_tokens]], attrs)
            latencies.append(perf() - t0)
            hits += len(found)
            i += 1
        elapsed = perf() - started
    if not latencies or hits < 2 * len(latencies):
        raise BenchError(f"lookups found {hits} facts in {len(latencies)} lookups (expected 2-3 each)")
    return {"lookups": len(latencies), "lookups_per_s": len(latencies) / elapsed,
            "lookup_p50_us": _pct(latencies, 50) * 1e6, "lookup_p99_us": _pct(latencies, 99) * 1e6,
            "lookup_facts_per_lookup": hits / len(latencies)}
