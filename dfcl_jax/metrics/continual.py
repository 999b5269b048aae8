"""Metrics over the accuracy matrix R[i, t] (accuracy on task i after training task t, i <= t)."""

from __future__ import annotations

import numpy as np


def _matrix(R) -> np.ndarray:
    """List-of-rows with None above... -> float array with NaN where i > t."""
    return np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)


def final_accuracy(R) -> float:
    """A_N: mean over tasks i of R[i, T] (protocols.md section 3)."""
    R = _matrix(R)
    return float(np.mean(R[:, -1]))


def seen_accuracies(R) -> list[float]:
    """A_t for every t: mean over i <= t of R[i, t] (equal task sizes)."""
    R = _matrix(R)
    return [float(np.mean(R[: t + 1, t])) for t in range(R.shape[1])]


def average_incremental_accuracy(R) -> float:
    """Mean over t of (mean over i <= t of R[i, t])."""
    return float(np.mean(seen_accuracies(R)))


def forgetting(R) -> float | None:
    """Mean over i < T of max_{t < T} R[i, t] - R[i, T]; None with a single task."""
    R = _matrix(R)
    T = R.shape[1]
    if T < 2:
        return None
    return float(np.mean([np.nanmax(R[i, :T - 1]) - R[i, T - 1] for i in range(T - 1)]))


def omega(seen_acc_model, seen_acc_upper) -> float:
    """Omega (ABD Eq. 17): (1/T) sum_t A_t(model) / A_t(upper bound)."""
    a, b = np.asarray(seen_acc_model, float), np.asarray(seen_acc_upper, float)
    if a.shape != b.shape:
        raise ValueError(f"Omega needs the same number of tasks: {a.shape[0]} vs {b.shape[0]}")
    return float(np.mean(a / b))


def summarize(R, seen_acc=None, upper_seen_acc=None) -> dict:
    """The headline numbers; `seen_acc` = A_t from counts (defaults to the equal-size formula)."""
    seen_acc = seen_accuracies(R) if seen_acc is None else list(seen_acc)
    out = {
        "final_accuracy": final_accuracy(R),
        "average_incremental_accuracy": float(np.mean(seen_acc)),
        "forgetting": forgetting(R),
        "seen_accuracy": seen_acc,
    }
    if upper_seen_acc is not None:
        out["omega"] = omega(seen_acc, upper_seen_acc)
    return out
