"""Optimisation loops that stay on device: N steps run as jitted chunks of a `lax.scan`.

A `ChunkedLoop` is built once per objective and reused (its compiled chunks are cached), so an
inversion run after every task compiles once; task identity goes in as array arguments.

XLA:CPU runs rolled loops (while loops) about 8x slower than unrolled ones for convolutional
models (ResNet-32 DeepInversion step: 3.2 s rolled, 0.38 s unrolled on 2 cores), so chunks are
unrolled by default and kept short; on GPU/TPU use `unroll=False` with long chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm


class ChunkedLoop:
    """Runs `step_fn(carry, step_index, *args) -> (carry, metrics)` for any number of steps."""

    def __init__(self, step_fn: Callable, chunk: int = 10, unroll: bool = True):
        if chunk <= 0:
            raise ValueError(f"chunk={chunk} must be > 0")
        self.step_fn, self.chunk, self.unroll = step_fn, chunk, unroll
        self._compiled: dict[int, Callable] = {}
        self.last_timing = np.zeros((0, 2))  # (steps done, seconds since the run began) per chunk
        self.last_history: dict = {}  # the metrics of the last run

    def compiled(self, length: int) -> Callable:
        """The jitted chunk of `length` steps (carry donated)."""
        if length not in self._compiled:
            def chunk(carry, start, *args):
                step = lambda c, i: self.step_fn(c, i, *args)
                return jax.lax.scan(step, carry, start + jnp.arange(length),
                                    unroll=length if self.unroll else 1)

            self._compiled[length] = jax.jit(chunk, donate_argnums=(0,))
        return self._compiled[length]

    def run(self, carry, steps: int, args=(), start: int = 0, progress: bool = True,
            desc: str = "") -> tuple:
        """Run `steps` steps from step index `start`; returns (carry, {metric: np.ndarray})."""
        # Place the carry like the (replicated) arguments, so that a carry made on the host and one
        # returned by a previous run have the same input types: one compilation, not two.
        ref = next((x for x in jax.tree.leaves(args) if isinstance(x, jax.Array)), None)
        if ref is not None and ref.sharding.is_fully_replicated:
            carry = jax.device_put(carry, ref.sharding)
        size = min(self.chunk, steps)
        lengths = [size] * (steps // size) + ([steps % size] if steps % size else [])
        history: list = []
        timing, t0, done = [], time.perf_counter(), 0
        bar = tqdm(total=steps, desc=desc, disable=not progress or None, leave=False)
        for n in lengths:
            carry, metrics = self.compiled(n)(carry, jnp.asarray(start, jnp.int32), *args)
            start += n
            history.append(jax.device_get(metrics))  # one host sync per chunk
            done += n
            timing.append((done, time.perf_counter() - t0))
            bar.update(n)
        bar.close()
        self.last_timing = np.asarray(timing)
        merged = {k: np.concatenate([np.atleast_1d(h[k]) for h in history]) for k in history[0]}
        self.last_history = merged
        return carry, merged
