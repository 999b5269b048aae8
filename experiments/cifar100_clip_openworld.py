"""PMI's semantic-aware projection on CLIP ViT-B/16, CIFAR-100, 10 tasks ("open world"): the
classes of the last task are learned with no real image of them, only from pseudo-data: for each
new class, features of its 5 most text-similar old classes are sampled from their Gaussians,
rotated onto its text prototype, averaged, mixed 10% with the text, and inverted to token maps
(`projection.per_class` = 10 per class) together with the usual replay set (methods.md 5).

    python -m experiments.run --config=experiments/cifar100_clip_openworld.py --workdir=DIR

During the last task the real images get weight 0 in every loss term (the step still receives the
loader's batches; the gradient does not depend on them, which tests/test_clip.py checks), and
its end-of-task hook reads nothing. Compare R[T-1, T-1] (accuracy on the last task's classes)
with zero-shot CLIP and with the data-using run of cifar100_clip_pmi.py.

Expected: protocols.md lists no numbers for this setting. Not run here; wall-clock not measured.
`:smoke` runs the tiny random CLIP on generated data (2 tasks: the second is open-world).
"""

from experiments.cifar100_clip_pmi import clip_config


def get_config(arg=None):
    return clip_config("cifar100", arg, openworld=True)
