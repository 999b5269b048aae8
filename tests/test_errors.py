"""Bad input fails early with a message naming the field; NaN stops the run; bad checkpoints."""

import os

import jax.numpy as jnp
import pytest

from dfcl_jax.methods import METHODS
from dfcl_jax.methods.finetune import Finetune
from dfcl_jax.train.checkpoint import CheckpointError
from dfcl_jax.train.loop import ContinualRun, NonFiniteLossError, train_and_evaluate
from dfcl_jax.train.validate import ConfigError
from experiments import fashion_mnist
from tests.conftest import tiny_config


@pytest.fixture
def no_compute(monkeypatch):
    """Any attempt to build the run (model init, compile) fails the test."""
    monkeypatch.setattr(ContinualRun, "__init__",
                        lambda *a: pytest.fail("compute started before validation"))


@pytest.mark.parametrize("field,value,match", [
    ("method.name", "nope", r"config.method.name='nope'; allowed: .*finetune.*lwf_mc"),
    ("data.source", "s3", r"config.data.source='s3'; allowed: idx, tfds"),
    ("data.class_order", "random", r"config.data.class_order='random'; allowed: abd, icarl1993"),
    ("data.num_tasks", 3, r"config.data.num_tasks=3 does not divide the 10 classes"),
    ("train.epochs", 0, r"config.train.epochs=0 must be > 0"),
    ("train.batch_size", -4, r"config.train.batch_size=-4 must be > 0"),
    ("train.lr", 0.0, r"config.train.lr=0.0 must be > 0"),
    ("model.name", "vgg", r"config.model.name='vgg'; allowed: cifar_resnet, resnet18"),
    ("upper_bound_workdir", "/nonexistent/run", r"config.upper_bound_workdir='/nonexistent/run'"),
])
def test_bad_config_fields_are_named(idx_dir, tmp_path, no_compute, field, value, match):
    cfg = tiny_config(idx_dir, **{field: value})
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(cfg, str(tmp_path))


def test_method_fields_are_validated(idx_dir, tmp_path, no_compute):
    cfg = tiny_config(idx_dir, method="lwf")
    cfg.method.temperature = 0.0
    with pytest.raises(ConfigError, match=r"config.method.temperature=0.0 must be > 0"):
        train_and_evaluate(cfg, str(tmp_path))


def test_num_tasks_not_dividing_the_classes_read_from_the_files(idx_dir, tmp_path, no_compute):
    cfg = tiny_config(idx_dir, **{"data.num_classes": 0, "data.num_tasks": 4})
    with pytest.raises(ConfigError, match=r"num_tasks=4 does not divide the 10 classes"):
        train_and_evaluate(cfg, str(tmp_path))


def test_missing_data_directory_says_how_to_get_the_data(tmp_path, no_compute):
    cfg = tiny_config(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data_dir=.*nowhere.*apt-get install -y "
                                          r"dataset-fashion-mnist"):
        train_and_evaluate(cfg, str(tmp_path / "wd"))


def test_unwritable_workdir(idx_dir, tmp_path, no_compute):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"--workdir=.*a_file/run.* is not writable"):
        train_and_evaluate(tiny_config(idx_dir), str(blocker / "run"))


def test_unknown_config_argument_is_rejected():
    with pytest.raises(ValueError, match=r"unknown config argument 'methdo'; allowed: method"):
        fashion_mnist.get_config("methdo=lwf")


def test_resume_with_a_different_config_names_the_fields(idx_dir, tmp_path):
    train_and_evaluate(tiny_config(idx_dir, epochs=1), str(tmp_path))
    changed = tiny_config(idx_dir, epochs=1, **{"train.lr": 0.2, "seed": 3})
    with pytest.raises(ConfigError, match=r"(?s)different config.*seed: checkpoint has 0, config "
                                          r"has 3.*train.lr: checkpoint has 0.05"):
        train_and_evaluate(changed, str(tmp_path))
    # Runtime fields (logging, progress bars, devices) may change on resume.
    ok = tiny_config(idx_dir, epochs=1, **{"runtime.log_every_steps": 1})
    train_and_evaluate(ok, str(tmp_path))


def test_corrupt_checkpoint_is_reported(idx_dir, tmp_path):
    cfg = tiny_config(idx_dir, epochs=1)
    train_and_evaluate(cfg, str(tmp_path))
    ckpt_root = tmp_path / "checkpoints"
    latest = max(int(d) for d in os.listdir(ckpt_root) if d.isdigit())
    for root, _, files in os.walk(ckpt_root / str(latest)):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match=rf"checkpoint .*checkpoints/{latest} is corrupt"):
        train_and_evaluate(cfg, str(tmp_path))


class ExplodingFinetune(Finetune):
    """Fine-tune whose loss is NaN from the first step."""

    name = "exploding_finetune"

    def loss_fn(self, model, params, batch_stats, images, labels, ctx):
        loss, (stats, terms) = super().loss_fn(model, params, batch_stats, images, labels, ctx)
        blow = jnp.where(jnp.abs(params["head"]["bias"]).sum() > -1, jnp.nan, 0.0)
        return loss + blow * terms["ce"], (stats, terms | {"blow": blow})


def test_nan_loss_stops_the_run_naming_step_and_terms(idx_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, ExplodingFinetune.name, ExplodingFinetune)
    cfg = tiny_config(idx_dir, epochs=1)
    cfg.method.name = ExplodingFinetune.name
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at global step 0 \(task 0, "
                                                 r"epoch 0\): loss=nan, blow=nan, ce=[0-9.]+; no checkpoint"):
        train_and_evaluate(cfg, str(tmp_path))
