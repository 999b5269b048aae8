"""Backend-aware `unroll`/`chunk` ("auto"): resolution per platform, validation, config overrides."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from dfcl_jax.inversion import DeepInversionConfig, invert
from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
from dfcl_jax.inversion.loop_defaults import resolve_loop_options, with_loop_defaults
from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter
from dfcl_jax.methods import get_method, method_config
from dfcl_jax.models.blocks import BNMoments
from dfcl_jax.models.generator import Generator
from dfcl_jax.models.resnet import cifar_resnet


@pytest.mark.parametrize("platform, expected", [("cpu", (True, 10)), ("gpu", (False, 50)),
                                                ("tpu", (False, 50))])
def test_auto_resolves_per_platform(platform, expected):
    assert resolve_loop_options("auto", "auto", platform) == expected
    # Explicit values win over the backend's default, field by field.
    assert resolve_loop_options(False, 7, platform) == (False, 7)
    assert resolve_loop_options("auto", 3, platform) == (expected[0], 3)
    assert resolve_loop_options(True, "auto", platform) == (True, expected[1])
    cfg = with_loop_defaults(PMIConfig(), platform)
    assert (cfg.unroll, cfg.chunk) == expected


def test_the_default_platform_is_jaxs_backend():
    assert resolve_loop_options("auto", "auto") == resolve_loop_options(
        "auto", "auto", jax.default_backend())


@pytest.mark.parametrize("unroll, chunk, message", [
    ("maybe", "auto", r"pmi.unroll='maybe'; allowed: True, False, 'auto'"),
    (1, "auto", r"pmi.unroll=1; allowed: True, False, 'auto'"),
    ("auto", 0, r"pmi.chunk=0; allowed: a positive integer or 'auto'"),
    ("auto", True, r"pmi.chunk=True; allowed: a positive integer or 'auto'"),
    ("auto", 2.5, r"pmi.chunk=2.5; allowed: a positive integer or 'auto'"),
    ("auto", "long", r"pmi.chunk='long'; allowed: a positive integer or 'auto'"),
])
def test_bad_values_are_named_with_the_allowed_ones(unroll, chunk, message):
    with pytest.raises(ValueError, match=message):
        resolve_loop_options(unroll, chunk, "cpu", field="pmi")
    with pytest.raises(ValueError, match=message):
        PMIConfig(unroll=unroll, chunk=chunk).validate()


@pytest.mark.parametrize("name, block", [("pmi", "pmi"), ("abd", "generator")])
def test_method_configs_default_to_auto_and_name_the_config_field(name, block):
    cfg = method_config(name)
    assert (cfg[block].unroll, cfg[block].chunk) == ("auto", "auto")
    cfg[block].unroll = "maybe"
    with pytest.raises(ValueError, match=rf"config.method.{block}.unroll='maybe'; allowed: "):
        get_method(cfg)
    # The fields take a bool or an int in place of "auto" (no ConfigDict type lock on str).
    cfg[block].update({"unroll": False, "chunk": 50})
    get_method(cfg)
    cfg[block].chunk = 0
    with pytest.raises(ValueError, match=rf"config.method.{block}.chunk=0; allowed: "):
        get_method(cfg)


def test_command_line_overrides_parse_to_bool_and_int():
    fv = flags.FlagValues()
    argv = ["prog", "--config=experiments/cifar100_pmi.py:smoke", "--config.method.pmi.unroll=False",
            "--config.method.pmi.chunk=25"]
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.method.pmi.unroll is False
    assert fv.config.method.pmi.chunk == 25
    assert fv.config.method.feature_model.encoder_epochs == 2  # the smoke config was read


def test_auto_runs_the_numbers_of_the_explicit_cpu_setting():
    """On CPU, "auto" is unroll=True, chunk=10: the same loops, identical results."""
    assert jax.default_backend() == "cpu"
    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    assert PMIInverter(model, PMIConfig()).cfg == PMIInverter(model, PMIConfig(unroll=True,
                                                                                chunk=10)).cfg
    trainer = GeneratorTrainer(Generator(z_dim=8, width=4), model, GeneratorConfig())
    assert (trainer.cfg.unroll, trainer.cfg.chunk) == (True, 10)

    def teacher(x):  # logits and the moments of one "BatchNorm" input
        m, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
        return jnp.mean(x, (1, 2)) @ jnp.ones((3, 4)), [BNMoments(m, var, jnp.zeros(3), jnp.ones(3))]

    runs = [invert(teacher, labels=jnp.arange(4), image_shape=(8, 8, 3), progress=False,
                   config=DeepInversionConfig(steps=15, **loop))  # chunks of 10 and 5
            for loop in ({}, {"unroll": True, "chunk": 10}, {"unroll": False, "chunk": 15})]
    np.testing.assert_array_equal(runs[0].curve, runs[1].curve)
    np.testing.assert_array_equal(np.asarray(runs[0].images), np.asarray(runs[1].images))
    assert runs[0].curve.shape == (15,)
    np.testing.assert_allclose(runs[0].curve, runs[2].curve, rtol=1e-4)  # rolled: float rounding
