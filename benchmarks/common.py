"""Timing helpers: compile time, per-step statistics after warm-up, XLA FLOP counts."""

from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np


def device_description() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()} ({platform.node()})"


def flops_of(jitted, *args) -> float | None:
    """FLOPs per call from XLA's cost analysis of the compiled function (None if unavailable)."""
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        if isinstance(cost, list):
            cost = cost[0]
        return float(cost.get("flops", 0.0)) or None
    except Exception:
        return None


def time_steps(step, state, args, steps: int, warmup: int = 2, carry_state: bool = True):
    """Compile, warm up, then time `steps` calls, blocking on each; returns (stats, last state)."""
    t0 = time.perf_counter()
    out = step(state, *args)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    state = out[0] if carry_state else state
    for _ in range(warmup):
        out = step(state, *args)
        jax.block_until_ready(out)
        state = out[0] if carry_state else state
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = step(state, *args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
        state = out[0] if carry_state else state
    ms = 1000 * np.asarray(times)
    return {"compile_s": round(compile_s, 3), "median_ms": round(float(np.median(ms)), 2),
            "min_ms": round(float(ms.min()), 2), "max_ms": round(float(ms.max()), 2),
            "steps": steps}, state


def emit(results: dict) -> None:
    print(json.dumps(results, indent=1))
