"""The rss and workers parts: one `hedui node serve` subprocess on a large store, --workers 1 and 2."""

from __future__ import annotations

import contextlib
import random
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.bench.config import CHECKS, PROVIDER, REQUESTER, Sizes
from node.bench.harness import NodeProcess, node_process, phase_stats, proc_cpu, proc_status, run_child
from node.bench.workers_split import bench_split


@contextlib.contextmanager
def node_federation(work: Path) -> Iterator[Any]:
    """Keys and configs of the provider and the requester (build_federation); the coordinator runs
    here once `start()`ed; the provider's node is started as a subprocess by the callers."""
    from node.testing.cluster import build_federation

    fed = build_federation(work / "nodefed", [PROVIDER, REQUESTER])
    try:
        yield fed
    finally:
        if fed.loop is not None:
            for code in list(fed.servers):
                fed.stop_node(code)
            fed.loop.close()
            fed.loop = None


def bench_node(fed: Any, ids: list[str], sizes: Sizes, parts: set[str], work: Path,
               hooks: dict[str, Any]) -> dict[str, Any]:
    """Verify of random subjects against `hedui node serve` on the provider's store (1,000,000
    subjects by default): RSS of the node process afterwards, and --workers 1 vs 2."""
    from node.testing.cluster import LoopThread

    if fed.loop is None:
        fed.loop = LoopThread()
        fed.start_coordinator()  # points both configs at it
    c = sizes.concurrency
    pool = random.Random(5).sample(ids, min(sizes.node_pool, len(ids)))
    conns = 8
    # Lookup-store subjects have the first 2 or 3 of FACT_SPECS: 2 of the 5 checks at least are decided.
    base = {"mode": "rpc", "echo_target": None, "config": str(fed.configs[REQUESTER]), "grant_ids": pool, "min_decided": 2,
            "purpose": "dibao", "checks": list(CHECKS), "seconds": sizes.node_seconds, "warmup": sizes.part_warmup,
            "rounds": sizes.node_rounds, "first_warmup": 0.0 if sizes.node_rounds == 1 else 2 * sizes.part_warmup}
    out: dict[str, Any] = {"node_store_subjects": len(ids), "node_pool_subjects": len(pool), "node_conns": conns}

    def run_against(node: NodeProcess, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """The child on `spec` against `node`; per phase name, each worker's share of the node's CPU."""
        shares: dict[str, list[list[float]]] = {}
        marks: dict[str, list[float]] = {}

        def on_start(phase: str) -> None:
            marks[phase] = [proc_cpu(pid) for pid in node.pids]
            if hooks.get("on_start"):
                hooks["on_start"](phase)

        def on_end(phase: str) -> None:
            used = [proc_cpu(pid) - t for pid, t in zip(node.pids, marks[phase], strict=True)]
            total = sum(used) or 1.0
            shares.setdefault(phase.split("/")[0], []).append([u / total for u in used])
            if hooks.get("on_end"):
                hooks["on_end"](phase)

        results, info = run_child(spec, on_start=on_start, on_end=on_end, server_cpu=node.cpu)
        mean_shares = {name: [statistics.fmean(col) for col in zip(*rows, strict=True)] for name, rows in shares.items()}
        return {"results": results, "info": info}, mean_shares

    w1_phases = [
        {"name": "verify_seq", "kind": "verify", "concurrency": 1},
        {"name": "verify_c", "kind": "verify", "concurrency": c},
        {"name": "verify_c_conns", "kind": "verify", "concurrency": c, "channels": conns},
    ]
    if "workers" not in parts:
        w1_phases = w1_phases[:2]
    elif sizes.quick:  # keep --quick short: no sequential phase, no one-channel comparison
        w1_phases = w1_phases[1:]
    config = fed.configs[PROVIDER]
    with node_process(config, 1, work / "node-w1.log") as node:
        got, _shares = run_against(node, {**base, "verify_target": node.address, "phases": w1_phases})
        status = proc_status(node.pids[0])
        out["node_startup_s"] = node.startup_s
    results = got["results"]
    if any(p["name"] == "verify_seq" for p in w1_phases):
        out.update(phase_stats(results, "verify_seq", "node_verify_seq"))
    out.update(phase_stats(results, "verify_c", f"node_verify_c{c}"))
    out["node_rss_mb_1m"] = status.get("VmRSS")
    out["node_peak_rss_mb_1m"] = status.get("VmHWM")
    out["node_rss_after_verifies"] = sum(r["calls"] for r in results.values())
    out["node_pool_grant_s"] = got["info"].get("pool_grant_s")
    if "workers" in parts:
        out.update(phase_stats(results, "verify_c_conns", f"node_w1_verify_c{c}_conns"))
        w2_phases = [
            {"name": "verify_c", "kind": "verify", "concurrency": c},
            {"name": "verify_c_conns", "kind": "verify", "concurrency": c, "channels": conns},
        ][1 if sizes.quick else 0:]
        with node_process(config, 2, work / "node-w2.log") as node:
            got2, shares2 = run_against(node, {**base, "verify_target": node.address, "phases": w2_phases})
            out["workers2_rss_mb"] = [proc_status(pid).get("VmRSS") for pid in node.pids]
            out.update(bench_split(fed, node, ids, sizes, work, run_against))
        r2 = got2["results"]
        w1_one = phase_stats(results, "verify_c", "x")
        w1_conns = phase_stats(results, "verify_c_conns", "x")
        w2_one = phase_stats(r2, "verify_c", "x") if not sizes.quick else {"x_per_s": None}
        w2_conns = phase_stats(r2, "verify_c_conns", "x")
        out.update({
            "verify_c32_workers1_per_s": w1_conns["x_per_s"],
            "verify_c32_workers2_per_s": w2_conns["x_per_s"],
            "workers_speedup": w2_conns["x_per_s"] / w1_conns["x_per_s"],
            "verify_c32_workers1_1conn_per_s": w1_one["x_per_s"],
            "verify_c32_workers2_1conn_per_s": w2_one["x_per_s"],
            "workers_speedup_1conn": w2_one["x_per_s"] / w1_one["x_per_s"] if w2_one["x_per_s"] else None,
            "workers2_cpu_share": shares2.get("verify_c_conns"),
            "workers2_cpu_share_1conn": shares2.get("verify_c"),
            "workers1_server_cpu": w1_conns["x_server_cpu"],
            "workers2_server_cpu": w2_conns["x_server_cpu"],
            "workers1_client_cpu": w1_conns["x_client_cpu"],
            "workers2_client_cpu": w2_conns["x_client_cpu"],
            "workers1_other_cpu": w1_conns["x_other_cpu"],
            "workers2_other_cpu": w2_conns["x_other_cpu"],
            "workers1_rounds_per_s": w1_conns["x_rounds_per_s"],
            "workers2_rounds_per_s": w2_conns["x_rounds_per_s"],
        })
    return out
