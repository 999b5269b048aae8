"""Writes the notebooks from the cell sources below (keeps them reviewable as Python).

    python notebooks/build_notebooks.py

Both notebooks read DFCL_NOTEBOOK_TINY=1 (the test suite sets it) to run on tiny settings.
"""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

TINY_LINE = 'TINY = os.environ.get("DFCL_NOTEBOOK_TINY") == "1"  # the tests run every notebook tiny\n'

INVERSION = [
    new_markdown_cell("""\
# Inversion objectives: prototype and compare

Train a small Fashion-MNIST classifier with the library, then compare what the inversion losses
see (BatchNorm matchings, image priors) and two ways to invert it to target features: PMI's
per-layer phase + full-model refinement, and full-model inversion from noise with the same loss.
Every piece is a library function, so a new objective is one function away: write it with the
same signature as `dfcl_jax.inversion.losses.bn_kl_pmi` and compare it in the cells below."""),
    new_code_cell('''\
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from dfcl_jax.inversion import feature_model as fm
from dfcl_jax.inversion import invert, losses
from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter, full_model_inversion
from dfcl_jax.models.blocks import apply_with_bn_moments
from dfcl_jax.train.loop import ContinualRun, build_experiment
from experiments import base, fashion_mnist

''' + TINY_LINE + '''

N_TARGETS = 20 if TINY else 200
FULL_STEPS = 8 if TINY else 160     # PMI's full-model phase and the baseline at the same count
BLOCK_STEPS = 4 if TINY else 50
UNROLL = not TINY  # unrolled chunks run faster on XLA:CPU; rolled ones compile faster'''),
    new_markdown_cell("## A small trained model (one task with all classes)"),
    new_code_cell('''\
c = fashion_mnist.get_config("method=joint,tasks=1" + (",smoke" if TINY else ""))
c.data.num_tasks = 1
if not TINY:
    c.data.train_per_class, c.train.epochs, c.train.lr_milestones = 1000, 2, ()
if not os.path.exists(os.path.join(base.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
    c.data.stand_in = "generated"  # no Debian package: stand-in files in the same format
c.runtime.progress = False
run = ContinualRun(build_experiment(c, tempfile.mkdtemp(prefix="nb_teacher_")))
run.run()
model, exp = run.exp.model, run.exp
t = run.run_state.train
teacher = {"params": {k: v for k, v in t.params.items() if k != "learner"},
           "batch_stats": t.batch_stats}
shape = exp.data.image_shape
print(f"{exp.data.name}: test accuracy {100 * run.seen_acc[0]:.1f} %, {len(model.blocks)} blocks")'''),
    new_markdown_cell("""\
## What the BatchNorm matchings and priors say about real images and noise

Each BatchNorm reports the mean and variance of its input over the batch; the matchings compare
them with the running statistics: ABD's Gaussian KL (ABD Eq. 6), PMI's `kl_pmi` and
DeepInversion's L2 of moment differences. Real images should score far lower than noise."""),
    new_code_cell('''\
real = exp.augmentation.normalize(exp.data.test_images[:64])
noise = jax.random.normal(jax.random.key(0), real.shape)
rows = {}
for name, x in (("real images", real), ("N(0,1) noise", noise)):
    _, moments = apply_with_bn_moments(model, teacher, x)
    rows[name] = {"bn_kl_abd": float(losses.bn_kl_abd(moments)),
                  "bn_kl_pmi": float(losses.bn_kl_pmi(moments)),
                  "bn_l2_di": float(losses.bn_l2_di(moments)),
                  "total_variation": float(losses.total_variation(x)),
                  "pixel_l2": float(losses.pixel_l2(x))}
print(f"{'':14s}" + "".join(f"{k:>16s}" for k in rows["real images"]))
for name, r in rows.items():
    print(f"{name:14s}" + "".join(f"{v:16.4g}" for v in r.values()))
objectives = rows'''),
    new_markdown_cell("""\
## DeepInversion from labels (`invert`)

The one-call API: class-conditional CE + BatchNorm matching + priors, Adam on the pixels."""),
    new_code_cell('''\
labels = jnp.arange(N_TARGETS) % exp.data.num_classes
di = invert(model, teacher, labels=labels, image_shape=shape, steps=4 * FULL_STEPS,
            unroll=UNROLL, progress=False)
print(f"DeepInversion: loss {di.curve[0]:.3f} -> {di.loss:.3f}")
plt.figure(figsize=(5, 3))
plt.semilogy(di.curve)
plt.xlabel("step")
plt.ylabel("loss")
plt.title("DeepInversion loss")
plt.show()'''),
    new_markdown_cell("""\
## Target features: class Gaussians + contrastive feature selection (CFS)

PMI never keeps real images: per-class means/stds of penultimate features and small per-class
encoders are enough to sample diverse targets."""),
    new_code_cell('''\
idx = exp.train_pool
feats = run.features(np.asarray(exp.augmentation.normalize(exp.data.train_images[idx])))
classes = np.arange(exp.data.num_classes)
mean, std = fm.class_statistics(feats, exp.train_labels[idx], classes)
fmc = fm.FeatureModelConfig(encoder_epochs=2 if TINY else 20)
enc, _ = fm.train_encoders(jax.random.key(1), feats, exp.train_labels[idx], classes,
                           feats.shape[1], fmc)
y = np.arange(N_TARGETS) % exp.data.num_classes
z = fm.sample_targets(jax.random.key(2), y, mean, std, enc, fmc)
print("targets", z.shape)'''),
    new_markdown_cell("""\
## Per-layer vs full-model inversion

PMI inverts block by block from the last to the first (each a small jitted solve), then refines
the whole model for a few steps. The baseline runs the same full-model loss from noise for as
many steps as PMI's refinement."""),
    new_code_cell('''\
cfg = PMIConfig(block_steps=BLOCK_STEPS, full_steps=FULL_STEPS,
                full_milestones=(FULL_STEPS // 2, 3 * FULL_STEPS // 4),
                full_warmup=min(5, FULL_STEPS // 4), micro_batch=N_TARGETS, chunk=4,
                unroll=UNROLL)
inv = PMIInverter(model, cfg)
t0 = time.perf_counter()
pmi = inv.invert(teacher, z, shape, jax.random.key(3), progress=False)
pmi_s = time.perf_counter() - t0
x_full, full_curve, full_terms = full_model_inversion(inv, teacher, z, shape, jax.random.key(4),
                                                      FULL_STEPS, progress=False)
f_full = model.apply(teacher, x_full, method=model.features)
full_mse = float(losses.feature_matching(f_full, z))
summary = {"pmi_feature_mse": pmi.feature_mse, "pmi_bn_kl": pmi.bn_kl,
           "full_model_feature_mse": full_mse, "full_model_steps": FULL_STEPS,
           "pmi_seconds_incl_compile": pmi_s, "objectives": objectives}
print(json.dumps(summary, indent=1))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for i, curve in enumerate(pmi.block_curves):
    axes[0].plot(np.asarray(curve) / max(np.asarray(curve)[0], 1e-12), label=f"block {i}")
axes[0].set_title("per-layer solves (loss / initial)")
axes[0].set_xlabel("step")
axes[0].legend(fontsize=7)
axes[1].semilogy(pmi.full_curve, label="PMI full-model phase")
axes[1].semilogy(np.asarray(full_curve), label="full-model from noise")
axes[1].set_xlabel("full-model step")
axes[1].legend()
axes[1].set_title("full-model loss")
plt.tight_layout()
plt.show()'''),
    new_markdown_cell("## The images"),
    new_code_cell('''\
def show(ax_row, images, title):
    imgs = np.clip(np.asarray(exp.augmentation.denormalize(images[:8])), 0, 1)
    for ax, im in zip(ax_row, imgs):
        ax.imshow(im.squeeze(), cmap="gray" if im.shape[-1] == 1 else None)
        ax.axis("off")
    ax_row[0].set_title(title, loc="left", fontsize=9)

fig, axes = plt.subplots(3, 8, figsize=(10, 4))
show(axes[0], pmi.images, "PMI")
show(axes[1], x_full, "full-model from noise")
show(axes[2], di.images, "DeepInversion")
plt.tight_layout()
plt.show()'''),
]

RESULTS = [
    new_markdown_cell("""\
# Continual results: load workdirs, compare methods, read accuracy matrices

Point `ROOT` at a directory of finished runs (an `experiments.sweep` root, or any directory whose
sub-directories are `experiments.run` workdirs). With `DFCL_NOTEBOOK_TINY=1` the notebook makes
a tiny root of its own (two smoke runs) first."""),
    new_code_cell('''\
import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from experiments import report

''' + TINY_LINE + '''

ROOT = os.environ.get("DFCL_RESULTS_ROOT", "runs/fmnist_table")
if TINY:
    from dfcl_jax.train.loop import train_and_evaluate
    from experiments import fashion_mnist
    ROOT = tempfile.mkdtemp(prefix="nb_results_")
    for method in ("joint", "finetune"):
        c = fashion_mnist.get_config(f"method={method},smoke")
        c.runtime.progress = False
        train_and_evaluate(c, os.path.join(ROOT, f"{method}_s0"))
runs = report.load_runs(ROOT)
rows = report.aggregate(runs)
print(f"{len(runs)} runs under {ROOT}")'''),
    new_markdown_cell("## The table (as `python -m experiments.report` writes it)"),
    new_code_cell('''\
display(Markdown(report.markdown(rows, runs)))'''),
    new_markdown_cell("## Accuracy over the seen classes after each task"),
    new_code_cell('''\
report.plot_accuracy_curves(os.path.join(ROOT, "report_accuracy.png"), runs)
display(Image(os.path.join(ROOT, "report_accuracy.png")))'''),
    new_markdown_cell("""\
## Accuracy matrices

`R[i, t]`: accuracy on task i's test images after training task t (blank above the diagonal).
Forgetting shows as colour fading along a row."""),
    new_code_cell('''\
done = [r for r in runs if r["finished"]]
fig, axes = plt.subplots(1, len(done), figsize=(3.2 * len(done), 3), squeeze=False)
for ax, r in zip(axes[0], done):
    R = np.array([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]])
    im = ax.imshow(100 * R, vmin=0, vmax=100, cmap="viridis")
    ax.set_title(f"{r['method']} (order {r['class_order']['seed']})", fontsize=9)
    ax.set_xlabel("after task")
    ax.set_ylabel("task")
    for (i, t), v in np.ndenumerate(R):
        if not np.isnan(v):
            ax.text(t, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color="w")
fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
plt.show()
summary = {r["method"]: r["final_accuracy"][0] for r in rows}  # mean A_N over seeds
print(json.dumps(summary, indent=1))'''),
]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    nbformat.write(nb, os.path.join(HERE, name))


if __name__ == "__main__":
    write("inversion_objectives.ipynb", INVERSION)
    write("continual_results.ipynb", RESULTS)
