"""PMI on Tiny-ImageNet (200 classes, 64x64), ResNet-32 (PMI variant), 20 tasks by default, the
CIFAR-100 settings with the "all" stage at lr 5e-3 (methods.md sec. 6).

    # once: put tiny-imagenet-200.zip in <data_dir>/downloads/manual, then
    python -c "from dfcl_jax.data import tiny_imagenet; tiny_imagenet.prepare('<data_dir>')"
    python -m experiments.run --config=experiments/tiny_imagenet_pmi.py \
        --config.data.data_dir=<data_dir> --workdir=DIR

Arguments: `tasks=5|10|20`, `seed=<r>` (the "abd" order trial), `smoke` (tiny model and budget;
the data must still be prepared). Expected numbers: none published for this row in the spec;
wall-clock not measured here.
"""

from experiments import base
from experiments.cifar100_pmi import apply_pmi_schedule


def get_config(arg=None):
    args = base.parse_arg(arg, tasks=20, seed=0, smoke=False)
    if 200 % args.tasks:
        raise ValueError(f"tasks={args.tasks} must divide the 200 classes")
    c = base.get_config()
    c.seed = args.seed
    c.data.name = "tiny_imagenet200"
    c.data.num_classes = 200
    c.data.image_size = 64
    c.data.split_test = "validation"
    c.data.mean = (0.4802, 0.4481, 0.3975)
    c.data.std = (0.2770, 0.2691, 0.2821)
    c.data.order_seed = args.seed
    c.data.num_tasks = args.tasks
    c.augment.crop_padding = 8
    base.set_method(c, "pmi")
    apply_pmi_schedule(c, 10)
    c.method.all_lr = 5e-3
    c.method.pmi.targets_base, c.method.pmi.targets_per_task = 2000, 1000
    if args.smoke:
        base.shrink_to_smoke(c)
    return c
