"""A task's training as phases: stretches of epochs with one loss, one lr schedule and one set of
trainable parameter groups (e.g. R-DFCIL: head only, + last stage, all, then balanced head
fine-tuning). Most learners have one phase per task, built from `config.train`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs of one task trained with loss `loss` on the groups in `trainable` (None: all)."""

    name: str
    epochs: int
    lr: float
    milestones: tuple[int, ...] = ()  # epochs (within the phase) at which lr *= decay
    decay: float = 0.1
    trainable: tuple[str, ...] | None = None  # subset of state.PARAM_GROUPS; None: every group
    loss: str = "main"  # "first" (first task), "main", or a learner's named extra loss

    def lr_at(self, epoch: int) -> float:
        """Step decay: lr * decay^(number of milestones <= epoch)."""
        return self.lr * self.decay ** sum(epoch >= m for m in self.milestones)


def default_phases(train_cfg, task: int, first_task_loss: bool) -> list[Phase]:
    """One phase from `config.train` (the first task may have its own epochs and lr)."""
    first = task == 0
    epochs = (train_cfg.first_task_epochs if first and train_cfg.first_task_epochs > 0
              else train_cfg.epochs)
    lr = train_cfg.first_task_lr if first and train_cfg.first_task_lr > 0 else train_cfg.lr
    milestones = tuple(train_cfg.lr_milestones)
    if first and train_cfg.first_task_milestones:
        milestones = tuple(train_cfg.first_task_milestones)
    return [Phase("train", epochs, lr, milestones, train_cfg.lr_decay,
                  loss="first" if first and first_task_loss else "main")]


def locate(phases: list[Phase], epoch: int) -> tuple[int, int]:
    """(phase index, epoch within that phase) of the task's `epoch`."""
    for i, p in enumerate(phases):
        if epoch < p.epochs:
            return i, epoch
        epoch -= p.epochs
    raise IndexError(f"epoch beyond the task's {sum(p.epochs for p in phases)} epochs")


def staged_phases(stages, milestone_fractions=(0.5, 0.75), decay=0.1) -> list[Phase]:
    """Phases from (name, epochs, lr, trainable, loss) rows; each decays at the given fractions."""
    out = []
    for name, epochs, lr, trainable, loss in stages:
        if epochs <= 0:
            continue
        ms = tuple(sorted({int(round(f * epochs)) for f in milestone_fractions} - {0}))
        out.append(Phase(name, epochs, lr, ms, decay, trainable, loss))
    return out
