"""CLIP backbone: blocks compose to the wrapped model, loading round trip, adapters-only training,
PMI down to the token map with the progressive schedule, and the open-world 2-task run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dfcl_jax.models import clip  # noqa: E402

SPEC = clip.CLIPSpec(source=clip.TINY, bottleneck=8, templates=clip.TEMPLATES[:2])
NAMES = ("apple", "bicycle", "cloud", "dolphin", "elephant", "forest")


@pytest.fixture(scope="module")
def tiny():
    """(CLIPClassifier over 6 classes, its initial variables, images NHWC)."""
    model = clip.build_clip(SPEC, len(NAMES), NAMES)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    return model, model.init_variables(jax.random.key(1), x[:1]), x


def test_blocks_compose_to_get_image_features_exactly(tiny):
    model, variables, x = tiny
    hf, params, tok = clip.load_clip(clip.TINY)
    ref = np.asarray(hf.get_image_features(jnp.transpose(x, (0, 3, 1, 2)), params=params))
    ours = np.asarray(model.apply(variables, x, method=model.image_features))
    np.testing.assert_array_equal(ours, ref)  # eager vs eager: the very same operations
    # 2 layers -> [patch embedding, pre-transformer, 2 attention blocks, post].
    assert [type(b).__name__ for b in model.blocks] == [
        "PatchEmbedding", "PreTransformer", "ResidualAttentionBlock", "ResidualAttentionBlock",
        "PostBlock"]
    tokens = model.apply(variables, x, 0, 1, method=model.run_blocks)
    assert tokens.shape == (4, 4, 4, 32)  # 32 px / patch 8, hidden 32: the token map PMI inverts
    # Logits: exp(logit_scale) * normalised features . text prototypes of the class names.
    protos = clip.text_prototypes(hf, params, tok, NAMES, SPEC.templates)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-5)
    f = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    expected = np.exp(float(params["logit_scale"])) * f @ protos.T
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, rtol=1e-4,
                               atol=1e-4)


def test_text_prototypes_average_the_templates(tiny):
    hf, params, tok = clip.load_clip(clip.TINY)
    one = [clip.text_prototypes(hf, params, tok, NAMES[:2], (t,)) for t in SPEC.templates]
    both = clip.text_prototypes(hf, params, tok, NAMES[:2], SPEC.templates)
    mean = (one[0] + one[1]) / np.linalg.norm(one[0] + one[1], axis=1, keepdims=True)
    np.testing.assert_allclose(both, mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one[0], one[1])


def test_loading_path_round_trips_save_pretrained(tiny, tmp_path):
    """The path used for openai/clip-vit-base-patch16, exercised on a saved tiny model."""
    model, variables, x = tiny
    hf, params, tok = clip.load_clip(clip.TINY)
    hf.save_pretrained(str(tmp_path), params=params)
    tok.save_pretrained(str(tmp_path))
    loaded = clip.build_clip(clip.CLIPSpec(source=str(tmp_path), bottleneck=8,
                                           templates=SPEC.templates), len(NAMES), NAMES)
    v2 = loaded.init_variables(jax.random.key(1), x[:1])
    # Same module code and bit-identical weights: the same image features.
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                        {k: v for k, v in v2["params"].items() if k != "text_head"},
                        {k: v for k, v in variables["params"].items() if k != "text_head"})
    assert all(jax.tree.leaves(same))
    np.testing.assert_allclose(v2["params"]["text_head"]["prototypes"],
                               variables["params"]["text_head"]["prototypes"], atol=1e-6)
    assert loaded.blocks[0].config.to_dict() == model.blocks[0].config.to_dict()


def test_only_adapters_are_trainable_and_untrained_adapters_add_nothing(tiny):
    from dfcl_jax.train.state import FROZEN, parameter_groups

    model, variables, x = tiny
    labels = parameter_groups(variables["params"], model)
    flat = {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_flatten_with_path(labels)[0]}
    trainable = sorted(k for k, g in flat.items() if g != FROZEN)
    assert trainable and all("adapter" in k for k in trainable)
    assert any("router" in k for k in trainable) and any("'up'" in k for k in trainable)
    assert flat["['blocks_0']['patch_embedding']['kernel']"] == FROZEN
    # Non-zero adapters change the features; pretrained_variables switches them off again.
    # (Random, not constant: a constant shift of every channel is removed by the LayerNorms.)
    noise = lambda p, a: jnp.asarray(np.random.default_rng(len(jax.tree_util.keystr(p))).normal(
        0, 0.5, a.shape), a.dtype)
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, a: a + noise(p, a) if "adapter" in jax.tree_util.keystr(p) else a,
        variables["params"])
    v = {**variables, "params": bumped}
    f0 = model.apply(variables, x, method=model.image_features)
    assert float(jnp.abs(model.apply(v, x, method=model.image_features) - f0).max()) > 1e-3
    off = clip.pretrained_variables(v)
    np.testing.assert_array_equal(model.apply(off, x, method=model.image_features), f0)


# ------------------------------------------------------------------------------ PMI on CLIP
def reference_statistics(model, variables, images):
    """Block-input statistics of `images` put into the variables, as the clip_pmi source does."""
    from dfcl_jax.methods.clip_pmi import merge_input_statistics

    @jax.jit
    def block_input_moments(variables, images):
        h = model.apply(variables, images, 0, 1, method=model.run_blocks)
        moments = []
        for i in range(1, len(model.blocks) - 1):
            axes = tuple(range(h.ndim - 1))
            moments.append((h.mean(axes), jnp.square(h).mean(axes)))
            h = model.apply(variables, h, i, i + 1, method=model.run_blocks)
        return moments

    moments = jax.device_get(block_input_moments(variables, images))
    return {**variables, "batch_stats": merge_input_statistics(variables["batch_stats"], moments, 1.0)}


def test_pmi_inverts_tiny_clip_to_the_token_map_with_the_progressive_schedule(tiny):
    from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter

    model, variables, _ = tiny
    real = jax.random.uniform(jax.random.key(3), (8, 32, 32, 3), minval=-1.5, maxval=1.5)
    variables = reference_statistics(model, variables, real)
    z = jax.jit(lambda v, x: model.apply(v, x, method=model.features))(variables, real)
    cfg = PMIConfig(block_steps=4, block_lr=0.1, first_block=1, first_block_steps=4,
                    progressive=(2,), progressive_at=(2,), rf_per_block=0.002,
                    rf_scale_by_blocks=False, input_prior=False, full_steps=4, full_lr=0.1,
                    full_schedule="cosine", full_cosine_steps=2000, full_warmup=0,
                    full_milestones=(), full_bn=0.002, full_tv=0.005, micro_batch=8, chunk=2,
                    unroll=False)
    inv = PMIInverter(model, cfg)
    assert inv.progressive_stages((8, 4, 4, 32)) == [((8, 2, 2, 32), 2), ((8, 4, 4, 32), 2)]
    res = inv.invert(variables, z, (4, 4, 32), jax.random.key(0), progress=False)
    assert res.images.shape == (8, 4, 4, 32)  # token maps, not images
    assert res.block_curves[0] is None and len(res.block_curves[1]) == 4
    for i in range(1, len(model.blocks)):
        kept = res.block_terms[i]["kept"]
        kept = kept["mse"] + inv.a_rf * (kept["bn"] + kept["input"])
        assert kept < res.block_curves[i][0], f"block {i}: {kept} !< {res.block_curves[i][0]}"
    # Each resolution stage of the token-map block (2x2, then 4x4) lowers its own loss, and the
    # full-model phase (feature MSE + KL on the attention-block inputs + TV) lowers its loss.
    c = res.block_curves[1]
    assert c[1] < c[0] and c[3] < c[2]
    assert res.full_curve[-1] < res.full_curve[0]
    # The KL term sees the reference statistics: tokens far from them cost more.
    f_loss = lambda x: inv.full_loss(variables, x, z, (1.0, 1.0))[1][1]["bn"]
    assert float(f_loss(res.images)) < float(f_loss(res.images * 3.0 + 2.0))
    # A second inversion (new weights, same shapes) compiles nothing new.
    other = {**variables, "params": jax.tree.map(lambda a: a * 1.01, variables["params"])}
    inv.invert(other, z[::-1], (4, 4, 32), jax.random.key(1), progress=False)
    assert inv.traces == {"block_4": 1, "block_3": 1, "block_2": 1, "block_1_at_2": 1,
                          "block_1": 1, "full": 1}


# ----------------------------------------------------------------- continual, open world
def clip_run_config(idx_dir):
    from experiments import cifar100_clip_openworld

    cfg = cifar100_clip_openworld.get_config("smoke")
    cfg.data.update({"source": "idx", "name": "stand_in_idx", "data_dir": idx_dir,
                     "stand_in": "", "num_classes": 10, "image_size": 28, "mean": (0.5,),
                     "std": (0.5,), "train_per_class": 8})
    cfg.model.clip.templates = SPEC.templates[:1]
    cfg.augment.crop_padding = 2
    cfg.runtime.progress = False
    return cfg


def test_two_task_open_world_run_trains_only_adapters(idx_dir, tmp_path):
    from dfcl_jax.methods.base import TaskInfo
    from dfcl_jax.train.loop import ContinualRun, build_experiment
    from dfcl_jax.train.mesh import put_replicated

    exp = build_experiment(clip_run_config(idx_dir), str(tmp_path))
    run = ContinualRun(exp)
    before = jax.device_get(run.run_state.train.params)
    after_task = []
    end_task = exp.method.end_task

    def recording_end_task(state, task, data):
        after_task.append(jax.device_get(state.train.params))
        return end_task(state, task, data)

    exp.method.end_task = recording_end_task
    results = run.run()
    after = jax.device_get(run.run_state.train.params)
    assert results["tasks_done"] == 2 and len(results["accuracy_matrix"][1]) == 2
    leaves = lambda t: {jax.tree_util.keystr(p): v
                        for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    b, a1, a = leaves(before), leaves(after_task[0]), leaves(after)
    frozen = [k for k in b if "adapter" not in k]
    assert frozen and all(np.array_equal(b[k], a[k]) for k in frozen)
    adapters = [k for k in b if "adapter" in k and k.endswith("['up']")]
    assert all(not np.array_equal(b[k], a[k]) for k in adapters)
    # The open-world task (no real data) still trained the adapters, from pseudo-data.
    assert any(not np.array_equal(a1[k], a[k]) for k in adapters)
    extras = jax.device_get(run.run_state.extras)
    assert sorted(extras) == ["classes", "openworld", "synthetic"] and extras["openworld"] == 1.0
    syn = extras["synthetic"]
    # 1 sample per old class (5) + 2 projected per class of the last task (5).
    n = int(syn["count"])
    assert n == 15 and syn["tokens"].shape[1:] == (4, 4, 32)
    assert np.bincount(syn["labels"][:n]).tolist() == [1] * 5 + [2] * 5
    assert np.isfinite(syn["tokens"][:n]).all() and syn["tokens"][:n].std() > 0.01
    # In the open-world task the update does not depend on the real images at all: the compiled
    # train step of the last task, fed two different real batches, gives bit-identical weights
    # (and, as a control, different ones once the open-world flag is off).
    step, info = run.train_step("main"), TaskInfo.make(5, 10)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8) for _ in range(2)]
    labels = jnp.asarray(np.arange(16) % 5 + 5, jnp.int32)

    def updated(images, openworld):
        state = run.run_state.replace(extras={**run.run_state.extras,
                                              "openworld": jnp.asarray(openworld, jnp.float32)})
        state = put_replicated(exp.mesh, jax.tree.map(jnp.copy, state))  # as the loop places it
        new, _ = step(state, jnp.asarray(images), labels, info, jax.random.key(0))
        return leaves(jax.device_get(new.train.params))

    same = [updated(x, 1.0) for x in batches]
    assert all(np.array_equal(same[0][k], same[1][k]) for k in adapters)
    differ = [updated(x, 0.0) for x in batches]
    assert any(not np.array_equal(differ[0][k], differ[1][k]) for k in adapters)


def test_clip_config_errors_name_the_field(idx_dir, tmp_path):
    from dfcl_jax.train.validate import ConfigError, validate_config

    cfg = clip_run_config(idx_dir)
    cfg.method.clip_inversion.progressive_at = (2, 3)
    with pytest.raises(ConfigError, match="config.method.clip_inversion.progressive"):
        validate_config(cfg)
    cfg = clip_run_config(idx_dir)
    cfg.method.clip_inversion.first_block = 0
    with pytest.raises(ConfigError, match="config.method.clip_inversion.first_block=0; allowed: 1"):
        validate_config(cfg)
    cfg = clip_run_config(idx_dir)
    cfg.method.projection.top_k = 0
    with pytest.raises(ConfigError, match="config.method.projection.top_k=0"):
        validate_config(cfg)
    cfg = clip_run_config(idx_dir)
    cfg.method.synthesis = "pmi"  # image-space PMI cannot feed the token-space learner
    with pytest.raises(ConfigError, match="config.method.synthesis='pmi'.*allowed: clip_pmi"):
        validate_config(cfg)


def test_vit_b16_checkpoint_layout_maps_onto_15_blocks():
    """The real architecture (shapes only, no weights): every parameter of a ViT-B/16
    `FlaxCLIPModel` vision tower lands in the block tree with the block's own shape."""
    from transformers import CLIPConfig, FlaxCLIPModel

    cfg = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224}, projection_dim=512)
    hf = FlaxCLIPModel(cfg, _do_init=False)
    hf_shapes = jax.eval_shape(lambda k: hf.init_weights(k, hf.input_shape), jax.random.key(0))
    blocks = clip.hf_to_block_params(hf_shapes, 12)
    model = clip.CLIPClassifier(blocks=tuple(clip.clip_blocks(cfg.vision_config, 512)),
                                num_classes=100, projection_dim=512)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 224, 224, 3)), False),
                               jax.random.key(0))
    ours = variables["params"]
    assert len(model.blocks) == 15 and len(blocks) == 15
    flat = lambda t: {jax.tree_util.keystr(p): x.shape
                      for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
    mapped, target = flat(blocks), flat({k: v for k, v in ours.items() if k != "text_head"})
    assert all(target[k] == s for k, s in mapped.items())
    assert sorted(k for k in target if k not in mapped) == sorted(
        k for k in target if "adapter" in k)  # only the adapters are new
    tokens = jax.eval_shape(lambda v, x: model.apply(v, x, 0, 1, method=model.run_blocks),
                            variables, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert tokens.shape == (2, 14, 14, 768)  # the token map PMI inverts on CLIP ViT-B/16
