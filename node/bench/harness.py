"""The bench's harness: machine and CPU accounting, load drivers, the child load generator, node subprocesses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.bench.config import BenchError, MAX_FAILED_SHARE


def machine_info() -> dict[str, Any]:
    """CPU count, CPU model, Python and library versions of this machine."""
    import grpc
    from google.protobuf.internal import api_implementation

    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": api_implementation.Type(),
        "platform": platform.platform(),
    }


def code_version() -> dict[str, Any]:
    """The package version, and the git commit measured with whether its tree had uncommitted changes
    (None when the package is installed rather than run from a checkout)."""
    from node import __version__

    root = Path(__file__).resolve().parent  # git looks upward from the package for a checkout
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"version": __version__, "commit": None, "dirty": None}
    return {"version": __version__, "commit": commit, "dirty": bool(dirty)}


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    current = peak = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return current, peak


def _cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (0, 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(f) for f in fields] + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _drive(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """Run `concurrency` tasks calling `call` back to back until `seconds` have passed.

    Returns (successful calls, elapsed seconds until the last call finished, latencies).
    Any exception propagates (and fails the bench).
    """
    perf = time.perf_counter
    latencies: list[float] = []
    deadline = perf() + seconds

    async def worker() -> None:
        while perf() < deadline:
            t0 = perf()
            await call()
            latencies.append(perf() - t0)

    started = perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), perf() - started, latencies


class _Failed(Exception):
    """A call that failed and was counted as such: not timed, not fatal."""


def _drive_threads(call: Callable[[], None], concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """`_drive` for a synchronous `call`: `concurrency` threads calling it back to back."""
    import threading

    perf = time.perf_counter
    latencies: list[float] = []
    errors: list[BaseException] = []
    deadline = perf() + seconds

    def worker() -> None:
        try:
            while perf() < deadline and not errors:
                t0 = perf()
                try:
                    call()
                except _Failed:
                    continue
                latencies.append(perf() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the driving thread
            errors.append(exc)

    started = perf()
    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return len(latencies), perf() - started, latencies


@dataclass
class Failures:
    """Calls (or households) whose answer was refused or wrong: not counted, but reported."""

    count: int = 0
    examples: list[str] | None = None

    def add(self, reason: str) -> None:
        self.count += 1
        self.examples = self.examples or []
        if len(self.examples) < 3:
            self.examples.append(reason[:400])

    def take(self) -> tuple[int, list[str]]:
        count, examples = self.count, self.examples or []
        self.count, self.examples = 0, None
        return count, examples


def _result_event(key: str, name: str, round_no: int, count: int, elapsed: float, latencies: list[float],
                  cpu: float, failures: Failures) -> dict[str, Any]:
    failed, examples = failures.take()
    if failed > MAX_FAILED_SHARE * max(1, count + failed):
        raise BenchError(f"{failed} of {count + failed} in {key} failed, e.g. {examples[0]}")
    return {"event": "result", "phase": key, "name": name, "round": round_no, "calls": count,
            "seconds": elapsed, "per_s": count / elapsed if elapsed else 0.0,
            "latencies_ms": [x * 1e3 for x in latencies], "client_cpu": cpu,
            "failed": failed, "failure_examples": examples}


def _measure_rounds(spec: dict[str, Any], drive: Callable[[dict[str, Any], float], tuple[int, float, list[float]]],
                    failures: Failures, steps: dict[str, list[float]] | None = None) -> None:
    """First warm-up, then rounds of every phase (warm-up, start, measure, end, result events).

    `steps` (step name -> durations, filled by the calls) is emptied before each measured phase
    and its medians (ms) go into the phase's result as "steps_ms"."""
    for phase in spec["phases"]:
        drive(phase, spec["first_warmup"])
    for round_no in range(spec["rounds"]):
        for phase in spec["phases"]:
            key = f"{phase['name']}/{round_no}"
            drive(phase, spec["warmup"])
            failures.take()
            if steps is not None:
                steps.clear()
            r0, t0 = _cpu_seconds(), time.perf_counter()
            _emit({"event": "start", "phase": key})
            count, elapsed, latencies = drive(phase, spec["seconds"])
            _emit({"event": "end", "phase": key})
            cpu = (_cpu_seconds() - r0) / (time.perf_counter() - t0)
            event = _result_event(key, phase["name"], round_no, count, elapsed, latencies, cpu, failures)
            if steps:
                event["steps_ms"] = {k: [x * 1e3 for x in v] for k, v in steps.items()}
            _emit(event)


def run_child(spec: dict[str, Any], *, on_start: Callable[[str], None] | None = None,
              on_end: Callable[[str], None] | None = None,
              server_cpu: Callable[[], float] = _cpu_seconds) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run `python -m node.bench --client` on `spec`; per phase its numbers and the servers' CPU
    (`server_cpu`: CPU seconds of the serving processes so far; default this process).

    Returns (results by phase/round, the child's "sizes" and "info" events merged)."""
    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    marks: dict[str, tuple[float, ...]] = {}
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.bench", "--client"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        done = False
        for line in proc.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "start":
                if on_start:
                    on_start(event["phase"])
                marks[event["phase"]] = (server_cpu(), *_machine_cpu(), time.perf_counter())
            elif kind == "end":
                cpu0, busy0, steal0, t0 = marks[event["phase"]]
                busy1, steal1 = _machine_cpu()
                wall = time.perf_counter() - t0
                marks[event["phase"]] = ((server_cpu() - cpu0) / wall, (busy1 - busy0) / wall,
                                         (steal1 - steal0) / wall, wall)
                if on_end:
                    on_end(event["phase"])
            elif kind == "result":
                server, busy, steal, _wall = marks[event["phase"]]
                event["server_cpu"] = server
                # CPU used by anything but the bench's processes (other jobs, the hypervisor).
                event["other_cpu"] = max(0.0, busy - server - event["client_cpu"]) + steal
                results[event["phase"]] = event
            elif kind in ("sizes", "info"):
                info.update({k: v for k, v in event.items() if k != "event"})
            elif kind == "done":
                done = True
        code = proc.wait()
        if code != 0 or not done:
            errors.seek(0)
            tail = errors.read()[-4000:]
            raise BenchError(f"load generator ({spec.get('mode', 'rpc')}) failed (exit {code}):\n{tail}")
    return results, info


def phase_stats(results: dict[str, dict[str, Any]], name: str, key: str) -> dict[str, Any]:
    """One phase over its rounds: median rate, pooled latency percentiles, mean CPU shares."""
    rounds = sorted((r for r in results.values() if r["name"] == name), key=lambda r: r["round"])
    if not rounds:
        raise BenchError(f"no results for phase {name}")
    latencies = [x for r in rounds for x in r["latencies_ms"]]
    rate = statistics.median(r["per_s"] for r in rounds)
    server = statistics.fmean(r["server_cpu"] for r in rounds)
    return {
        f"{key}_per_s": rate,
        f"{key}_rounds_per_s": [r["per_s"] for r in rounds],
        f"{key}_calls": sum(r["calls"] for r in rounds),
        f"{key}_p50_ms": _pct(latencies, 50),
        f"{key}_p99_ms": _pct(latencies, 99),
        f"{key}_server_cpu": server,
        f"{key}_client_cpu": statistics.fmean(r["client_cpu"] for r in rounds),
        f"{key}_other_cpu": statistics.fmean(r["other_cpu"] for r in rounds),
        f"{key}_server_cpu_us_per_call": server / rate * 1e6 if rate else None,
        f"{key}_failed": sum(r.get("failed", 0) for r in rounds),
        f"{key}_failure_examples": [e for r in rounds for e in r.get("failure_examples", [])][:3],
    }


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process `pid` in MiB, from /proc/PID/status."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text(encoding="ascii").split()]
    return children


@dataclass
class NodeProcess:
    """A `hedui node serve` subprocess: its address and the PIDs of its serving processes."""

    proc: subprocess.Popen[bytes]
    address: str
    pids: list[int]
    startup_s: float

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.pids)


def stop_process(proc: subprocess.Popen[Any], workers: Sequence[int] = ()) -> None:
    """SIGTERM a child server and wait for it; killed (its `workers` too) when it does not stop in 30 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def node_process(config: Path, workers: int, log_path: Path, *, timeout: float = 300.0) -> Iterator[NodeProcess]:
    """`hedui node serve --config CONFIG [--workers N]` on a free port, until every worker logged
    "serving" (store opened and checked, coordinator announced, consent state synced); SIGTERM on exit."""

    port = _free_port()
    cmd = [sys.executable, "-m", "node.cli.main", "node", "serve", "--config", str(config),
           "--listen", f"127.0.0.1:{port}"]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        pids: list[int] = []
        try:
            while True:
                serving = 0
                with contextlib.suppress(OSError):
                    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                        with contextlib.suppress(ValueError):
                            event = json.loads(line)
                            serving += event.get("event") == "serving" and event.get("component") == "node"
                pids = [proc.pid] if workers == 1 else proc_children(proc.pid)
                if serving >= workers and len(pids) == workers:
                    break
                if proc.poll() is not None or time.perf_counter() - started > timeout:
                    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                    raise BenchError(f"node serve --workers {workers} did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.1)
            yield NodeProcess(proc, f"127.0.0.1:{port}", pids, time.perf_counter() - started)
        finally:
            stop_process(proc, pids)


def _profiler_hooks(args: argparse.Namespace, loop: Any, state: dict[str, Any]) -> dict[str, Any]:
    """on_start/on_end that cProfile `loop`'s thread during the phases named by --profile-phase."""
    if not args.profile:
        return {}
    prefix = args.profile_phase + "/"

    def on_start(phase: str) -> None:
        if phase.startswith(prefix) and loop is not None:
            import cProfile

            state["profiler"] = state.get("profiler") or cProfile.Profile()
            loop.run(_on_loop(state["profiler"].enable))

    def on_end(phase: str) -> None:
        if phase.startswith(prefix) and state.get("profiler") is not None and loop is not None:
            loop.run(_on_loop(state["profiler"].disable))

    return {"on_start": on_start, "on_end": on_end}


async def _on_loop(fn: Callable[[], None]) -> None:
    fn()
