"""Timing helpers: timed compilation, interleaved per-step timing, XLA FLOP and memory counts."""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def device_description() -> str:
    """Platform, device kind and count, host name."""
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()} ({platform.node()})"


def compile_timed(jitted, *args, **kwargs):
    """(compiled executable, seconds to lower and compile) for `jitted` at these arguments."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def flops_of_compiled(compiled) -> float | None:
    """FLOPs per call from XLA's cost analysis of a compiled executable (None if unavailable)."""
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, list):
            cost = cost[0]
        return float(cost.get("flops", 0.0)) or None
    except Exception:
        return None


def flops_of(jitted, *args) -> float | None:
    """FLOPs per call of `jitted` at these arguments (compiles; None if unavailable)."""
    try:
        return flops_of_compiled(jitted.lower(*args).compile())
    except Exception:
        return None


def xla_memory_mb(compiled) -> float | None:
    """Arguments + outputs + temporaries - donated aliases of one call (XLA memory analysis), MB."""
    try:
        m = compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
        return round(total / 2**20, 1)
    except Exception:
        return None


def device_peak_mb() -> float | None:
    """Peak bytes in use on device 0 where the backend reports it (GPU/TPU), MB."""
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        return round(stats["peak_bytes_in_use"] / 2**20, 1)
    return None


def max_rss_mb() -> float:
    """This process's peak resident set size so far, MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclasses.dataclass
class Case:
    """One benchmark, compiled and ready: `call()` runs one timed unit of `steps_per_call` steps."""

    name: str
    call: Callable[[], Any]
    images_per_step: int
    steps_per_call: int = 1
    compile_s: float = 0.0
    flops_per_step: float | None = None
    xla_mb: float | None = None
    check: float | None = None  # a number that must not depend on the device count
    compiled: Any = None  # the main compiled executable (HLO dumps)
    info: dict = dataclasses.field(default_factory=dict)


def time_cases(cases: list[Case], calls: int, warmup: int = 1) -> dict[str, list[float]]:
    """Warm up, then time `calls` calls of every case, interleaved (case A, B, A, B, ...), blocking
    on each; returns ms per step of every call per case."""
    for _ in range(warmup):
        for c in cases:
            jax.block_until_ready(c.call())
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for _ in range(calls):
        for c in cases:
            t = time.perf_counter()
            jax.block_until_ready(c.call())
            times[c.name].append(1000 * (time.perf_counter() - t) / c.steps_per_call)
    return times


def summarize(case: Case, ms: list[float]) -> dict:
    """The result row of a timed case."""
    ms_arr = np.asarray(ms)
    med = float(np.median(ms_arr))
    row = {"benchmark": case.name, "median_ms": round(med, 2), "min_ms": round(float(ms_arr.min()), 2),
           "max_ms": round(float(ms_arr.max()), 2), "steps": len(ms) * case.steps_per_call,
           "steps_per_call": case.steps_per_call, "compile_s": round(case.compile_s, 2),
           "images_per_step": case.images_per_step,
           "images_per_s": round(case.images_per_step / (med / 1000), 1)}
    if case.flops_per_step:
        row["gflop_per_step"] = round(case.flops_per_step / 1e9, 3)
        row["gflop_per_s"] = round(case.flops_per_step / 1e6 / med, 1)
    device_mb = device_peak_mb()
    row["memory_mb"], row["memory_source"] = ((device_mb, "device peak_bytes_in_use")
                                              if device_mb is not None else
                                              (case.xla_mb, "XLA memory_analysis"))
    row["max_rss_mb"] = max_rss_mb()
    if case.check is not None:
        row["check"] = case.check
    row.update(case.info)
    return row


def emit(results: dict) -> None:
    print(json.dumps(results, indent=1))
