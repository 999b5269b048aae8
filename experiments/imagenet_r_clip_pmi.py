"""PMI on CLIP ViT-B/16, ImageNet-R (200 classes), 10 tasks, "icarl1993" order; everything else as
experiments/cifar100_clip_pmi.py.

    python -m experiments.run --config=experiments/imagenet_r_clip_pmi.py \
        --config.data.data_dir=<tfds dir> --workdir=DIR

TFDS `imagenet_r` ships a single `test` split (30,000 images); the CLIP continual-learning
protocols use a per-class 80/20 train/test split of it. Prepare that split as a TFDS dataset with
`train` and `test` splits and pass its name with `--config.data.name=<name>` (the config fails
early, naming config.data.split_train, until it exists). Images are resized to 224 when read.

Expected: no ImageNet-R CLIP numbers in protocols.md; PMI's CLIP table reports this row. Not run
here; wall-clock not measured. `:smoke` runs the tiny random CLIP on generated data.
"""

from experiments.cifar100_clip_pmi import clip_config


def get_config(arg=None):
    return clip_config("imagenet_r", arg)
