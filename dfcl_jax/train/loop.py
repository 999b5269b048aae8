"""The continual loop: for each task, train -> end_task hook -> evaluate -> checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from dfcl_jax import preemption
from dfcl_jax.data.augment import Augmentation
from dfcl_jax.data.batching import eval_batches, host_slice, prefetch, train_batches
from dfcl_jax.data.class_orders import class_order
from dfcl_jax.data.sources import ImageDataset, load_dataset
from dfcl_jax.data.tasks import TaskSplits
from dfcl_jax.methods import Method, TaskInfo, get_method
from dfcl_jax.metrics.continual import summarize
from dfcl_jax.metrics.diagnostics import mean_image_distance, mmd_unbiased, plot_embeddings, plot_image_grid
from dfcl_jax.metrics.report import write_results
from dfcl_jax.models import build_model
from dfcl_jax.train import mesh as mesh_lib
from dfcl_jax.train.checkpoint import CheckpointError, RunCheckpointer, config_differences
from dfcl_jax.train.logging import RunLogger
from dfcl_jax.train.schedule import Phase, locate
from dfcl_jax.train.state import RunState, freeze_teacher, init_run_state, reset_optimizer, set_learning_rate
from dfcl_jax.train.steps import make_eval_step, make_train_step
from dfcl_jax.train.validate import ConfigError, validate_config

log = logging.getLogger("dfcl_jax")

# Fields that may change between a run and its resumption (they do not change the results).
RESUMABLE_FIELDS = ("runtime",)


class TaskData(NamedTuple):
    """What end_task hooks see: the current task's real data (only while it lasts) and its place."""

    images: np.ndarray  # the dataset's uint8 images (index with `indices` only)
    labels: np.ndarray  # remapped labels
    indices: np.ndarray  # examples of the current task
    n_seen: int  # classes seen after this task
    is_last: bool  # the last task of the sequence
    seed: int  # the run's seed (hooks derive their randomness from it and the task)
    progress: bool  # whether long hooks may show progress bars
    normalize: Any  # uint8 images -> the model's normalised input space


class NonFiniteLossError(FloatingPointError):
    """NaN/Inf in a training loss: the message names the step and every loss term."""


class DataFreeViolation(AssertionError):
    """A data-free learner was about to receive real images of a past task."""


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before the loop starts."""

    config: ml_collections.ConfigDict
    workdir: str
    data: ImageDataset
    splits: TaskSplits
    train_labels: np.ndarray  # remapped through the class order
    test_labels: np.ndarray
    train_pool: np.ndarray  # indices of training examples in use (all, or train_per_class)
    method: Method
    model: Any
    augmentation: Augmentation
    mesh: Any

    def training_indices(self, task: int) -> np.ndarray:
        """The real training examples the learner may read during `task` (data-free rule)."""
        tasks = list(range(task + 1)) if self.method.trains_on == "seen" else [task]
        idx = self.train_pool[np.isin(self.splits.task_of(self.train_labels[self.train_pool]),
                                      tasks)]
        if self.method.data_free:
            seen_tasks = np.unique(self.splits.task_of(self.train_labels[idx]))
            if seen_tasks.tolist() != [task]:
                raise DataFreeViolation(f"{self.method.name} is data-free but task {task}'s data "
                                        f"holds examples of tasks {seen_tasks.tolist()}")
        return idx


def config_to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


def build_experiment(config, workdir: str) -> Experiment:
    """Validate, load data, build model and mesh: everything but compute."""
    validate_config(config, workdir)
    method = get_method(config.method)
    data = load_dataset(config.data)
    if data.num_classes % config.data.num_tasks:
        raise ConfigError(f"config.data.num_tasks={config.data.num_tasks} does not divide the "
                          f"{data.num_classes} classes of {data.name}")
    order = class_order(config.data.class_order, data.num_classes, config.data.order_seed)
    splits = TaskSplits(tuple(order), config.data.num_tasks)
    train_labels, test_labels = splits.remap(data.train_labels), splits.remap(data.test_labels)
    pool = np.arange(len(train_labels))
    if config.data.train_per_class:
        rng = np.random.default_rng(config.seed)
        pool = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(train_labels == c))[: config.data.train_per_class]
            for c in range(data.num_classes)]))
    mesh = mesh_lib.make_mesh(config.runtime.num_devices)
    for field in ("batch_size", "eval_batch_size"):
        if config.train[field] % mesh.size:
            raise ConfigError(f"config.train.{field}={config.train[field]} is not divisible by "
                              f"the {mesh.size} devices of the mesh")
    a = config.augment
    aug = Augmentation(tuple(config.data.mean), tuple(config.data.std), a.crop_padding, a.hflip,
                       a.brightness, a.contrast)
    names = [data.class_names[c] for c in order] if data.class_names else None
    model = build_model(config.model, data.num_classes, names)
    method.bind(data.num_classes, config.data.num_tasks, mesh)
    return Experiment(config, os.path.abspath(workdir), data, splits, train_labels, test_labels,
                      pool, method, model, aug, mesh)


def model_params(params) -> dict:
    """The model's parameters without learner-owned ones (`params["learner"]`)."""
    return {k: v for k, v in params.items() if k != "learner"}


def first_task_signature(config, method: Method) -> dict:
    """What must agree for two runs to share a trained first-task model."""
    c = config_to_dict(config)
    return {"seed": c["seed"], "data": c["data"], "augment": c["augment"], "model": c["model"],
            "train": c["train"], "first_task_loss": method.first_task_loss}


class ContinualRun:
    """One method over one task sequence, resumable from its workdir."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        cfg = exp.config
        self.T = cfg.data.num_tasks
        sample = np.zeros((1, *exp.data.image_shape), np.float32)
        self.run_state: RunState = mesh_lib.put_replicated(
            exp.mesh, init_run_state(exp.model, cfg.train, jax.random.key(cfg.seed), sample,
                                     exp.method))
        self.steps: dict[str, object] = {}  # one compiled train step per loss, built when needed
        self.eval_step = make_eval_step(exp.model, exp.augmentation, exp.mesh, exp.method)
        self.ckpt = RunCheckpointer(os.path.join(exp.workdir, "checkpoints"),
                                    cfg.checkpoint.max_to_keep)
        self.R: list[list[float | None]] = [[None] * self.T for _ in range(self.T)]
        self.seen_acc: list[float | None] = [None] * self.T
        self.task, self.epoch, self.global_step = 0, 0, 0
        self.batch = 0  # the next batch of `epoch` (a preempted run resumes inside an epoch)
        self.block_each_step = jax.devices()[0].platform == "cpu" and exp.mesh.size > 1
        self.logger = RunLogger(exp.workdir, enabled=mesh_lib.is_chief())

    # ------------------------------------------------------------------ checkpoint / resume
    def meta(self) -> dict:
        return {"task": self.task, "epoch": self.epoch, "batch": self.batch,
                "global_step": self.global_step,
                "accuracy_matrix": self.R, "seen_accuracy": self.seen_acc,
                "class_order": list(self.exp.splits.order),
                "config": config_to_dict(self.exp.config)}

    def save(self) -> None:
        self.ckpt.save(self.run_state, self.meta())

    def maybe_resume(self) -> bool:
        if self.ckpt.latest() is None:
            return False
        meta = self.ckpt.restore_meta()
        saved = {k: v for k, v in meta["config"].items() if k not in RESUMABLE_FIELDS}
        current = {k: v for k, v in config_to_dict(self.exp.config).items()
                   if k not in RESUMABLE_FIELDS}
        diffs = config_differences(saved, current)
        if diffs:
            raise ConfigError(f"{self.exp.workdir} holds a run with a different config; use "
                              "another --workdir or the same config. Differing fields:\n  "
                              + "\n  ".join(diffs))
        self.run_state = self.ckpt.restore_state(self.run_state)
        self.task, self.epoch, self.global_step = meta["task"], meta["epoch"], meta["global_step"]
        self.batch = meta.get("batch", 0)
        self.R, self.seen_acc = meta["accuracy_matrix"], meta["seen_accuracy"]
        log.info("resumed %s at task %d epoch %d batch %d", self.exp.workdir, self.task,
                 self.epoch, self.batch)
        return True

    def first_task_dir(self, workdir: str) -> str:
        return os.path.join(os.path.abspath(workdir), "first_task_model")

    def save_first_task_model(self) -> None:
        """Every process enters the (collective) save; a resumed run that trained task 1 again
        overwrites it with the same model. Only the chief writes the signature."""
        t = self.run_state.train
        path = self.first_task_dir(self.exp.workdir)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, {"params": model_params(t.params), "batch_stats": t.batch_stats},
                       force=True)
        if mesh_lib.is_chief():
            with open(path + ".json", "w") as f:
                json.dump(first_task_signature(self.exp.config, self.exp.method), f, indent=1)

    def load_first_task_model(self, workdir: str) -> None:
        """Start from another run's trained first-task model (e.g. shared by several methods)."""
        path = self.first_task_dir(workdir)
        if not os.path.exists(path + ".json"):
            raise ConfigError(f"config.first_task_from={workdir!r} has no first_task_model "
                              "(that run must have finished its first task)")
        with open(path + ".json") as f:
            theirs = json.load(f)
        ours = first_task_signature(self.exp.config, self.exp.method)
        diffs = config_differences(theirs, ours)
        if diffs:
            raise ConfigError(f"config.first_task_from={workdir!r} was trained differently:\n  "
                              + "\n  ".join(diffs))
        t = self.run_state.train
        target = {"params": model_params(t.params), "batch_stats": t.batch_stats}
        try:
            with ocp.StandardCheckpointer() as ckptr:
                restored = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                            target))
        except Exception as e:
            raise CheckpointError(f"{path} is corrupt or does not match this model: {e}") from e
        restored["params"] = {**t.params, **restored["params"]}  # learner-owned params stay fresh
        self.run_state = self.run_state.replace(train=t.replace(**restored))

    # ------------------------------------------------------------------------------ training
    def train_step(self, loss: str = "main"):
        """The jitted step of the learner's loss `loss` (compiled once, reused by every task)."""
        if loss not in self.steps:
            exp = self.exp
            self.steps[loss] = make_train_step(exp.model, exp.method, exp.augmentation, exp.mesh,
                                               loss)
        return self.steps[loss]

    def train_epoch(self, task: int, epoch: int, indices: np.ndarray, info: TaskInfo,
                    phase: Phase, phase_epoch: int) -> None:
        cfg, exp = self.exp.config, self.exp
        lr = phase.lr_at(phase_epoch)
        # Host-side edits (lr, optimiser reset, restore) leave arrays without the mesh sharding;
        # re-placing them keeps the step's input types, hence its single compilation.
        self.run_state = mesh_lib.put_replicated(exp.mesh, self.run_state.replace(
            train=set_learning_rate(self.run_state.train, lr, phase.trainable)))
        batches = train_batches(indices, cfg.train.batch_size, cfg.seed, task, epoch)
        if not batches:
            raise ConfigError(f"config.train.batch_size={cfg.train.batch_size} exceeds the "
                              f"{len(indices)} training examples of task {task}")

        def feed():
            for b in batches[self.batch:]:
                local = host_slice(b)
                yield mesh_lib.put_batch(exp.mesh, exp.data.train_images[local],
                                         exp.train_labels[local])

        base_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), task), epoch)
        step = self.train_step(phase.loss)
        pending: list[tuple[int, dict]] = []
        label = "" if phase.name == "train" else f" {phase.name}"
        bar = tqdm(total=len(batches), initial=self.batch, leave=False,
                   desc=f"task {task + 1}/{self.T}{label} epoch {epoch + 1}",
                   disable=not cfg.runtime.progress or None)
        try:
            for i, (images, labels) in enumerate(prefetch(feed()), start=self.batch):
                self.run_state, metrics = step(self.run_state, images, labels, info,
                                               jax.random.fold_in(base_key, i))
                if self.block_each_step:  # XLA:CPU collectives can deadlock when queued back to back
                    jax.block_until_ready(metrics)
                pending.append((self.global_step, metrics))
                self.global_step += 1
                self.batch = i + 1
                if len(pending) >= cfg.runtime.log_every_steps or i == len(batches) - 1:
                    mean = self.flush(pending, task, epoch)
                    bar.update(len(pending))
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{lr:.3g}")
                    pending = []
                if self.batch < len(batches):
                    preemption.check()
        finally:
            bar.close()
            if pending:  # stopped early (preemption): the finished steps are logged
                self.flush(pending, task, epoch)
        self.batch = 0

    def flush(self, pending, task: int, epoch: int) -> dict:
        """Fetch buffered step metrics (one host sync per interval) and stop on NaN/Inf."""
        host = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, host):
            if not all(np.isfinite(v) for v in m.values()):
                names = ["loss"] + sorted(k for k in m if k != "loss")
                terms = ", ".join(f"{k}={float(m[k]):.6g}" for k in names)
                kept = ("the last checkpoint in " + self.ckpt.directory + " is intact"
                        if self.ckpt.latest() is not None else "no checkpoint was written yet")
                raise NonFiniteLossError(f"non-finite loss at global step {step} (task {task}, "
                                         f"epoch {epoch}): {terms}; {kept}")
        mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        self.logger.write("train", self.global_step, mean, task=task, epoch=epoch)
        return mean

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, task: int) -> None:
        """R[i, task] for every seen task i, and the accuracy over all seen classes."""
        exp = self.exp
        seen = exp.splits.indices(exp.test_labels, list(range(task + 1)))
        t = self.run_state.train
        variables = {"params": t.params, "batch_stats": t.batch_stats}
        inference = exp.method.inference_state(self.run_state.extras)
        n_seen = np.int32(exp.splits.n_seen(task))
        correct = np.zeros(self.T)
        count = np.zeros(self.T)
        for chunk, valid in eval_batches(seen, exp.config.train.eval_batch_size):
            local = host_slice(chunk)
            images, labels = mesh_lib.put_batch(exp.mesh, exp.data.test_images[local],
                                                exp.test_labels[local])
            ok = np.asarray(jax.device_get(self.eval_step(variables, images, labels, n_seen,
                                                          inference)))
            task_ids = exp.splits.task_of(exp.test_labels[chunk])
            correct += np.bincount(task_ids[valid], ok[valid], minlength=self.T)
            count += np.bincount(task_ids[valid], minlength=self.T)
        for i in range(task + 1):
            self.R[i][task] = float(correct[i] / count[i])
        self.seen_acc[task] = float(correct.sum() / count.sum())
        self.logger.write("eval", self.global_step,
                          {f"task_{i}": self.R[i][task] for i in range(task + 1)}
                          | {"seen_accuracy": self.seen_acc[task]}, task=task)

    def features(self, images_normalised: np.ndarray, batch: int = 256) -> np.ndarray:
        t = self.run_state.train
        variables = {"params": t.params, "batch_stats": t.batch_stats}
        return np.concatenate([
            np.asarray(self.exp.model.apply(variables, images_normalised[i:i + batch],
                                            method=self.exp.model.features))
            for i in range(0, len(images_normalised), batch)])

    def diagnose_synthetic(self, task: int, n: int = 500) -> None:
        """ABD Sec. 5 diagnosis after task 2: MID/MMD of real-old vs synthetic-old and vs real-new
        features of the current model (real images from the test split), plus a PCA plot."""
        exp = self.exp
        real = {}
        for name, t in (("real_old", task - 1), ("real_new", task)):
            ix = exp.splits.indices(exp.test_labels, t)[:n]
            real[name] = self.features(np.asarray(exp.augmentation.normalize(
                exp.data.test_images[ix])))
        rng = jax.random.fold_in(jax.random.key(exp.config.seed), 5000 + task)
        syn, _ = exp.method.sample_synthetic(exp.model, self.run_state, rng, n,
                                             exp.splits.n_old(task))
        f_syn = self.features(mesh_lib.to_host(syn))
        self.diagnostics = {
            "after_task": task,
            "mid_real_old_vs_synthetic_old": mean_image_distance(real["real_old"], f_syn),
            "mid_real_old_vs_real_new": mean_image_distance(real["real_old"], real["real_new"]),
            "mmd_real_old_vs_synthetic_old": mmd_unbiased(real["real_old"], f_syn),
            "mmd_real_old_vs_real_new": mmd_unbiased(real["real_old"], real["real_new"]),
        }
        if mesh_lib.is_chief():
            plot_embeddings(os.path.join(exp.workdir, "embeddings_task2.png"),
                            {"real old (task 1)": real["real_old"],
                             "real new (task 2)": real["real_new"], "synthetic old": f_syn},
                            title=f"{exp.method.name}: features after task 2")
            with open(os.path.join(exp.workdir, "diagnostics.json"), "w") as f:
                json.dump(self.diagnostics, f, indent=1)
        self.logger.write("diagnostics", self.global_step, self.diagnostics, task=task)

    def save_synthetic_grid(self, task: int, n: int = 40) -> None:
        """What the learner will replay during the next task, as an image grid."""
        exp = self.exp
        rng = jax.random.fold_in(jax.random.key(exp.config.seed), 6000 + task)
        images, labels = exp.method.sample_synthetic(exp.model, self.run_state, rng, n,
                                                     exp.splits.n_seen(task))
        images, labels = mesh_lib.to_host(exp.augmentation.denormalize(images)), mesh_lib.to_host(labels)
        if mesh_lib.is_chief():
            plot_image_grid(os.path.join(exp.workdir, f"synthetic_after_task{task + 1}.png"),
                            images, labels, title=f"{exp.method.name}: replay after task {task + 1}")

    # ---------------------------------------------------------------------------------- loop
    def run(self) -> dict:
        """Run (or resume) every task; on SIGTERM, save where the run stands and raise
        `preemption.Preempted` (rerunning resumes there)."""
        self.maybe_resume()
        with preemption.handle_sigterm():
            try:
                self.run_tasks()
            except preemption.Preempted:
                self.save()
                log.warning("preempted at task %d epoch %d batch %d: checkpoint saved in %s; "
                            "run the same command again to resume", self.task, self.epoch,
                            self.batch, self.ckpt.directory)
                raise
            finally:
                self.logger.close()
                self.ckpt.close()  # waits for the asynchronous saves to finish
        return self.results()

    def run_tasks(self) -> None:
        cfg, exp = self.exp.config, self.exp
        while self.task < self.T:
            task = self.task
            info = TaskInfo.make(exp.splits.n_old(task), exp.splits.n_seen(task))
            indices = exp.training_indices(task)
            train_indices = exp.method.training_subset(task, indices, exp.train_labels, cfg.seed)
            start = time.time()
            if self.epoch == 0:
                self.run_state = exp.method.begin_task(self.run_state, task)
            phases = exp.method.phases(cfg.train, task)
            epochs = sum(p.epochs for p in phases)
            if task == 0 and cfg.first_task_from:
                self.load_first_task_model(cfg.first_task_from)
                self.epoch = epochs
            while self.epoch < epochs:
                p, local = locate(phases, self.epoch)
                if local == 0 and self.batch == 0:  # a fresh optimiser at every task and phase
                    self.run_state = self.run_state.replace(
                        train=reset_optimizer(self.run_state.train))
                self.train_epoch(task, self.epoch, train_indices, info, phases[p], local)
                self.epoch += 1
                # Also when training ends: a stop during the end-of-task work resumes there.
                if self.epoch % cfg.checkpoint.every_epochs == 0 or self.epoch == epochs:
                    self.save()
            if task == 0:
                self.save_first_task_model()
            replays_images = (hasattr(exp.method, "sample_synthetic")
                              and getattr(exp.method, "synthetic_space", "images") == "images")
            if task == 1 and replays_images:
                self.diagnose_synthetic(task)
            task_data = TaskData(exp.data.train_images, exp.train_labels, indices,
                                 exp.splits.n_seen(task), task == self.T - 1, cfg.seed,
                                 bool(cfg.runtime.progress), exp.augmentation.normalize)
            self.run_state = exp.method.end_task(self.run_state, task, task_data)
            # End-of-task hooks make arrays off the mesh (counts, scatters): lay the state out on
            # it again, as every collective save and the next task's step expect.
            self.run_state = mesh_lib.put_replicated(exp.mesh, freeze_teacher(self.run_state))
            if replays_images and task < self.T - 1:
                self.save_synthetic_grid(task)
            self.evaluate(task)
            self.task, self.epoch = task + 1, 0
            self.save()
            if mesh_lib.is_chief():
                write_results(exp.workdir, self.results())
            log.info("task %d/%d: seen-class accuracy %.2f%% (%.0fs)", task + 1, self.T,
                     100 * self.seen_acc[task], time.time() - start)

    def results(self) -> dict:
        cfg, exp = self.exp.config, self.exp
        done = sum(v is not None for v in self.seen_acc)
        R = [row[:done] for row in self.R[:done]]
        upper = None
        if cfg.upper_bound_workdir:
            with open(os.path.join(cfg.upper_bound_workdir, "results.json")) as f:
                upper = json.load(f)["seen_accuracy"][:done]
        out = {"method": cfg.method.name, "dataset": exp.data.name,
               "num_tasks": self.T, "tasks_done": done,
               "class_order": {"name": cfg.data.class_order, "seed": cfg.data.order_seed,
                               "order": list(exp.splits.order)},
               "accuracy_matrix": R}
        out.update(summarize(R, self.seen_acc[:done], upper))
        diagnostics = getattr(self, "diagnostics", None)
        if diagnostics is None and os.path.exists(os.path.join(exp.workdir, "diagnostics.json")):
            with open(os.path.join(exp.workdir, "diagnostics.json")) as f:
                diagnostics = json.load(f)
        if diagnostics:
            out["diagnostics"] = diagnostics
        return out


def train_and_evaluate(config, workdir: str) -> dict:
    """Run (or resume) `config` in `workdir`; returns results.json's content."""
    exp = build_experiment(config, workdir)
    if mesh_lib.is_chief():
        with open(os.path.join(exp.workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))
    log.info("devices: %s; mesh of %d; method %s on %s (%d tasks)", jax.devices(),
             exp.mesh.size, config.method.name, exp.data.name, config.data.num_tasks)
    return ContinualRun(exp).run()
