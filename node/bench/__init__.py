"""Performance bench: the stack against its own limit, on this machine, in one run.

    python -m node.bench [--quick] [--seconds S] [--warmup W] [--concurrency C] [--only PARTS] [--profile OUT]

One run measures, on this machine (`--only` picks parts, comma-separated):

1. `rpc`: a bare gRPC echo (bytes in, bytes out) on a separate grpc.aio server built like a
   node's (same server options, same dynamic mutual-TLS credentials of a real province config),
   sequentially and with C calls in flight on one aio channel; and `Verify` against a real
   province node of an in-process federation (coordinator and two provinces, data ingested):
   one subject, five checks, a valid consent receipt, fresh nonce and signature per call, the
   answer's signature checked by the client; sequential and C in flight (C asyncio tasks on one
   channel sharing one AsyncBatchSigner). The echo is the stack's own limit: the same gRPC,
   TLS, process model and message sizes with no Hedui work at all;
2. `store`: ingest of a generated CSV into a fresh store (facts/s), and point lookups
   (1 token x 5 attributes, random tokens) on a store of 1,000,000 subjects;
3. `rss`: resident memory of one `hedui node serve` process (a subprocess) serving that
   1,000,000-subject store, after sequential and C-in-flight Verify of random subjects;
4. `workers`: Verify C in flight against `hedui node serve --workers 1` and `--workers 2` on the
   same store (one channel, as the stack's clients use, and several connections); then routed and
   batch traffic through the coordinator to the `--workers 2` node, with each worker's share of its CPU
   (read per worker pid from /proc: the split shows whatever spreads the connections over the workers);
5. `routed`: `routed_verify` through the coordinator of a 31-province federation (households of
   1-3 members whose data sit in 1-2 provinces other than the requester's), sequentially (p50,
   p99) and from several threads (throughput), against the direct Verify p50 of part 1;
6. `batch`: BatchSession (DiscoverBatch + sealed RouteBatch, chunks pipelined as
   `hedui verify-batch` does) over households of 3 members spread over 2-3 provinces, 6 checks,
   in the 31-province federation; consents are granted in batch first, untimed;
7. `household`: the household means test of `hedui household check-batch` (HouseholdBatchSession:
   OpenRoundBatch + RouteRoundBatch, masked contributions summed, the decision records signed,
   each result line serialized) over the same households, on a published standard of their
   region, in the same federation; reported beside the per-person batch of the same run;
8. the scale curve (with routed or batch): those parts again at the other sizes of `--scale-provinces`
   (default 3, 11, 31; fewer households, one round), each figure by size, the least-squares slope per
   added province, and whether CPU per batch household grows with the number of provinces.

Province nodes run in this process (parts 1, 5, 6, 7; their coordinator as a `hedui coordinator serve`
subprocess, as deployed) or as `hedui node serve` subprocesses (3, 4); the
load generator always runs in a child process (`python -m node.bench --client`, spec on stdin),
so client and servers do not share a GIL. Only successful, checked calls count: any failed call,
bad signature, missing or unexpected answer aborts the bench with a non-zero exit. A readable
table goes to stdout, then as the last line one JSON object with every number, the machine and
the commit, and a `goals` object (goal, value, met, shortfall) for each goal:
verify_ratio_c32 >= 0.8, routed_over_direct_p50 <= 3, batch_households_per_s >= 2000,
household_households_per_s >= 2000, node_rss_mb_1m < 300, ingest_facts_per_s >= 250000.

The package (`python -m node.bench` runs `node.bench.cli.main`): `config` (goals, parts, checks, sizes),
`data` (generated data), `harness` (machine and CPU accounting, load drivers, the child runner, node
subprocesses), one module per part (`rpc`, `store`, `node_parts` for rss and workers, `national` with
`routed` and `batch` for the routed, batch and household parts), `scale` (the curve), `cluster` (the
federations, coordinator in a subprocess), `report` (goals and table), `cli`.
"""

from __future__ import annotations

from node.bench.config import BATCH_CHECKS, BATCH_GOAL, BenchError, CHECKS, ECHO_METHOD, ECHO_SERVICE, FACT_SPECS, HOUSEHOLD_GOAL, HOUSEHOLD_REGION, HOUSEHOLD_STANDARDS, LOOKUP_ATTRIBUTES, MAX_FAILED_SHARE, MEMBER_FACT_SPECS, NODE_RSS_MB_1M_GOAL, PARTS, PROVIDER, REQUESTER, ROUTED_OVER_DIRECT_P50_GOAL, Sizes, VERIFY_RATIO_C32_GOAL  # noqa: F401
from node.bench.data import id_numbers, plan_households, planted_totals, write_facts_csv, write_households  # noqa: F401
from node.bench.harness import Failures, NodeProcess, code_version, machine_info, node_process, phase_stats, proc_children, proc_cpu, proc_status, run_child  # noqa: F401
from node.bench.store import bench_ingest, bench_lookups, build_lookup_store  # noqa: F401
from node.bench.rpc import RpcSetup, client_main, federation, grant_households, rpc_phases, run_load, start_echo_server, summarise  # noqa: F401
from node.bench.node_parts import bench_node, node_federation  # noqa: F401
from node.bench.national import National, national  # noqa: F401
from node.bench.routed import bench_routed, check_routed, routed_client_main  # noqa: F401
from node.bench.batch import batch_client_main, bench_batch, bench_household, check_batch_record, check_household_line, household_client_main, pass_figures  # noqa: F401
from node.bench.report import goals, table  # noqa: F401
from node.bench.cli import main, parse_args, run  # noqa: F401
