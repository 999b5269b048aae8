"""Class-incremental task splits: labels remapped through a class order, contiguous per task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaskSplits:
    """Task t owns remapped labels `[t * C / T, (t + 1) * C / T)` (protocols.md section 1)."""

    order: tuple[int, ...]
    num_tasks: int

    def __post_init__(self):
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError("a class order must be a permutation of 0..C-1")
        if self.num_tasks < 1 or len(self.order) % self.num_tasks:
            raise ValueError(f"num_tasks={self.num_tasks} does not divide {len(self.order)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.order)

    @property
    def classes_per_task(self) -> int:
        return self.num_classes // self.num_tasks

    def n_old(self, task: int) -> int:
        """Classes seen before `task`."""
        return task * self.classes_per_task

    def n_seen(self, task: int) -> int:
        """Classes seen up to and including `task`."""
        return (task + 1) * self.classes_per_task

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Original class ids -> positions in the class order."""
        position = np.empty(self.num_classes, np.int32)
        position[np.asarray(self.order)] = np.arange(self.num_classes, dtype=np.int32)
        return position[np.asarray(labels)]

    def task_of(self, remapped_labels: np.ndarray) -> np.ndarray:
        return np.asarray(remapped_labels) // self.classes_per_task

    def indices(self, remapped_labels: np.ndarray, tasks) -> np.ndarray:
        """Indices of the examples whose remapped label belongs to one of `tasks` (sorted)."""
        return np.flatnonzero(np.isin(self.task_of(remapped_labels), np.atleast_1d(tasks)))
