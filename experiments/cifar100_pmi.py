"""PMI (per-layer model inversion + R-DFCIL-style learner) on CIFAR-100, ResNet-32 (PMI variant:
16 invertible blocks), the PMI/R-DFCIL reference schedule.

    python -m experiments.run --config=experiments/cifar100_pmi.py --workdir=DIR
    python -m experiments.run --config=experiments/cifar100_pmi.py:tasks=5,seed=1 --workdir=DIR

First task: 200 epochs, lr 0.1, x0.1 at 80 and 120, weight decay 5e-4. Later tasks: head only 20
epochs (lr 0.1), + last stage 20 (0.05), all 120 (0.01; 5e-3 at 5 tasks), each x0.1 at 50% and
75%, then 40 epochs of class-balanced head fine-tuning (lr 0.005). After every task but the last:
per-class Gaussians + contrastive encoders (200 epochs), CFS targets (10 tasks: 3000 + 2000 t;
5 tasks: 6000 + 5000 t; 20 tasks: 2000 + 1000 t), inverted with 16 x 50 per-block Adam steps
(lr 0.8) and 160 full-model steps (lr 0.4), all targets of a task in one batch (up to 4000 per
micro-batch; `--config.method.pmi.micro_batch` bounds memory). `--config.method.pmi.unroll` and
`.chunk` are "auto": unrolled chunks of 10 steps on CPU, rolled chunks of 50 (one call per block)
on GPU/TPU (dfcl_jax/inversion/loop_defaults.py).

Expected A_N (10 tasks, third-party rerun of the released code, 3 seeds): 44.4 (43.7-45.0),
average incremental accuracy 59.4. Wall-clock: not measured here (no GPU in CI).
`:smoke` runs in about a minute on a CPU on generated cifar100-format data (the TFDS reader).
"""

from experiments import base
from experiments.cifar100_base import get_cifar100_config

TARGETS = {5: (6000, 5000), 10: (3000, 2000), 20: (2000, 1000)}  # count = base + per_task * t


def apply_pmi_schedule(c, tasks: int) -> None:
    """The PMI/R-DFCIL reference schedule and target counts (methods.md sec. 4 and 6)."""
    c.model.variant = "pmi"
    c.train.first_task_epochs = 200
    c.train.first_task_lr = 0.1
    c.train.first_task_milestones = (80, 120)
    c.train.weight_decay = 5e-4
    c.method.pmi.targets_base, c.method.pmi.targets_per_task = TARGETS.get(tasks, TARGETS[10])
    if tasks == 5:
        c.method.all_lr = 5e-3


def get_config(arg=None):
    args = base.parse_arg(arg, tasks=10, seed=0, smoke=False)
    c = get_cifar100_config(f"tasks={args.tasks},seed={args.seed}", "pmi")
    apply_pmi_schedule(c, args.tasks)
    if args.smoke:
        base.shrink_to_smoke(c)
    return c
