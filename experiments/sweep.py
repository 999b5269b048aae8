"""Run a grid of methods x task counts x class-order seeds into one root, resumably.

    python -m experiments.sweep --config=experiments/fashion_mnist.py \
        --methods=joint,finetune,abd,pmi --seeds=0,1,2 --root=runs/fmnist_table
    python -m experiments.sweep --config='experiments/cifar100_{method}.py' --methods=abd,lwf \
        --tasks=5,10 --seeds=0,1,2 --root=runs/cifar100 --set=data.data_dir=/data/tfds

Each cell is `python -m experiments.run` in its own process, in `ROOT/<method>_T<tasks>_s<seed>`.
Finished cells (results.json with every task) are skipped; interrupted ones resume from their
last checkpoint. `joint` cells run first, so the other cells of the same task count and seed get
`upper_bound_workdir` (Omega). A cell starts from the trained first-task model of an earlier cell
of the same seed when `first_task_signature` agrees (same data, model, train schedule and
first-task loss), so e.g. finetune, lwf, abd and pmi share task 1. The choice is recorded in the
cell's config, so a resumed sweep makes the same one. `ROOT/sweep.json` records each cell's status
and wall time; at the end `experiments.report` writes the tables. Compiled XLA programs are
cached in `ROOT/.jax_cache` (`JAX_COMPILATION_CACHE_DIR`), so later cells skip most compiling.
`--jobs=N` runs N cells at once: a cell starts when its seed's `joint` cell has ended and its
first-task donor has saved its model, so parallel and sequential sweeps produce the same links.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Cell:
    method: str
    tasks: int
    seed: int
    config_file: str
    config_arg: str
    workdir: str

    @property
    def name(self) -> str:
        return os.path.basename(self.workdir)


def parse_config_spec(spec: str) -> tuple[str, str]:
    """`path.py[:args]` -> (path, args)."""
    path, _, arg = spec.partition(":")
    return path, arg


def load_config(path: str, arg: str):
    """The ConfigDict of `get_config(arg)` in the config file `path`."""
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    if spec is None or not os.path.exists(path):
        raise SystemExit(f"error: --config file {path!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config, overrides: list[str]) -> None:
    """`--set=a.b=value` on the in-process copy of a cell's config (for its signature)."""
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise SystemExit(f"error: --set={item!r} must be FIELD=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        target = config
        try:
            for p in parents:
                target = target[p]
            if isinstance(target[leaf], tuple) and isinstance(value, (list, tuple, int, float)):
                value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            target[leaf] = value
        except (KeyError, AttributeError, TypeError) as e:
            raise SystemExit(f"error: --set={item!r}: {e}") from None


def build_grid(config: str, methods: list[str], tasks: list[int | None], seeds: list[int],
               root: str) -> list[Cell]:
    """Cells in run order: per task count, `joint` first, then the methods as given; each
    method over all seeds before the next (an interrupted sweep leaves whole table rows)."""
    path, base_arg = parse_config_spec(config)
    order = sorted(methods, key=lambda m: m != "joint")
    cells = []
    for t in tasks:
        for m in order:
            for s in seeds:
                if "{method}" in path:
                    file, args = path.format(method=m), []
                else:
                    file, args = path, [f"method={m}"]
                args += [f"seed={s}"] + ([f"tasks={t}"] if t is not None else [])
                arg = ",".join(filter(None, [base_arg] + args))
                n_tasks = load_config(file, arg).data.num_tasks  # bad arguments fail here
                cells.append(Cell(m, n_tasks, s, file, arg,
                                  os.path.join(root, f"{m}_T{n_tasks}_s{s}")))
    return cells


def is_finished(workdir: str) -> bool:
    p = os.path.join(workdir, "results.json")
    if not os.path.exists(p):
        return False
    with open(p) as f:
        r = json.load(f)
    return r["tasks_done"] == r["num_tasks"]


def signature(cell: Cell, overrides: list[str]) -> dict:
    """What must agree for two cells to share a first-task model (the loop's own rule)."""
    from dfcl_jax.methods import get_method
    from dfcl_jax.train.loop import first_task_signature

    c = load_config(cell.config_file, cell.config_arg)
    apply_overrides(c, overrides)
    return first_task_signature(c, get_method(c.method))


def donors_of(cells: list[Cell], overrides: list[str]) -> dict:
    """Each cell's first-task donor: the first earlier cell of the same seed whose first-task
    signature agrees (a fixed choice, so parallel and sequential sweeps link the same way)."""
    sigs = {c.name: signature(c, overrides) for c in cells}
    donors = {}
    for i, cell in enumerate(cells):
        donors[cell.name] = next((d for d in cells[:i] if d.seed == cell.seed
                                  and sigs[d.name] == sigs[cell.name]), None)
    return donors


def joint_of(cell: Cell, cells: list[Cell]) -> Cell | None:
    """The upper-bound (`joint`) cell of the same task count and seed, if in the grid."""
    return next((c for c in cells if c.method == "joint" and c.tasks == cell.tasks
                 and c.seed == cell.seed and c is not cell), None)


def has_first_task_model(cell: Cell) -> bool:
    return os.path.exists(os.path.join(cell.workdir, "first_task_model.json"))


def links_of(cell: Cell, cells: list[Cell], donor: Cell | None) -> dict:
    """`first_task_from` and `upper_bound_workdir` for `cell` (kept from its config if resumed)."""
    saved = os.path.join(cell.workdir, "config.json")
    if os.path.exists(saved):
        with open(saved) as f:
            c = json.load(f)
        return {"first_task_from": c.get("first_task_from", ""),
                "upper_bound_workdir": c.get("upper_bound_workdir", "")}
    out = {"first_task_from": "", "upper_bound_workdir": ""}
    joint = joint_of(cell, cells)
    if cell.method != "joint" and joint is not None and is_finished(joint.workdir):
        out["upper_bound_workdir"] = joint.workdir
    if donor is not None and has_first_task_model(donor):
        out["first_task_from"] = donor.workdir
    return out


def is_ready(cell: Cell, cells: list[Cell], donor: Cell | None, settled: set) -> bool:
    """A cell starts once its joint cell has ended (for Omega) and its donor has saved its
    first-task model or ended (a failed donor leaves the cell to train task 1 itself)."""
    joint = joint_of(cell, cells)
    if cell.method != "joint" and joint is not None and joint.name not in settled:
        return False
    return donor is None or donor.name in settled or has_first_task_model(donor)


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def run_cell(cell: Cell, links: dict, overrides: list[str], log_path: str,
             single_thread: bool = False) -> int:
    """One cell as its own `experiments.run` process; XLA's compiled programs are cached on disk
    under the sweep root, so cells with the same shapes (e.g. other seeds) skip compilation.
    `single_thread`: one CPU thread for XLA (unless XLA_FLAGS is set), for parallel cells."""
    env = dict(os.environ)
    if single_thread:
        env.setdefault("XLA_FLAGS", SINGLE_THREAD_XLA)
    env.setdefault("JAX_COMPILATION_CACHE_DIR",
                   os.path.join(os.path.dirname(cell.workdir), ".jax_cache"))
    cmd = [sys.executable, "-m", "experiments.run",
           f"--config={cell.config_file}:{cell.config_arg}", f"--workdir={cell.workdir}",
           "--config.runtime.progress=False"]
    cmd += [f"--config.{k}={v}" for k, v in links.items() if v]
    cmd += [f"--config.{o}" for o in overrides]
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        child = subprocess.Popen(cmd, cwd=ROOT_DIR, stdout=log, stderr=subprocess.STDOUT, env=env)
        CHILDREN.add(child)
        try:
            return child.wait()
        finally:
            CHILDREN.discard(child)


CHILDREN: set[subprocess.Popen] = set()  # the running cells' processes


class SweepTerminated(Exception):
    """The sweep got SIGTERM: its cells were asked to save and stop."""


def stop_children(signum=None, frame=None) -> None:
    """SIGTERM handler: pass SIGTERM to every running cell (each saves a checkpoint and exits),
    wait for them, then stop the sweep."""
    for child in list(CHILDREN):
        child.send_signal(signal.SIGTERM)
    for child in list(CHILDREN):
        child.wait()
    raise SweepTerminated


def sweep(config: str, methods: list[str], tasks: list[int | None], seeds: list[int], root: str,
          overrides: list[str] = (), report: bool = True, jobs: int = 1) -> dict:
    """Run every unfinished cell, `jobs` at a time; returns the state written to ROOT/sweep.json.

    With jobs > 1 each cell's XLA runs single-threaded on the CPU (unless XLA_FLAGS is set):
    on 2 cores two such cells finish in 0.78 of the time of running them one after another.
    """
    if jobs < 1:
        raise SystemExit(f"error: --jobs={jobs} must be >= 1")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    overrides = list(overrides)
    cells = build_grid(config, methods, tasks, seeds, root)
    donors = donors_of(cells, overrides)
    state_path = os.path.join(root, "sweep.json")
    state = {"config": config, "methods": methods, "tasks": tasks, "seeds": seeds,
             "overrides": overrides, "jobs": jobs, "cells": {}}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state["cells"] = json.load(f).get("cells", {})

    def save():
        with open(state_path, "w") as f:
            json.dump(state, f, indent=1)

    index = {c.name: i for i, c in enumerate(cells)}
    settled, pending = set(), []
    for cell in cells:
        entry = state["cells"].setdefault(cell.name, {"method": cell.method, "tasks": cell.tasks,
                                                      "seed": cell.seed, "wall_s": 0.0})
        if is_finished(cell.workdir):
            entry["status"] = "done"
            settled.add(cell.name)
            print(f"[{index[cell.name] + 1}/{len(cells)}] {cell.name}: finished, skipped",
                  flush=True)
        else:
            pending.append(cell)
    running: dict = {}  # future -> (cell, start time)
    pool = ThreadPoolExecutor(max_workers=jobs)
    previous = signal.signal(signal.SIGTERM, stop_children)
    try:
        while pending or running:
            for cell in [c for c in pending
                         if is_ready(c, cells, donors[c.name], settled)][:jobs - len(running)]:
                pending.remove(cell)
                links = links_of(cell, cells, donors[cell.name])
                state["cells"][cell.name].update(links)
                shared = f" (task 1 from {os.path.basename(links['first_task_from'])})" \
                    if links["first_task_from"] else ""
                print(f"[{index[cell.name] + 1}/{len(cells)}] {cell.name}: running{shared}",
                      flush=True)
                os.makedirs(cell.workdir, exist_ok=True)
                future = pool.submit(run_cell, cell, links, overrides,
                                     os.path.join(cell.workdir, "sweep.log"), jobs > 1)
                running[future] = (cell, time.time())
            if not running:  # nothing ready and nothing running cannot happen; guard anyway
                raise RuntimeError(f"sweep: no cell can start: {[c.name for c in pending]}")
            done, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                cell, start = running[future]
                rc = future.result()  # a KeyboardInterrupt in a cell propagates from here
                del running[future]
                entry = state["cells"][cell.name]
                entry["wall_s"] = round(entry.get("wall_s", 0.0) + time.time() - start, 1)
                entry["status"] = ("done" if rc == 0 and is_finished(cell.workdir)
                                   else f"failed (rc {rc})")
                settled.add(cell.name)
                print(f"    {cell.name}: {entry['status']} in {time.time() - start:.0f} s"
                      + ("" if rc == 0 else f"; see {cell.workdir}/sweep.log"), flush=True)
                save()
    except BaseException:
        # An interrupted cell keeps the time it ran (the next sweep adds the rest).
        for cell, start in running.values():
            entry = state["cells"][cell.name]
            entry["wall_s"] = round(entry.get("wall_s", 0.0) + time.time() - start, 1)
            entry["status"] = "interrupted"
        save()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    pool.shutdown()
    save()
    if report:
        from experiments.report import write_report

        write_report(root)
    return state


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="config file[:args]; '{method}' in the path is replaced by each method, "
                        "otherwise method=<name> is passed as a config argument")
    p.add_argument("--methods", required=True, help="comma-separated learner names")
    p.add_argument("--seeds", default="0,1,2", help="class-order trials / run seeds")
    p.add_argument("--tasks", default="", help="task counts (default: the config's own)")
    p.add_argument("--root", required=True, help="directory holding one workdir per cell")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override for every cell (as --config.FIELD=VALUE)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once (CPU: 2 on 2 cores; keep 1 on one accelerator)")
    p.add_argument("--no-report", action="store_true")
    a = p.parse_args(argv)
    from dfcl_jax.methods import METHODS

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: --methods: unknown {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(METHODS))}")
    tasks = int_list(a.tasks) or [None]
    try:
        state = sweep(a.config, methods, tasks, int_list(a.seeds), a.root, a.set,
                      not a.no_report, a.jobs)
    except SweepTerminated:
        print("sweep stopped by SIGTERM: running cells saved their checkpoints; rerun the same "
              "command to resume", file=sys.stderr)
        return 143
    failed = [k for k, v in state["cells"].items() if v.get("status") != "done"]
    if failed:
        print(f"{len(failed)} cell(s) not finished: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
