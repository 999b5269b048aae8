"""Deterministic batching per (seed, task, epoch), per-host slicing and device prefetch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np


def epoch_permutation(indices: np.ndarray, seed: int, task: int, epoch: int) -> np.ndarray:
    """The shuffled example order of one epoch; identical on every host and on every rerun."""
    rng = np.random.default_rng([seed, task, epoch])
    return indices[rng.permutation(len(indices))]


def train_batches(indices: np.ndarray, batch_size: int, seed: int, task: int, epoch: int
                  ) -> list[np.ndarray]:
    """Global batches of example indices for one epoch (remainder dropped: shapes never change)."""
    order = epoch_permutation(indices, seed, task, epoch)
    n = len(order) // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n)]


def host_slice(global_batch: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch (multi-host data loading)."""
    count, index = jax.process_count(), jax.process_index()
    per_host = len(global_batch) // count
    return global_batch[index * per_host : (index + 1) * per_host]


def eval_batches(indices: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Fixed-size batches covering `indices` in order; the last one is padded, with a validity mask."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        valid = np.ones(batch_size, bool)
        if len(chunk) < batch_size:
            valid[len(chunk) :] = False
            chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])
        yield chunk, valid


def prefetch(iterator, size: int = 2):
    """Run `iterator` (which gathers and transfers batches) in a thread, `size` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()

    def worker():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(sentinel)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is sentinel:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
