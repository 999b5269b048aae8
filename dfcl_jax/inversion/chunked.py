"""Optimisation loops that stay on device: N steps run as jitted chunks of a `lax.scan`.

A `ChunkedLoop` is built once per objective and reused (its compiled chunks are cached), so an
inversion run after every task compiles once; task identity goes in as array arguments. The carry
keeps one layout on the device mesh from chunk to chunk (`carry_sharding`), and the host reads the
metrics once per chunk (progress bar, loss curve, preemption check).

How long a chunk is and whether it is unrolled depends on the backend (`loop_defaults`: "auto" is
unrolled chunks of 10 steps on XLA:CPU, whose while loops run convolutional models ~8x slower,
and rolled chunks of 50 steps on GPU/TPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dfcl_jax import preemption


class ChunkedLoop:
    """Runs `step_fn(carry, step_index, *args) -> (carry, metrics)` for any number of steps."""

    def __init__(self, step_fn: Callable, chunk: int = 10, unroll: bool = True):
        if chunk <= 0:
            raise ValueError(f"chunk={chunk} must be > 0")
        self.step_fn, self.chunk, self.unroll = step_fn, chunk, unroll
        self._compiled: dict[int, Callable] = {}
        self.last_timing = np.zeros((0, 2))  # (steps done, seconds since the run began) per chunk
        self.last_history: dict = {}  # the metrics of the last run

    def compiled(self, length: int, carry_sharding=None) -> Callable:
        """The jitted chunk of `length` steps (carry donated; with `carry_sharding`, the carry
        leaves the chunk laid out as it came in, so every chunk has the same input types)."""
        leaves, tree = jax.tree.flatten(carry_sharding)
        key = (length, tree, tuple(leaves))
        if key not in self._compiled:
            def chunk(carry, start, *args):
                step = lambda c, i: self.step_fn(c, i, *args)
                return jax.lax.scan(step, carry, start + jnp.arange(length),
                                    unroll=length if self.unroll else 1)

            out = None if carry_sharding is None else (carry_sharding, None)
            self._compiled[key] = jax.jit(chunk, donate_argnums=(0,), out_shardings=out)
        return self._compiled[key]

    def compile_counts(self) -> dict[int, int]:
        """Compilations so far per chunk length, over every carry layout (compile-once checks)."""
        counts: dict[int, int] = {}
        for (length, *_), fn in self._compiled.items():
            counts[length] = counts.get(length, 0) + fn._cache_size()
        return counts

    def run(self, carry, steps: int, args=(), start: int = 0, progress: bool = True,
            desc: str = "", carry_sharding=None) -> tuple:
        """Run `steps` steps from step index `start`; returns (carry, {metric: np.ndarray}).

        `carry_sharding` (a sharding or a pytree of them, e.g. the batch along "data"): where the
        carry lives on a mesh (default: the first local device); it is placed there once and
        kept there by every chunk, so a carry made on the host and one a chunk returned have the
        same input types (one compilation). A preemption request (SIGTERM) is honoured between
        chunks (`Preempted` is raised)."""
        if carry_sharding is None:
            carry_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        carry = jax.device_put(carry, carry_sharding)
        size = min(self.chunk, steps)
        lengths = [size] * (steps // size) + ([steps % size] if steps % size else [])
        history: list = []
        timing, t0, done = [], time.perf_counter(), 0
        bar = tqdm(total=steps, desc=desc, disable=not progress or None, leave=False)
        for n in lengths:
            carry, metrics = self.compiled(n, carry_sharding)(carry, jnp.asarray(start, jnp.int32), *args)
            start += n
            history.append(jax.device_get(metrics))  # one host sync per chunk
            done += n
            timing.append((done, time.perf_counter() - t0))
            bar.update(n)
            if done < steps:
                preemption.check()
        bar.close()
        self.last_timing = np.asarray(timing)
        merged = {k: np.concatenate([np.atleast_1d(h[k]) for h in history]) for k in history[0]}
        self.last_history = merged
        return carry, merged
