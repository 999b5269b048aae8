"""Named class orders of the class-incremental protocols (protocols.md section 2)."""

from __future__ import annotations

import random

import numpy as np

CLASS_ORDERS = ("abd", "icarl1993", "natural")


def class_order(name: str, num_classes: int, seed: int = 0) -> list[int]:
    """The class order `name` over `num_classes` classes; `seed` is the trial r of the "abd" order."""
    if name == "abd":
        # ABD / R-DFCIL / PMI: Python's `random.seed(r); random.shuffle(range(C))`.
        order = list(range(num_classes))
        random.seed(seed)
        random.shuffle(order)
        return order
    if name == "icarl1993":
        # iCaRL / BiC / PyCIL: NumPy's legacy global generator seeded with 1993.
        return np.random.RandomState(1993).permutation(num_classes).tolist()
    if name == "natural":
        return list(range(num_classes))
    raise ValueError(f"unknown class order {name!r}; allowed: {', '.join(CLASS_ORDERS)}")


def abd_task_seed(trial: int, task: int) -> int:
    """The per-task reseed of the ABD protocol: `r * 100 + t`."""
    return trial * 100 + task
