"""Shared CIFAR-100 settings (ResNet-32, ABD reference schedule, "abd" class orders).

Not a config on its own: `cifar100_<method>.py` call `get_cifar100_config(arg, method)`.
Arguments: `tasks=5|10|20` (default 10), `seed=0|1|2` (the "abd" order trial), `smoke`
(generated stand-in data in the real TFDS cifar100 format through the same reader, a tiny
ResNet, seconds on a CPU).
"""

from experiments import base


def get_cifar100_config(arg, method: str, **method_fields):
    args = base.parse_arg(arg, tasks=10, seed=0, smoke=False)
    if args.tasks not in (5, 10, 20):
        raise ValueError(f"tasks={args.tasks}; the CIFAR-100 protocols use 5, 10 or 20")
    c = base.get_config()
    c.seed = args.seed
    c.data.order_seed = args.seed
    c.data.num_tasks = args.tasks
    base.set_method(c, method)
    for key, value in method_fields.items():
        c.method[key] = value
    if args.smoke:
        base.shrink_to_smoke(c)
    return c
