"""Workdir artefacts: results.json, the accuracy matrix as CSV, summary.md and an accuracy plot."""

from __future__ import annotations

import csv
import json
import os

import numpy as np


def write_results(workdir: str, results: dict) -> None:
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_matrix_csv(os.path.join(workdir, "accuracy_matrix.csv"), results["accuracy_matrix"])
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(summary_markdown(results))
    plot_accuracy(os.path.join(workdir, "accuracy.png"), results)


def write_matrix_csv(path: str, R) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task"] + [f"after_task_{t}" for t in range(len(R[0]) if R else 0)])
        for i, row in enumerate(R):
            w.writerow([i] + ["" if v is None else f"{v:.4f}" for v in row])


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def summary_markdown(results: dict) -> str:
    R = results["accuracy_matrix"]
    T = len(R)
    lines = [f"# {results['method']} on {results['dataset']} ({T} tasks, order "
             f"{results['class_order']['name']} seed {results['class_order']['seed']})", "",
             "| metric | value (%) |", "|---|---|",
             f"| final accuracy A_N | {_pct(results['final_accuracy'])} |",
             f"| average incremental accuracy | {_pct(results['average_incremental_accuracy'])} |",
             f"| forgetting | {_pct(results['forgetting'])} |"]
    if "omega" in results:
        lines.append(f"| Omega | {_pct(results['omega'])} |")
    lines += ["", "Accuracy matrix R[i, t] (%), row = task evaluated, column = after task:", "",
              "| task | " + " | ".join(f"t={t}" for t in range(T)) + " |",
              "|---" * (T + 1) + "|"]
    for i, row in enumerate(R):
        lines.append(f"| {i} | " + " | ".join(_pct(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(path: str, results: dict) -> None:
    """Accuracy on each task after each training step, plus accuracy over all seen classes."""
    from matplotlib.figure import Figure

    R = np.array([[np.nan if v is None else v for v in row] for row in results["accuracy_matrix"]])
    T = R.shape[0]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    steps = np.arange(1, T + 1)
    for i in range(T):
        ax.plot(steps, 100 * R[i], marker="o", lw=1, alpha=0.7, label=f"task {i + 1}")
    ax.plot(steps, 100 * np.asarray(results["seen_accuracy"]), "k-", lw=2.5, marker="s",
            label="all seen classes")
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(steps)
    ax.set_ylim(0, 100)
    ax.set_title(f"{results['method']} — {results['dataset']}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
