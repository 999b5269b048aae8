"""Paper-style tables from a root of finished runs (e.g. one `experiments.sweep` root).

    python -m experiments.report --root=runs/fmnist_table

Writes ROOT/report.md, ROOT/report.csv, ROOT/report_accuracy.png (accuracy over the seen classes
after each task, mean +- std over seeds, per method) and ROOT/report_synthetic.png (each
replay method's last synthetic grid side by side). Means and stds are over the runs of a
(dataset, task count, method) cell, std with ddof 0 (numpy's default). Omega is recomputed for
every run against the `joint` run of the same root, dataset, task count and class order, so it
does not depend on how the run was launched.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re

import numpy as np

from dfcl_jax.metrics.continual import omega

# Table order: the papers' rows, then anything else alphabetically.
ROW_ORDER = ("joint", "finetune", "lwf", "lwf_mc", "dgr", "deepinversion", "lwf_synthetic", "abd",
             "rdfcil", "pmi", "naive_rehearsal", "lwf_coreset", "e2e", "bic")
LABELS = {"joint": "Upper bound (joint)", "finetune": "Base (fine-tune)", "lwf": "LwF",
          "lwf_mc": "LwF.MC", "dgr": "DGR", "deepinversion": "DeepInversion",
          "lwf_synthetic": "LwF + synthetic", "abd": "ABD", "rdfcil": "R-DFCIL-style",
          "pmi": "PMI", "naive_rehearsal": "Naive Rehearsal", "lwf_coreset": "LwF + coreset",
          "e2e": "E2E", "bic": "BiC"}
METRICS = ("final_accuracy", "omega", "average_incremental_accuracy", "forgetting")


def load_runs(root: str) -> list[dict]:
    """Every workdir under `root` with a results.json (finished or not), with its wall time."""
    walls = {}
    if os.path.exists(os.path.join(root, "sweep.json")):
        with open(os.path.join(root, "sweep.json")) as f:
            walls = {k: v.get("wall_s") for k, v in json.load(f).get("cells", {}).items()}
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
        workdir = os.path.dirname(path)
        with open(path) as f:
            r = json.load(f)
        r["workdir"] = workdir
        r["wall_s"] = walls.get(os.path.basename(workdir))
        r["finished"] = r["tasks_done"] == r["num_tasks"]
        runs.append(r)
    return runs


def order_key(r: dict) -> tuple:
    co = r["class_order"]
    return r["dataset"], r["num_tasks"], co["name"], co["seed"]


def attach_omega(runs: list[dict]) -> None:
    """Omega of every finished run against the finished `joint` run of the same order."""
    joint = {order_key(r): r for r in runs if r["method"] == "joint" and r["finished"]}
    for r in runs:
        upper = joint.get(order_key(r))
        r["omega"] = (omega(r["seen_accuracy"], upper["seen_accuracy"])
                      if upper is not None and r["finished"] and r["method"] != "joint" else None)


def mean_std(values) -> tuple[float, float] | None:
    v = np.asarray([x for x in values if x is not None], float)
    return (float(v.mean()), float(v.std())) if len(v) else None


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (dataset, task count, method) over its finished runs."""
    attach_omega(runs)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["finished"]:
            groups.setdefault((r["dataset"], r["num_tasks"], r["method"]), []).append(r)

    def rank(key):
        m = key[2]
        return key[0], key[1], ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER), m

    rows = []
    for key in sorted(groups, key=rank):
        rs = sorted(groups[key], key=lambda r: r["class_order"]["seed"])
        row = {"dataset": key[0], "num_tasks": key[1], "method": key[2],
               "seeds": [r["class_order"]["seed"] for r in rs],
               "final_accuracy_per_seed": [r["final_accuracy"] for r in rs],
               "wall_s_mean": (mean_std(r["wall_s"] for r in rs) or (None,))[0]}
        for m in METRICS:
            row[m] = mean_std(r.get(m) for r in rs)
        rows.append(row)
    return rows


def _pm(ms) -> str:
    return "-" if ms is None else f"{100 * ms[0]:.2f} +- {100 * ms[1]:.2f}"


def data_free_label(method: str) -> str:
    from dfcl_jax.methods import METHODS

    cls = METHODS.get(method)
    if method == "joint":
        return "oracle"
    if cls is None:
        return "?"
    return "yes" if cls.data_free else "no (coreset)"


def markdown(rows: list[dict], runs: list[dict]) -> str:
    lines = ["# Results", "",
             "A_N = accuracy over all classes after the last task; Omega against the `joint` run "
             "of the same class order; mean +- std (ddof 0) over the class-order seeds; "
             "all numbers in %.", ""]
    tables = sorted({(r["dataset"], r["num_tasks"]) for r in rows})
    for dataset, T in tables:
        lines += [f"## {dataset}, {T} tasks", "",
                  "| method | data-free | seeds | A_N | Omega | avg. incremental | forgetting "
                  "| A_N per seed | wall per run (min) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            if (row["dataset"], row["num_tasks"]) != (dataset, T):
                continue
            wall = "-" if row["wall_s_mean"] is None else f"{row['wall_s_mean'] / 60:.1f}"
            lines.append(
                f"| {LABELS.get(row['method'], row['method'])} | "
                f"{data_free_label(row['method'])} | "
                f"{','.join(map(str, row['seeds']))} | {_pm(row['final_accuracy'])} | "
                f"{_pm(row['omega'])} | {_pm(row['average_incremental_accuracy'])} | "
                f"{_pm(row['forgetting'])} | "
                f"{', '.join(f'{100 * a:.2f}' for a in row['final_accuracy_per_seed'])} | "
                f"{wall} |")
        lines.append("")
    unfinished = [r for r in runs if not r["finished"]]
    if unfinished:
        lines += ["Unfinished runs (not in the tables): " + ", ".join(
            f"{os.path.basename(r['workdir'])} ({r['tasks_done']}/{r['num_tasks']} tasks)"
            for r in unfinished), ""]
    return "\n".join(lines)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "num_tasks", "method", "seeds"]
                   + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
                   + ["final_accuracy_per_seed", "wall_s_mean"])
        for row in rows:
            vals = []
            for m in METRICS:
                vals += ["", ""] if row[m] is None else [f"{100 * row[m][0]:.4f}",
                                                         f"{100 * row[m][1]:.4f}"]
            w.writerow([row["dataset"], row["num_tasks"], row["method"],
                        " ".join(map(str, row["seeds"]))] + vals
                       + [" ".join(f"{100 * a:.4f}" for a in row["final_accuracy_per_seed"]),
                          "" if row["wall_s_mean"] is None else f"{row['wall_s_mean']:.1f}"])


def plot_accuracy_curves(path: str, runs: list[dict]) -> None:
    """Accuracy over the seen classes after each task, mean +- std over seeds, per method."""
    from matplotlib.figure import Figure

    done = [r for r in runs if r["finished"]]
    tables = sorted({(r["dataset"], r["num_tasks"]) for r in done})
    if not tables:
        return
    fig = Figure(figsize=(6.5 * len(tables), 4.5))
    axes = fig.subplots(1, len(tables), squeeze=False)
    for ax, (dataset, T) in zip(axes[0], tables):
        methods = sorted({r["method"] for r in done if (r["dataset"], r["num_tasks"]) ==
                          (dataset, T)},
                         key=lambda m: (ROW_ORDER.index(m) if m in ROW_ORDER else 99, m))
        steps = np.arange(1, T + 1)
        for m in methods:
            acc = 100 * np.array([r["seen_accuracy"] for r in done if r["method"] == m and
                                  (r["dataset"], r["num_tasks"]) == (dataset, T)])
            mu, sd = acc.mean(0), acc.std(0)
            ax.plot(steps, mu, marker="o", lw=1.8, label=LABELS.get(m, m),
                    ls="--" if m == "joint" else "-")
            ax.fill_between(steps, mu - sd, mu + sd, alpha=0.15)
        ax.set_xticks(steps)
        ax.set_ylim(0, 100)
        ax.set_xlabel("after training task")
        ax.set_ylabel("accuracy over seen classes (%)")
        ax.set_title(f"{dataset}, {T} tasks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def last_synthetic_grid(workdir: str) -> str | None:
    grids = glob.glob(os.path.join(workdir, "synthetic_after_task*.png"))
    if not grids:
        return None
    return max(grids, key=lambda p: int(re.search(r"task(\d+)\.png$", p).group(1)))


def plot_synthetic_grids(path: str, runs: list[dict]) -> bool:
    """The last replay grid of each replay method (lowest seed) side by side."""
    picks = {}
    for r in sorted(runs, key=lambda r: r["class_order"]["seed"]):
        grid = last_synthetic_grid(r["workdir"])
        if grid and r["method"] not in picks:
            picks[r["method"]] = grid
    if not picks:
        return False
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    methods = sorted(picks, key=lambda m: (ROW_ORDER.index(m) if m in ROW_ORDER else 99, m))
    fig = Figure(figsize=(5 * len(methods), 5))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, m in zip(axes[0], methods):
        ax.imshow(mpimg.imread(picks[m]))
        ax.set_title(f"{LABELS.get(m, m)} ({os.path.basename(picks[m])[:-4]})", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_report(root: str) -> list[dict]:
    """report.md, report.csv and the two plots for `root`; returns the table rows."""
    runs = load_runs(root)
    rows = aggregate(runs)
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write(markdown(rows, runs))
    write_csv(os.path.join(root, "report.csv"), rows)
    plot_accuracy_curves(os.path.join(root, "report_accuracy.png"), runs)
    plot_synthetic_grids(os.path.join(root, "report_synthetic.png"), runs)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    a = p.parse_args(argv)
    if not os.path.isdir(a.root):
        raise SystemExit(f"error: --root={a.root!r} is not a directory")
    rows = write_report(a.root)
    if not rows:
        print(f"no finished runs under {a.root}")
        return
    with open(os.path.join(a.root, "report.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
