"""PMI on CLIP ViT-B/16 (PMI's CLIP table): CIFAR-100, 10 tasks, "icarl1993" class order, frozen
pretrained CLIP with a mixture of adapters per transformer block (only adapters and routers
train), text prototypes as the classifier, 5 PMI-inverted token maps per seen class replayed
(methods.md 1.3, 3.3 CLIP variant, 6).

    python -m experiments.run --config=experiments/cifar100_clip_pmi.py --workdir=DIR
    python -m experiments.run --config=experiments/cifar100_clip_pmi.py:smoke --workdir=DIR

The first run downloads `openai/clip-vit-base-patch16` (config.json, model.safetensors,
tokenizer.json) into the Hugging Face cache; with no network point
`--config.model.clip.source=<dir>` at a copy of that snapshot directory (docs/clip.md). CIFAR
images stay 32x32 in memory and are resized (bilinear) to 224 on device by the patch-embedding
block. The inversion loops' `unroll` and `chunk` are "auto": unrolled chunks of 10 steps on CPU,
rolled chunks of 50 on GPU/TPU (dfcl_jax/inversion/loop_defaults.py).

Inversion (after every task but the last): per block 200 Adam steps (lr 0.1); the token-map block
1200 steps from 2x2, upsampled bicubically to 4, 8, 14 at steps 300, 600, 900; full model 600 steps
(lr 0.01, cosine T_max 2000), MSE to the normalised target + 0.002 KL on every attention block's
input statistics + 0.005 TV on the token map.
Learner schedule (epochs, SGD lr): ours, not the paper's (the paper's CLIP training schedule is
not in the spec): `config.train` below.

Expected: protocols.md lists no CLIP numbers to reproduce; PMI reports its CLIP ViT-B/16 results
in its CLIP table (10 tasks, icarl1993 order). Not run here (no pretrained weights, no GPU/network
on the development machines); wall-clock not measured. `:smoke` runs a tiny random CLIP on
generated cifar100-format data in about a minute on a CPU.
"""

from dfcl_jax.models.clip import CLIP_MEAN, CLIP_STD, TEMPLATES
from experiments import base

DATASETS = {  # name -> (TFDS name, classes, image size kept in memory, split_train, split_test)
    "cifar100": ("cifar100", 100, 32, "train", "test"),
    "imagenet_r": ("imagenet_r", 200, 224, "train", "test"),
    "cub": ("caltech_birds2011", 200, 224, "train", "test"),
}


def clip_config(dataset: str, arg=None, openworld: bool = False):
    """A CLIP PMI config for `dataset` (a key of DATASETS); `arg`: `seed=<int>`, `smoke`."""
    args = base.parse_arg(arg, seed=0, smoke=False, tasks=10)
    name, classes, size, train, test = DATASETS[dataset]
    c = base.get_config()
    c.seed = args.seed
    c.data.name, c.data.num_classes, c.data.image_size = name, classes, size
    c.data.split_train, c.data.split_test = train, test
    c.data.mean, c.data.std = CLIP_MEAN, CLIP_STD
    c.data.class_order = "icarl1993"
    c.data.num_tasks = args.tasks
    c.augment.update({"crop_padding": 4 if size <= 64 else 16, "hflip": True,
                      "brightness": 0.0, "contrast": 0.0})
    c.model.name = "clip"
    c.model.clip = {"source": "openai/clip-vit-base-patch16", "num_experts": 4,
                    "bottleneck": 64, "top_k": 2, "templates": TEMPLATES}
    c.train.update({"epochs": 5, "batch_size": 64, "eval_batch_size": 256, "lr": 0.01,
                    "weight_decay": 0.0, "lr_milestones": (3, 4)})
    base.set_method(c, "clip_pmi")
    c.method.clip_inversion.openworld = openworld
    if args.smoke:
        shrink_clip_to_smoke(c)
    return c


def shrink_clip_to_smoke(c) -> None:
    """A tiny random CLIP, generated stand-in data, 2 tasks, a few inversion steps."""
    c.data.stand_in = "generated"
    c.data.num_tasks = 2
    c.data.train_per_class = 4
    c.data.image_size = 32
    c.model.clip.update({"source": "tiny", "bottleneck": 8, "templates": TEMPLATES[:1]})
    c.train.update({"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "lr_milestones": ()})
    c.checkpoint.every_epochs = 1
    c.runtime.log_every_steps = 5
    c.method.clip_inversion.update({
        "block_steps": 2, "first_block_steps": 4, "progressive": (2,), "progressive_at": (2,),
        "full_steps": 2, "micro_batch": 64, "chunk": 2, "unroll": False,
        "samples_per_class": 1})
    c.method.projection.per_class = 2


def get_config(arg=None):
    return clip_config("cifar100", arg)
