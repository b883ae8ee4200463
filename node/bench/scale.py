"""The scale curve: the routed and batch parts at several federation sizes, and the slope per added province."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from node.bench.batch import bench_batch
from node.bench.config import Sizes
from node.bench.national import national
from node.bench.routed import bench_routed

DEFAULT_CURVE: Final[tuple[int, ...]] = (3, 11, 31)
QUICK_CURVE: Final[tuple[int, ...]] = ()  # --quick (the tests' run) has no curve unless asked
#: Households and rounds of a curve point other than the main run's size (the main run's figures are reused).
POINT_BATCH_HOUSEHOLDS: Final[int] = 1024
POINT_ROUTED_HOUSEHOLDS: Final[int] = 128
#: CPU per household "grows with the number of provinces" when the fitted line rises more than this share
#: from the smallest to the largest size (the machine is shared: smaller moves are noise).
GROWTH_TOLERANCE: Final[float] = 0.10
#: (JSON name, the key of a part's output it is read from) of every figure of the curve.
FIGURES: Final[tuple[tuple[str, str], ...]] = (
    ("routed_p50_ms", "routed_p50_ms"),
    ("routed_server_cpu_us_per_call", "routed_c{c}_server_cpu_us_per_call"),
    ("batch_households_per_s", "batch_households_per_s"),
    ("batch_server_cpu_us_per_household", "batch_server_cpu_us_per_household"),
    ("batch_client_cpu_us_per_household", "batch_client_cpu_us_per_household"),
    ("batch_holders_per_household", "batch_holders_per_household"),
)


def parse_curve(value: str) -> tuple[int, ...]:
    """`--scale-provinces`: comma-separated federation sizes (3 to 31), or "none"."""
    if value.strip().lower() in ("", "none", "off"):
        return ()
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"--scale-provinces takes sizes like 3,11,31 or none, not {value!r}") from None
    if any(not 3 <= n <= 31 for n in sizes):
        raise ValueError("--scale-provinces sizes must be 3 to 31")
    return sizes


def point_sizes(sizes: Sizes, provinces: int) -> Sizes:
    """The sizes of one curve point other than the main run: fewer households, one round and one pass."""
    return dataclasses.replace(sizes, provinces=provinces, rounds=1, batch_rounds=1,
                               batch_households=min(sizes.batch_households, POINT_BATCH_HOUSEHOLDS),
                               routed_households=min(sizes.routed_households, POINT_ROUTED_HOUSEHOLDS))


def run_point(work: Path, sizes: Sizes, *, routed: bool, batch: bool,
              hooks: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The routed and/or batch part in a federation of `sizes.provinces` (its own work directory)."""
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    with national(work, sizes, routed=routed, batch=batch) as nat:
        out.update(nat.stats)
        if routed:
            out.update(bench_routed(nat, sizes, hooks(nat)))
        if batch:
            out.update(bench_batch(nat, sizes, hooks(nat)))
    out["point_s"] = time.perf_counter() - t0
    return out


def slope(xs: list[float], ys: list[float | None]) -> float | None:
    """Least-squares slope of ys over xs (None when fewer than two points have a value)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def curve(points: dict[int, dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The curve's JSON keys: per figure its values by size (`scale_<figure>`), the slope per added
    province (`scale_slope_per_province`), and whether CPU per batch household grows with the size."""
    provinces = sorted(points)
    out: dict[str, Any] = {"scale_provinces": provinces}
    slopes: dict[str, float | None] = {}
    for name, key in FIGURES:
        values = [points[n].get(key.format(c=concurrency)) for n in provinces]
        out[f"scale_{name}"] = values
        slopes[name] = slope([float(n) for n in provinces], values)
    cost = [None if points[n].get("batch_server_cpu_us_per_household") is None
            else points[n]["batch_server_cpu_us_per_household"] + points[n]["batch_client_cpu_us_per_household"]
            for n in provinces]
    out["scale_batch_cpu_us_per_household"] = cost
    slopes["batch_cpu_us_per_household"] = slope([float(n) for n in provinces], cost)
    out["scale_slope_per_province"] = slopes
    known = [c for c in cost if c is not None]
    s = slopes["batch_cpu_us_per_household"]
    if s is None or not known:
        out["scale_batch_cpu_growth"] = out["scale_batch_cpu_grows"] = None
    else:
        growth = s * (provinces[-1] - provinces[0]) / (sum(known) / len(known))
        out["scale_batch_cpu_growth"] = growth  # share the fitted line rises from the smallest to the largest size
        out["scale_batch_cpu_grows"] = growth > GROWTH_TOLERANCE
    out["scale_points_s"] = {str(n): points[n].get("point_s") for n in provinces}
    return out



def curve_table(out: dict[str, Any]) -> list[str]:
    """The curve as table lines (none when the run had no curve)."""
    provinces = out.get("scale_provinces")
    if not provinces:
        return []

    def cell(value: float | None, fmt: str) -> str:
        return f"{'-':>12}" if value is None else f"{value:>12{fmt}}"

    rows = (("routed p50 ms", "routed_p50_ms", ".2f"), ("routed server us/call", "routed_server_cpu_us_per_call", ".0f"),
            ("batch households/s", "batch_households_per_s", ",.0f"),
            ("batch server us/hh", "batch_server_cpu_us_per_household", ".0f"),
            ("batch client us/hh", "batch_client_cpu_us_per_household", ".0f"),
            ("batch CPU us/hh", "batch_cpu_us_per_household", ".0f"),
            ("holders per household", "batch_holders_per_household", ".2f"))
    slopes = out.get("scale_slope_per_province", {})
    lines = [f"scale curve (routed and batch at {', '.join(map(str, provinces))} provinces; sizes other than the main "
             f"run's: at most {POINT_BATCH_HOUSEHOLDS:,} batch households, one pass and one routed round):",
             f"{'figure':<24}" + "".join(f"{str(n) + ' prov':>12}" for n in provinces) + f"{'per +1 prov':>14}"]
    for label, key, fmt in rows:
        values = out.get(f"scale_{key}") or [None] * len(provinces)
        s = slopes.get(key)
        lines.append(f"{label:<24}" + "".join(cell(v, fmt) for v in values)
                     + (f"{'-':>14}" if s is None else f"{s:>+14.3g}"))
    grows = out.get("scale_batch_cpu_grows")
    if grows is not None:
        lines.append(f"  CPU per batch household {'GROWS' if grows else 'does not grow'} with the number of provinces "
                     f"(fitted line {out['scale_batch_cpu_growth'] * 100:+.0f}% from {provinces[0]} to {provinces[-1]}; "
                     f"tolerance {GROWTH_TOLERANCE * 100:.0f}%)")
    return lines
