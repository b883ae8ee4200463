"""The workers part's routed and batch traffic: through the coordinator to a `--workers 2` node, and how the
node's workers split the CPU of each (read from /proc per worker pid, whatever spreads the connections)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from node.bench.config import CHECKS, PROVIDER, REQUESTER, Sizes
from node.bench.data import write_households
from node.bench.harness import phase_stats

#: The checks of the split phases: facts every lookup-store subject has (the first two of FACT_SPECS).
SPLIT_CHECKS: Final[tuple[str, ...]] = (CHECKS[0], CHECKS[2])
BATCH_MEMBERS: Final[int] = 3


def split_households(path: Path, ids: list[str], members: int) -> dict[str, list[str]]:
    """Households of `members` of `ids` (all held by the provider) as a verify-batch CSV; household -> holders."""
    plan = [(f"w{i:06d}", ids[i * members:(i + 1) * members], [PROVIDER] * members) for i in range(len(ids) // members)]
    return write_households(path, plan)


def connections_knob(fed: Any) -> dict[str, Any]:
    """`[limits] connections_per_peer` of the coordinator and the requester, where the code has it (else None)."""
    from node import config as config_mod

    coordinator = config_mod.load(fed.coordinator_config).limits
    requester = config_mod.load(fed.configs[REQUESTER]).limits
    return {"workers2_coordinator_connections_per_peer": getattr(coordinator, "connections_per_peer", None),
            "workers2_client_connections_per_peer": getattr(requester, "connections_per_peer", None)}


def bench_split(fed: Any, node: Any, ids: list[str], sizes: Sizes, work: Path,
                run_against: Callable[[Any, dict[str, Any]], tuple[dict[str, Any], dict[str, list[float]]]],
                ) -> dict[str, Any]:
    """Routed (threads) and batch (pipelined chunks) from REQUESTER through the coordinator to `node`
    (`--workers 2`, the provider): rates and each worker's share of the node's CPU, per kind of traffic."""
    rng = random.Random(11)
    n_routed = min(sizes.node_pool, len(ids) // 4)
    n_batch = min(128 if sizes.quick else 1024, (len(ids) - n_routed) // BATCH_MEMBERS)
    chosen = rng.sample(ids, n_routed + n_batch * BATCH_MEMBERS)
    routed_csv, batch_csv = work / "workers-routed.csv", work / "workers-batch.csv"
    routed_expect = split_households(routed_csv, chosen[:n_routed], 1)
    batch_expect = split_households(batch_csv, chosen[n_routed:], BATCH_MEMBERS)
    common = {"config": str(fed.configs[REQUESTER]), "purpose": "dibao", "checks": list(SPLIT_CHECKS)}
    c = sizes.routed_concurrency
    routed, routed_shares = run_against(node, {
        **common, "mode": "routed", "households": str(routed_csv), "expect": routed_expect,
        "seconds": sizes.node_seconds, "warmup": sizes.part_warmup, "rounds": 1, "first_warmup": 0.0,
        "phases": [{"name": "routed_c", "concurrency": c}]})
    batch, batch_shares = run_against(node, {
        **common, "mode": "batch", "households": str(batch_csv), "expect": batch_expect, "rounds": 1,
        "chunk": sizes.batch_chunk, "in_flight": sizes.batch_in_flight})
    r = phase_stats(routed["results"], "routed_c", "x")
    b = phase_stats(batch["results"], "batch", "x")
    return {
        **connections_knob(fed),
        "workers2_routed_concurrency": c,
        "workers2_routed_per_s": r["x_per_s"],
        "workers2_routed_failed": r["x_failed"],
        "workers2_routed_cpu_share": routed_shares.get("routed_c"),
        "workers2_batch_households": len(batch_expect),
        "workers2_batch_households_per_s": b["x_per_s"],
        "workers2_batch_failed_households": b["x_failed"],
        "workers2_batch_cpu_share": batch_shares.get("batch"),
    }


def split_lines(out: dict[str, Any]) -> list[str]:
    """The split as table lines (none when it was not measured)."""
    if "workers2_routed_cpu_share" not in out:
        return []

    def split(key: str) -> str:
        return "/".join(f"{x * 100:.0f}%" for x in out[key] or []) or "-"

    knob = out.get("workers2_coordinator_connections_per_peer")
    conns = "one connection per peer (no connections_per_peer knob)" if knob is None else (
        f"connections_per_peer {knob} at the coordinator, {out.get('workers2_client_connections_per_peer')} at the client")
    return [f"           through the coordinator to --workers 2 ({conns}): routed c{out['workers2_routed_concurrency']} "
            f"{out['workers2_routed_per_s']:.0f}/s, split {split('workers2_routed_cpu_share')}; batch "
            f"{out['workers2_batch_households_per_s']:.0f} households/s, split {split('workers2_batch_cpu_share')}"]
