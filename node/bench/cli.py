"""The bench's command line: run the parts asked for, print the table and the JSON summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.bench.batch import batch_client_main, bench_batch, bench_household, household_client_main
from node.bench.config import DEFAULT_STORES, BenchError, PARTS, PROVIDER, Sizes, VERIFY_RATIO_C32_GOAL
from node.bench.harness import _profiler_hooks, _rss_mb, code_version, machine_info
from node.bench.national import national
from node.bench.node_parts import bench_node, node_federation
from node.bench.report import goals, table
from node.bench.routed import bench_routed, routed_client_main
from node.bench.rpc import client_main, federation, rpc_phases, run_load, summarise
from node.bench.scale import DEFAULT_CURVE, QUICK_CURVE, curve, parse_curve, point_sizes, run_point
from node.bench.store import bench_ingest, bench_lookups, build_lookup_store


def _client_entry() -> int:
    spec = json.loads(sys.stdin.read())
    mode = spec.get("mode", "rpc")
    if mode == "routed":
        routed_client_main(spec)
    elif mode == "batch":
        asyncio.run(batch_client_main(spec))
    elif mode == "household":
        asyncio.run(household_client_main(spec))
    else:
        asyncio.run(client_main(spec))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench (the parts of --only); returns the JSON summary."""
    from node import logs

    logs.configure("warning", json=True)
    sizes = Sizes.choose(args)
    parts: set[str] = set(args.only)
    started = time.perf_counter()
    out: dict[str, Any] = {"quick": bool(args.quick), "seconds_per_phase": sizes.seconds,
                           "warmup_s": sizes.warmup, "rounds": sizes.rounds, "concurrency": sizes.concurrency,
                           "parts": [p for p in PARTS if p in parts]}
    part_s: dict[str, float] = {}
    c = sizes.concurrency
    profile: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hedui-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        if "rpc" in parts:
            t0 = time.perf_counter()
            with federation(work, sizes) as (fed, setup, _echo):
                results, msg_sizes = run_load(setup, sizes, rpc_phases(c), server_cpu=fed.server_cpu,
                                             **_profiler_hooks(args, fed.loop, profile))
                rss, peak = _rss_mb()
            out.update(summarise(results, c))
            ratio = out["verify_ratio_c32"]
            out["verify_ratio_c32_goal"] = VERIFY_RATIO_C32_GOAL
            out["met"] = ratio >= VERIFY_RATIO_C32_GOAL
            out["shortfall"] = max(0.0, VERIFY_RATIO_C32_GOAL - ratio)
            out["verify_c32_needed_per_s"] = VERIFY_RATIO_C32_GOAL * out["echo_c32_per_s"]
            out["request_bytes"] = msg_sizes.get("request_bytes")
            out["response_bytes"] = msg_sizes.get("response_bytes")
            out["node_rss_mb"] = rss
            out["node_peak_rss_mb"] = peak
            out["node_process"] = "2 province nodes + echo server (one process, one loop); the coordinator its own process"
            out["direct_p50_ms"] = out["verify_seq_p50_ms"]
            part_s["rpc"] = time.perf_counter() - t0
        if parts & {"store", "rss", "workers"}:
            with node_federation(work) as nfed:
                member = nfed.member(PROVIDER)
                catalogue = member.catalogue
                if "store" in parts:
                    from node.crypto.tokens import new_linkage_key

                    t0 = time.perf_counter()
                    out.update(bench_ingest(work, sizes.ingest_subjects, new_linkage_key(), catalogue))
                    part_s["ingest"] = time.perf_counter() - t0
                # The lookup store is the provider node's own store, under the federation's linkage
                # key, so the node subprocess of the rss and workers parts serves the same subjects.
                t0 = time.perf_counter()
                data_dir, ids, stats = build_lookup_store(work, sizes.lookup_subjects, member.linkage_key, catalogue,
                                                          data_dir=member.cfg.data_dir)
                out.update(stats)
                part_s["lookup_store"] = time.perf_counter() - t0
                if "store" in parts:
                    t0 = time.perf_counter()
                    out.update(bench_lookups(data_dir, ids, member.linkage_key, seconds=sizes.seconds * sizes.rounds,
                                             warmup=sizes.warmup))
                    part_s["lookups"] = time.perf_counter() - t0
                if parts & {"rss", "workers"}:
                    t0 = time.perf_counter()
                    out.update(bench_node(nfed, ids, sizes, parts, work, {}))
                    part_s["node"] = time.perf_counter() - t0
                del ids
        if parts & {"routed", "batch", "household"}:
            for n, store in enumerate(stores_of(args, quick=sizes.quick)):  # the first store's figures are the plain keys (and the goals)
                t0 = time.perf_counter()
                # a later store runs the parts the issue compares across stores: routed and batch
                store_parts = parts if n == 0 else parts & {"routed", "batch"}
                if not store_parts:
                    continue
                figures = _national_parts(args, work, sizes, store_parts, profile, part_s, store, first=n == 0)
                out.update(figures if n == 0 else {f"{store}_{k}": v for k, v in figures.items()})
                part_s["national" if n == 0 else f"national_{store}"] = time.perf_counter() - t0
        curve_sizes = args.scale_provinces if args.scale_provinces is not None else (
            QUICK_CURVE if sizes.quick else DEFAULT_CURVE)
        if len(curve_sizes) >= 2 and parts & {"routed", "batch"}:
            t0 = time.perf_counter()
            points = {}
            for n in curve_sizes:  # the main run's size reuses its figures; the others get a smaller run of their own
                points[n] = out if n == sizes.provinces else run_point(
                    work / f"scale-{n}", point_sizes(sizes, n), routed="routed" in parts, batch="batch" in parts,
                    hooks=lambda nat: {"server_cpu": nat.fed.server_cpu})
            out.update(curve(points, sizes.routed_concurrency))
            part_s["scale"] = time.perf_counter() - t0
    if profile.get("profiler") is not None:
        profile["profiler"].dump_stats(args.profile)
    if out.get("routed_p50_ms") is not None and out.get("direct_p50_ms"):
        out["routed_over_direct_p50"] = out["routed_p50_ms"] / out["direct_p50_ms"]
    out["goals"] = goals(out)
    if out.get("household_households_per_s") and out.get("batch_households_per_s"):
        out["household_over_batch"] = out["household_households_per_s"] / out["batch_households_per_s"]
    for name, key in (("routed_over_direct_p50", "routed_over_direct_p50"), ("batch", "batch_households_per_s"),
                      ("household", "household_households_per_s"),
                      ("node_rss_mb_1m", "node_rss_mb_1m"), ("verify_ratio_c32", "verify_ratio_c32"),
                      ("ingest", "ingest_facts_per_s")):
        g = out["goals"][key]
        out[f"{name}_goal"] = g["goal"]
        out[f"{name}_met"] = g["met"]
        out[f"{name}_shortfall"] = g["shortfall"]
    out["goals_met"] = sum(1 for g in out["goals"].values() if g["met"])
    out["goals_measured"] = sum(1 for g in out["goals"].values() if g["met"] is not None)
    out["part_s"] = part_s
    out["total_s"] = time.perf_counter() - started
    out["machine"] = machine_info()
    out["code"] = code_version()
    return out



def _national_parts(args: argparse.Namespace, work: Path, sizes: Sizes, parts: set[str], profile: dict[str, Any],
                    part_s: dict[str, float], store: str, *, first: bool) -> dict[str, Any]:
    """The routed, batch and household parts on one national federation whose members keep `store`."""
    out: dict[str, Any] = {"national_store": store}
    (work / store).mkdir(exist_ok=True)
    with national(work / store, sizes, routed="routed" in parts, batch=bool(parts & {"batch", "household"}),
                  household="household" in parts, store=store) as nat:
        out.update(nat.stats)
        hooks = {**_profiler_hooks(args, nat.fed.loop, profile), "server_cpu": nat.fed.server_cpu}
        if nat.routed is not None:
            t1 = time.perf_counter()
            out.update(bench_routed(nat, sizes, hooks))
            part_s["routed" if first else f"routed_{store}"] = time.perf_counter() - t1
        if "batch" in parts:
            t1 = time.perf_counter()
            out.update(bench_batch(nat, sizes, hooks))
            part_s["batch" if first else f"batch_{store}"] = time.perf_counter() - t1
        if "household" in parts:
            t1 = time.perf_counter()
            out.update(bench_household(nat, sizes, hooks))
            part_s["household" if first else f"household_{store}"] = time.perf_counter() - t1
        rss, _ = _rss_mb()
        out["national_server_rss_mb"] = rss
        out["national_process"] = (f"{nat.stats['national_provinces']} province nodes (one process, one loop); "
                                   "the coordinator its own process" + ("; PostgreSQL a local server, one database per "
                                                                       "member" if store == "postgresql" else ""))
    return out


def stores_of(args: argparse.Namespace, *, quick: bool) -> list[str]:
    """The stores the national parts run on: `--store`, else SQLite and PostgreSQL (a quick run: SQLite)."""
    if args.store is not None:
        return list(args.store)
    return ["sqlite"] if quick else list(DEFAULT_STORES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m node.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short phases (for tests)")
    p.add_argument("--seconds", type=float, help="measured seconds per phase and round (default 2; quick 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each phase (default 0.5; quick 0.3)")
    p.add_argument("--rounds", type=int, help="rounds of interleaved phases; medians are reported (default 3; quick 1)")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight in the concurrent phases")
    p.add_argument("--ingest-subjects", type=int, help="subjects in the ingest file, 5 facts each")
    p.add_argument("--lookup-subjects", type=int, help="subjects in the lookup store (default 1,000,000)")
    p.add_argument("--only", type=_parts, default=list(PARTS), metavar="PART[,PART...]",
                   help=f"run only these parts: {', '.join(PARTS)} or all (default all)")
    p.add_argument("--provinces", type=int, default=31, help="provinces of the routed/batch federation (default 31)")
    p.add_argument("--scale-provinces", type=_curve, metavar="N,N,...",
                   help="federation sizes of the scale curve of the routed and batch parts (default 3,11,31; quick none; "
                        "none: no curve); a size other than --provinces runs with fewer households, one round")
    p.add_argument("--routed-concurrency", type=int, default=8, help="threads of the routed throughput phase (default 8)")
    p.add_argument("--batch-households", type=int, help="households per batch pass (default 4096; quick 256)")
    p.add_argument("--batch-chunk", type=int, default=128, help="households per batch message (default 128, as verify-batch)")
    p.add_argument("--batch-in-flight", type=int, default=4, help="batch messages in flight (default 4, as verify-batch)")
    p.add_argument("--profile", metavar="OUT", help="cProfile the in-process servers' loop during --profile-phase")
    p.add_argument("--profile-phase", default="verify_c", choices=("verify_c", "verify_seq", "echo_c", "routed_seq",
                                                                      "routed_c", "batch", "household"),
                   help="the phase --profile covers (default verify_c)")
    p.add_argument("--store", type=_stores, default=None, metavar="STORE[,STORE]",
                   help="the members' storage in the routed, batch and household parts: sqlite, postgresql "
                        "(a throwaway local server, one database per member), or both, e.g. sqlite,postgresql "
                        "(the default; quick: sqlite): the first store runs every part, a later one the routed and "
                        "batch parts, its figures prefixed with its name")
    p.add_argument("--tmp", help="directory for the temporary stores (default: system temp)")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.concurrency, args.routed_concurrency, args.batch_chunk, args.batch_in_flight) < 1:
        p.error("--concurrency, --routed-concurrency, --batch-chunk and --batch-in-flight must be at least 1")
    return args


def _curve(value: str) -> tuple[int, ...]:
    try:
        return parse_curve(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stores(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names or set(names) - {"sqlite", "postgresql"}:
        raise argparse.ArgumentTypeError(f"stores are sqlite and postgresql, not {value!r}")
    return names


def _parts(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if "all" in names:
        return list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)} or all, not {', '.join(unknown) or value!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from gRPC core as 33 servers stop
    args = parse_args(argv)
    if args.client:
        return _client_entry()
    try:
        out = run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(table(out))
    print(json.dumps(out, sort_keys=True))
    return 0
