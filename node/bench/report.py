"""The bench's goals (met, shortfall) and its readable table."""

from __future__ import annotations

from typing import Any

from node.bench.config import BATCH_GOAL, HOUSEHOLD_GOAL, INGEST_GOAL, NODE_RSS_MB_1M_GOAL, ROUTED_OVER_DIRECT_P50_GOAL, VERIFY_RATIO_C32_GOAL
from node.bench.scale import curve_table
from node.bench.workers_split import split_lines


def goals(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal: its bound, the measured value, met, and shortfall (how far from the bound, in
    the value's unit; 0 when met) and factor (how many times better the value must get)."""
    specs = (  # name, value key, bound, at least (True) or at most (False), strict
        ("verify_ratio_c32", "verify_ratio_c32", VERIFY_RATIO_C32_GOAL, True, False),
        ("routed_over_direct_p50", "routed_over_direct_p50", ROUTED_OVER_DIRECT_P50_GOAL, False, False),
        ("batch_households_per_s", "batch_households_per_s", BATCH_GOAL, True, False),
        ("household_households_per_s", "household_households_per_s", HOUSEHOLD_GOAL, True, False),
        ("node_rss_mb_1m", "node_rss_mb_1m", NODE_RSS_MB_1M_GOAL, False, True),
        ("ingest_facts_per_s", "ingest_facts_per_s", INGEST_GOAL, True, False),
    )
    result: dict[str, dict[str, Any]] = {}
    for name, key, bound, at_least, strict in specs:
        value = out.get(key)
        if value is None:
            result[name] = {"goal": bound, "value": None, "met": None, "shortfall": None, "factor": None,
                            "rule": (">=" if at_least else "<" if strict else "<=")}
            continue
        if at_least:
            met = value >= bound
            shortfall = max(0.0, bound - value)
            factor = bound / value if value > 0 else None
        else:
            met = value < bound if strict else value <= bound
            shortfall = max(0.0, value - bound)
            factor = value / bound
        result[name] = {"goal": bound, "value": value, "met": met, "shortfall": shortfall,
                        "factor": max(1.0, factor) if factor is not None else None,
                        "rule": (">=" if at_least else "<" if strict else "<=")}
    return result


def table(out: dict[str, Any]) -> str:
    """The summary as a readable table."""
    c = out.get("concurrency", 32)
    lines = []
    m = out.get("machine", {})
    lines.append(f"Hedui bench - {m.get('nproc')} CPU {m.get('cpu_model')}, Python {m.get('python')}, "
                 f"grpcio {m.get('grpcio')}, protobuf {m.get('protobuf')}; "
                 f"commit {out.get('code', {}).get('commit')}{'+dirty' if out.get('code', {}).get('dirty') else ''}"
                 + (" [quick]" if out.get("quick") else ""))
    if "verify_seq_per_s" in out:
        lines.append(f"RPC: {out['rounds']} x {out['seconds_per_phase']:g} s per phase (median of rounds), "
                     f"{out['warmup_s']:g} s warm-up each; "
                     f"request {out['request_bytes']} B, response {out['response_bytes']} B")
        lines.append(f"{'phase':<14}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'us/call':>9}"
                     f"{'client CPU':>12}{'other CPU':>11}")
        for key in ("echo_seq", "verify_seq", f"echo_c{c}", f"verify_c{c}"):
            lines.append(f"{key:<14}{out[f'{key}_per_s']:>10.0f}{out[f'{key}_p50_ms']:>9.2f}{out[f'{key}_p99_ms']:>9.2f}"
                         f"{out[f'{key}_server_cpu'] * 100:>11.0f}%{out[f'{key}_server_cpu_us_per_call']:>9.0f}"
                         f"{out[f'{key}_client_cpu'] * 100:>11.0f}%{out[f'{key}_other_cpu'] * 100:>10.0f}%")
        rounds = ", ".join(f"{r:.2f}" for r in out["verify_ratio_c32_rounds"])
        lines.append(f"verify/echo sequential {out['verify_ratio_seq']:.2f}; c{c} {out[f'verify_ratio_c{c}']:.2f} "
                     f"[rounds {rounds}] "
                     f"(goal {out['verify_ratio_c32_goal']:.2f}: {'met' if out['met'] else 'NOT met'}, "
                     f"needs {out['verify_c32_needed_per_s']:.0f}/s)")
        lines.append(f"server process RSS {out['node_rss_mb']:.0f} MiB (peak {out['node_peak_rss_mb']:.0f} MiB)")
    if "ingest_facts_per_s" in out:
        lines.append(f"ingest: {out['ingest_facts']:,} facts / {out['ingest_subjects']:,} subjects in "
                     f"{out['ingest_seconds']:.1f} s = {out['ingest_facts_per_s']:,.0f} facts/s")
        lines.append(f"lookup store: {out['lookup_store_subjects']:,} subjects, {out['lookup_store_facts']:,} facts, "
                     f"{out['lookup_store_mb']:.0f} MiB, built in {out['lookup_store_build_s']:.1f} s "
                     f"({out['lookup_store_ingest_facts_per_s']:,.0f} facts/s ingest)")
        lines.append(f"lookups (1 token x 5 attributes): {out['lookups_per_s']:,.0f}/s, "
                     f"p50 {out['lookup_p50_us']:.0f} us, p99 {out['lookup_p99_us']:.0f} us")
    if "node_rss_mb_1m" in out:
        lines.append(f"node process (hedui node serve, {out['node_store_subjects']:,} subjects; Verify of "
                     f"{out['node_pool_subjects']} random subjects, started in {out['node_startup_s']:.1f} s):")
        lines.append(_phase_header())
        for key in ("node_verify_seq", f"node_verify_c{c}"):
            if f"{key}_per_s" in out:
                lines.append(_phase_line(out, key))
        lines.append(f"node RSS {out['node_rss_mb_1m']:.0f} MiB (peak {out['node_peak_rss_mb_1m']:.0f} MiB) after "
                     f"{out['node_rss_after_verifies']:,} Verify calls")
    if "workers_speedup" in out:
        share = "/".join(f"{x * 100:.0f}%" for x in out["workers2_cpu_share"] or [])
        share1 = "/".join(f"{x * 100:.0f}%" for x in out["workers2_cpu_share_1conn"] or [])
        lines.append(f"--workers: Verify c{c} over {out['node_conns']} connections: workers 1 "
                     f"{out['verify_c32_workers1_per_s']:.0f}/s, workers 2 {out['verify_c32_workers2_per_s']:.0f}/s "
                     f"= {out['workers_speedup']:.2f}x (node CPU {out['workers1_server_cpu'] * 100:.0f}% vs "
                     f"{out['workers2_server_cpu'] * 100:.0f}%, split {share}; client CPU "
                     f"{out['workers1_client_cpu'] * 100:.0f}% vs {out['workers2_client_cpu'] * 100:.0f}%)")
        if out.get("workers_speedup_1conn") is not None:
            lines.append(f"           over one channel: workers 1 {out['verify_c32_workers1_1conn_per_s']:.0f}/s, workers 2 "
                         f"{out['verify_c32_workers2_1conn_per_s']:.0f}/s = {out['workers_speedup_1conn']:.2f}x "
                         f"(split {share1})")
        lines.extend(split_lines(out))
    if "routed_p50_ms" in out:
        rc = out["routed_concurrency"]
        lines.append(f"routed (routed_verify through the coordinator, {out['national_provinces']} provinces, nodes in one process; "
                     f"{out['routed_households']} households of 1-3 members, data in 1-2 other provinces):")
        lines.append(_phase_header())
        for key in ("routed_seq", f"routed_c{rc}"):
            lines.append(_phase_line(out, key))
        if out.get("routed_failed"):
            lines.append(f"  ! {out['routed_failed']} routed verifications refused or wrong (not counted), e.g. "
                         f"{(out['routed_seq_failure_examples'] + out[f'routed_c{rc}_failure_examples'])[0][:300]}")
        if out.get("routed_seq_step_p50_ms"):
            lines.append("  sequential step p50: " + ", ".join(
                f"{k.removeprefix('rpc_')} {v:.1f} ms" for k, v in out["routed_seq_step_p50_ms"].items())
                + f" (one long-lived coordinator connection; a new connection would cost "
                f"{out['routed_connect_ms']:.1f} ms)")
        if out.get("routed_over_direct_p50") is not None:
            lines.append(f"routed p50 {out['routed_p50_ms']:.2f} ms / direct Verify p50 {out['direct_p50_ms']:.2f} ms = "
                         f"{out['routed_over_direct_p50']:.2f}x")
    if "batch_households_per_s" in out:
        rounds = ", ".join(f"{r:.0f}" for r in out["batch_rounds_per_s"])
        lines.append(f"batch (BatchSession, {out['national_provinces']} provinces, nodes in one process; "
                     f"{out['batch_households']:,} households x 3 members over 2-3 provinces, {out['batch_checks']} checks; "
                     f"chunks of {out['batch_chunk']}, {out['batch_in_flight']} in flight):")
        lines.append(f"  {out['batch_households_per_s']:,.0f} households/s [passes {rounds}], chunk p50 "
                     f"{out['batch_chunk_p50_ms']:.0f} ms p99 {out['batch_chunk_p99_ms']:.0f} ms; server CPU "
                     f"{out['batch_server_cpu'] * 100:.0f}% ({out['batch_server_cpu_us_per_household']:.0f} us/household), "
                     f"client CPU {out['batch_client_cpu'] * 100:.0f}% ({out['batch_client_cpu_us_per_household']:.0f} "
                     f"us/household), other {out['batch_other_cpu'] * 100:.0f}%; consents granted at "
                     f"{out['batch_grant_per_s']:,.0f}/s (untimed)")
    if out.get("batch_failed_households"):
        lines.append(f"  ! {out['batch_failed_households']} households incomplete or wrong (not counted), e.g. "
                     f"{out['batch_failure_examples'][0][:300]}")
    for store in ("sqlite", "postgresql"):  # the parts run again on a later --store: its figures, prefixed
        sub = {k.removeprefix(f"{store}_"): v for k, v in out.items() if k.startswith(f"{store}_")}
        if "routed_p50_ms" in sub or "batch_households_per_s" in sub:
            lines.append(f"the same on {store} ({sub.get('national_process', '')}):")
            if "routed_p50_ms" in sub:
                lines.append(_phase_header())
                lines.extend(_phase_line(sub, key) for key in ("routed_seq", f"routed_c{sub['routed_concurrency']}"))
            if "batch_households_per_s" in sub:
                lines.append(f"  batch {sub['batch_households_per_s']:,.0f} households/s, chunk p50 "
                             f"{sub['batch_chunk_p50_ms']:.0f} ms p99 {sub['batch_chunk_p99_ms']:.0f} ms; server CPU "
                             f"{sub['batch_server_cpu'] * 100:.0f}% ({sub['batch_server_cpu_us_per_household']:.0f} "
                             f"us/household), other {sub['batch_other_cpu'] * 100:.0f}%")
            if "household_households_per_s" in sub:
                lines.append(f"  household {sub['household_households_per_s']:,.0f} households/s")
    if "household_households_per_s" in out:
        rounds = ", ".join(f"{r:.0f}" for r in out["household_rounds_per_s"])
        lines.append(f"household (check-batch's HouseholdBatchSession, same federation and households, each decided on "
                     f"a published standard; {out['household_holders_per_household']:.1f} holders per household with "
                     f"the requester; chunks of {out['household_chunk']}, {out['household_in_flight']} in flight):")
        beside = (f"; per-person batch of this run {out['batch_households_per_s']:,.0f}/s "
                  f"({out['household_over_batch']:.2f}x)" if out.get("household_over_batch") else "")
        lines.append(f"  {out['household_households_per_s']:,.0f} households/s [passes {rounds}]{beside}; chunk p50 "
                     f"{out['household_chunk_p50_ms']:.0f} ms p99 {out['household_chunk_p99_ms']:.0f} ms; server CPU "
                     f"{out['household_server_cpu'] * 100:.0f}% ({out['household_server_cpu_us_per_household']:.0f} "
                     f"us/household), client CPU {out['household_client_cpu'] * 100:.0f}% "
                     f"({out['household_client_cpu_us_per_household']:.0f} us/household), other "
                     f"{out['household_other_cpu'] * 100:.0f}%; {out.get('household_line_bytes', 0):,.0f} bytes per "
                     f"result line")
    if out.get("household_failed_households"):
        lines.append(f"  ! {out['household_failed_households']} households undecided or wrong (not counted), e.g. "
                     f"{out['household_failure_examples'][0][:300]}")
    lines.extend(curve_table(out))
    if out.get("goals"):
        lines.append("goals:")
        for name, g in out["goals"].items():
            if g["met"] is None:
                lines.append(f"  {name:<24} {g['rule']} {g['goal']:g}: not measured")
                continue
            verdict = "met" if g["met"] else f"NOT met, short by {g['shortfall']:.3g} ({g['factor']:.2f}x)"
            lines.append(f"  {name:<24} {g['value']:>10.3g} {g['rule']} {g['goal']:g}: {verdict}")
    lines.append(f"total {out['total_s']:.1f} s ("
                 + ", ".join(f"{k} {v:.0f} s" for k, v in out.get("part_s", {}).items()) + ")")
    return "\n".join(lines)


def _phase_header() -> str:
    return (f"{'phase':<22}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'us/call':>9}"
            f"{'client CPU':>12}{'other CPU':>11}")


def _phase_line(out: dict[str, Any], key: str) -> str:
    per_call = out.get(f"{key}_server_cpu_us_per_call") or 0.0
    return (f"{key:<22}{out[f'{key}_per_s']:>10.0f}{out[f'{key}_p50_ms']:>9.2f}{out[f'{key}_p99_ms']:>9.2f}"
            f"{out[f'{key}_server_cpu'] * 100:>11.0f}%{per_call:>9.0f}"
            f"{out[f'{key}_client_cpu'] * 100:>11.0f}%{out[f'{key}_other_cpu'] * 100:>10.0f}%")
