"""PMI on CLIP ViT-B/16, CUB-200-2011 (TFDS `caltech_birds2011`, 200 classes), 10 tasks,
"icarl1993" order; everything else as experiments/cifar100_clip_pmi.py.

    python -m experiments.run --config=experiments/cub_clip_pmi.py --workdir=DIR

Images are resized to 224 when read (about 1.2 GB of uint8 for the 11,788 images).
Expected: no CUB CLIP numbers in protocols.md; PMI's CLIP table reports this row. Not run here;
wall-clock not measured. `:smoke` runs the tiny random CLIP on generated data.
"""

from experiments.cifar100_clip_pmi import clip_config


def get_config(arg=None):
    return clip_config("cub", arg)
