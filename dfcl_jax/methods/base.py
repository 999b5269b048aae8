"""The learner interface, its registry, and the losses and forwards learners share."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from dfcl_jax.models.heads import class_range_mask, mask_logits
from dfcl_jax.train.schedule import Phase, default_phases

METHODS: dict[str, type[Method]] = {}


@struct.dataclass
class TaskInfo:
    """Task identity as array data, so one compiled step serves every task."""

    n_old: jax.Array  # classes seen before this task (int32 scalar)
    n_seen: jax.Array  # classes seen up to and including this task (int32 scalar)

    @classmethod
    def make(cls, n_old: int, n_seen: int) -> TaskInfo:
        return cls(jnp.asarray(n_old, jnp.int32), jnp.asarray(n_seen, jnp.int32))


@struct.dataclass
class StepContext:
    """What a loss sees besides the trainable parameters and the batch."""

    task: TaskInfo
    teacher: Any  # frozen previous model {"params", "batch_stats"}
    extras: Any  # the learner's own persistent state (generator, feature statistics, ...)
    rng: jax.Array
    # uint8 images -> augmented, normalised images (the step's `Augmentation`): lets learners that
    # keep real images (coreset baselines) augment them as the real batch. None outside the step.
    augment: Any = struct.field(pytree_node=False, default=None)


class Method:
    """A learner: pure loss + task-boundary hooks. Subclasses register with `@register`."""

    name: ClassVar[str] = ""
    data_free: ClassVar[bool] = True  # may not keep real images of past tasks
    trains_on: ClassVar[str] = "task"  # "task": current task's data; "seen": all tasks so far
    first_task_loss: ClassVar[str] = "ce"  # methods with equal values can share a first-task model

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.num_classes, self.num_tasks, self.mesh = 0, 0, None

    def bind(self, num_classes: int, num_tasks: int, mesh=None) -> None:
        """The benchmark's shape (fixes the size of per-class or per-task state in `extras`) and
        the device mesh end-of-task work may shard over."""
        self.num_classes, self.num_tasks, self.mesh = num_classes, num_tasks, mesh

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """Fields of `config.method` for this learner (besides `name`)."""
        return ml_collections.ConfigDict()

    def validate(self) -> None:
        """Raise ValueError naming `config.method.<field>` for bad values."""

    def init_learner_params(self, model, rng, sample_images) -> Any:
        """Trainable parameters the learner owns besides the model's (e.g. projection heads);
        they live in `params["learner"]` and belong to the "head" parameter group."""
        return None

    def init_extras(self, model, rng, sample_images) -> Any:
        """The learner's persistent state beside the model (fixed structure; checkpointed)."""
        return {}

    def loss_fn(self, model, params, batch_stats, images, labels, ctx: StepContext):
        """(loss, (new_batch_stats, terms)) for one batch of normalised images and labels."""
        raise NotImplementedError

    # Learners whose first task trains differently (no old classes, nothing to replay) override
    # this; the loop then compiles a second step for task 1 instead of branching inside one step
    # (XLA:CPU runs convolutions inside lax.cond/while bodies >10x slower than at top level).
    first_task_loss_fn = None

    def phases(self, train_cfg, task: int) -> list[Phase]:
        """How `task` is trained: one phase from `config.train` unless the learner stages it."""
        return default_phases(train_cfg, task, self.first_task_loss_fn is not None)

    def loss_for(self, name: str):
        """The loss of a phase: "main" (`loss_fn`), "first" or a learner's `<name>_loss_fn`."""
        if name == "main":
            return self.loss_fn
        fn = self.first_task_loss_fn if name == "first" else getattr(self, f"{name}_loss_fn", None)
        if fn is None:
            raise ValueError(f"learner {self.name!r} has no {name!r} loss")
        return fn

    def training_subset(self, task: int, indices, labels, seed: int):
        """The examples of `indices` the learner trains on during `task` (default: all of them).

        A learner may hold some out (BiC's validation split); `end_task` still sees every index.
        """
        return indices

    def inference_state(self, extras) -> Any:
        """The part of `extras` inference needs (e.g. BiC's bias layer); None for most learners."""
        return None

    def inference_logits(self, logits, state):
        """The model's logits as the learner predicts with them (evaluation applies this)."""
        return logits

    def begin_task(self, run, task: int):
        """Hook before the first epoch of `task`; returns the (new) RunState."""
        return run

    def end_task(self, run, task: int, task_data):
        """Hook after the last epoch of `task`, while its real data (`task_data`) is readable.

        Data-free learners may keep only weights, generators, per-class statistics and encoders.
        The loop freezes the teacher afterwards.
        """
        return run


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(cfg: ml_collections.ConfigDict) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"config.method.name={cfg.name!r}; allowed: {', '.join(sorted(METHODS))}")
    method = METHODS[cfg.name](cfg)
    method.validate()
    return method


def method_config(name: str) -> ml_collections.ConfigDict:
    """`config.method` for learner `name`: its name plus its own default fields."""
    if name not in METHODS:
        raise ValueError(f"config.method.name={name!r}; allowed: {', '.join(sorted(METHODS))}")
    cfg = METHODS[name].default_config()
    cfg.name = name
    return cfg


def require_positive(cfg, *fields: str, allow_zero: bool = False) -> None:
    for f in fields:
        v = cfg[f]
        if v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"config.method.{f}={v} must be {'>= 0' if allow_zero else '> 0'}")


# ----------------------------------------------------------------------------- shared pieces
def seen_ce(logits, labels, n_seen) -> jax.Array:
    """Cross-entropy over the seen classes (single head, no task id)."""
    return optax.softmax_cross_entropy_with_integer_labels(mask_logits(logits, 0, n_seen), labels)


def kd_old_classes(student_logits, teacher_logits, n_old, temperature: float) -> jax.Array:
    """Knowledge distillation (soft-target CE at temperature T) over the old classes, per sample.

    As the ABD reference's `loss_fn_kd`: no T^2 factor; zero when there are no old classes.
    """
    log_p = jax.nn.log_softmax(mask_logits(student_logits, 0, n_old) / temperature)
    q = jax.nn.softmax(mask_logits(teacher_logits, 0, n_old) / temperature)
    q = jnp.where(class_range_mask(q.shape[-1], 0, n_old), q, 0.0)
    return jnp.where(n_old > 0, -jnp.sum(q * log_p, axis=-1), 0.0)


def plain_ce_loss(model, params, batch_stats, images, labels, ctx, term_names=("ce",)):
    """CE over the seen classes on real data; the other named terms reported as 0.

    The first task of every replay learner (nothing to replay yet), as the references.
    """
    _, logits, st = student_forward(model, params, batch_stats, images)
    ce = seen_ce(logits, labels, ctx.task.n_seen).mean()
    zero = jnp.zeros(())
    return ce, (st, {k: (ce if i == 0 else zero) for i, k in enumerate(term_names)})


def student_forward(model, params, batch_stats, images):
    """Train-mode forward: (features, logits, updated batch_stats)."""
    (feats, logits), state = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, True,
        method=model.features_and_logits, mutable=["batch_stats"])
    return feats, logits, state["batch_stats"]


def teacher_forward(model, teacher: Any, images):
    """Frozen previous model in eval mode: (features, logits), no gradient."""
    feats, logits = model.apply(teacher, images, False, method=model.features_and_logits)
    return jax.lax.stop_gradient(feats), jax.lax.stop_gradient(logits)
