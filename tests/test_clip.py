"""CLIP backbone: our towers equal transformers' FlaxCLIPModel (golden), the Hugging Face file
formats round-trip and fail clearly, blocks compose to the towers, adapters-only training, PMI down
to the token map with the progressive schedule, and the open-world 2-task run."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from dfcl_jax.models import clip  # noqa: E402
from dfcl_jax.models import clip_checkpoint as ckpt  # noqa: E402
from dfcl_jax.models.clip_towers import CLIPModel, clip_config_from_dict, clip_param_shapes  # noqa: E402

SPEC = clip.CLIPSpec(source=clip.TINY, bottleneck=8, templates=clip.TEMPLATES[:2])
NAMES = ("apple", "bicycle", "cloud", "dolphin", "elephant", "forest")
PROMPTS = ("a photo of a apple.", "A bad photo of the   large Dolphin's fin!",
           "a rendering of a sea lion, 3 times.", "a close-up photo of a " + "very " * 40 + "cloud.")


@pytest.fixture(scope="module")
def tiny():
    """(CLIPClassifier over 6 classes, its initial variables, images NHWC)."""
    model = clip.build_clip(SPEC, len(NAMES), NAMES)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    return model, model.init_variables(jax.random.key(1), x[:1]), x


def tower_image_features(pretrained, x):
    model = CLIPModel(pretrained.config)
    return np.asarray(model.apply({"params": pretrained.params}, x, method=model.image_features))


def tower_text_features(pretrained, ids, mask):
    model = CLIPModel(pretrained.config)
    return np.asarray(model.apply({"params": pretrained.params}, ids, mask,
                                  method=model.text_features))


# --------------------------------------------------------------- golden: transformers 4.x
def transformers_flax_clip():
    """transformers' (FlaxCLIPModel, CLIPConfig); skips where transformers has no Flax CLIP."""
    transformers = pytest.importorskip(
        "transformers", reason="the golden test needs transformers>=4.57,<5 (pip install -e .[dev])")
    if not hasattr(transformers, "FlaxCLIPModel"):
        pytest.skip(f"transformers {transformers.__version__} has no FlaxCLIPModel (removed in 5); "
                    "the golden test needs transformers>=4.57,<5")
    return transformers.FlaxCLIPModel, transformers.CLIPConfig


def random_clip_params(config, seed: int):
    """Every parameter random (biases and LayerNorms too), so a mis-mapped tensor shows."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        noise = rng.standard_normal(s.shape).astype(np.float32)
        if path[-1] == "scale":
            return 1.0 + 0.1 * noise
        return (0.1 if path[-1] in ("bias", "logit_scale") else 0.2) * noise + (
            2.0 if path[-1] == "logit_scale" else 0.0)

    flat = traverse_util.flatten_dict(clip_param_shapes(config))
    return traverse_util.unflatten_dict({p: draw(p, s) for p, s in flat.items()})


def set_eos_token_id(directory, eos: int):
    with open(os.path.join(directory, "config.json")) as f:
        raw = json.load(f)
    raw["text_config"]["eos_token_id"] = eos
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(raw, f)


def test_towers_equal_transformers_flax_clip_loaded_from_the_same_safetensors(tmp_path):
    """Golden test against transformers 4.57's FlaxCLIPModel, float32, rtol = atol = 1e-5
    (measured: bit-identical). One tiny random checkpoint in the Hugging Face formats
    (config.json, PyTorch-layout model.safetensors, tokenizer.json) is read by our loader and by
    transformers' own PyTorch-to-Flax converter (`from_pretrained`, no torch needed for
    safetensors); the parameter trees, image features, text features and image-text logits must
    agree. Text pooling is checked under the three rules' inputs: EOS = the last id (tokenized
    prompts), the legacy `eos_token_id == 2` (argmax of the ids) and another id (its first
    position), on a hand-made row where the rules pick different positions."""
    FlaxCLIPModel, HFCLIPConfig = transformers_flax_clip()
    config = ckpt.tiny_clip_config()
    d = str(tmp_path)
    ckpt.save_clip(d, config, random_clip_params(config, seed=7))
    ckpt.clip_tokenizer(ckpt.tiny_vocab(), []).save(os.path.join(d, "tokenizer.json"))
    ours = ckpt.load_clip_directory(d)
    hf = FlaxCLIPModel.from_pretrained(d)
    flat = lambda t: {k: np.asarray(v) for k, v in traverse_util.flatten_dict(t).items()}
    theirs, mine = flat(hf.params), flat(ours.params)
    assert sorted(theirs) == sorted(mine)
    assert all(np.array_equal(theirs[k], mine[k]) for k in mine)

    tol = {"rtol": 1e-5, "atol": 1e-5}
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(tower_image_features(ours, x),
                               np.asarray(hf.get_image_features(x.transpose(0, 3, 1, 2))), **tol)
    ids, mask = ckpt.encode_prompts(ours.tokenizer, PROMPTS)
    model = CLIPModel(ours.config)
    logits = model.apply({"params": ours.params}, x, ids, mask)
    ref = hf(input_ids=ids, pixel_values=x.transpose(0, 3, 1, 2), attention_mask=mask)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref.logits_per_image), **tol)

    row = np.full((1, ids.shape[1]), 513, np.int32)
    row[0, :6] = [512, 5, 2, 300, 9, 513]  # argmax -> 5, first 2 -> 2, first 300 -> 3
    row_mask = (np.arange(ids.shape[1]) < 6).astype(np.int32)[None]
    ids, mask = np.concatenate([ids, row]), np.concatenate([mask, row_mask])
    pooled_rows = []
    for eos in (513, 2, 300):
        set_eos_token_id(d, eos)
        variant = ckpt.load_clip_directory(d)
        assert variant.config.text.eos_token_id == eos
        hf_variant = FlaxCLIPModel(HFCLIPConfig.from_pretrained(d), _do_init=False)
        got = tower_text_features(variant, ids, mask)
        np.testing.assert_allclose(got, np.asarray(
            hf_variant.get_text_features(ids, mask, params=hf.params)), **tol)
        pooled_rows.append(got[-1])
    assert not np.allclose(pooled_rows[1], pooled_rows[2])  # the row tells the rules apart
    np.testing.assert_allclose(pooled_rows[0], pooled_rows[1], **tol)  # both at the last id


def test_tokenizer_json_gives_clip_tokenizer_ids(tmp_path):
    """Our tokenizer.json pipeline (the tiny byte-level vocabulary) gives the ids and attention
    masks of transformers' CLIPTokenizer on the same vocabulary, padded/truncated to 77."""
    transformers = pytest.importorskip("transformers", reason="needs transformers' CLIPTokenizer")
    d = str(tmp_path)
    vocab = ckpt.tiny_vocab()
    ckpt.clip_tokenizer(vocab, []).save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    prompts = [*PROMPTS, *(t.format(n) for n in NAMES for t in clip.TEMPLATES)]
    ids, mask = ckpt.encode_prompts(ckpt.load_tokenizer(d), prompts)
    ref = transformers.CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ids.shape == (len(prompts), 77) and ids[3, -1] == vocab[ckpt.EOS]  # truncated, ends EOS


# ------------------------------------------------------------------------- our own model
def test_blocks_compose_to_the_towers_image_features_exactly(tiny):
    model, variables, x = tiny
    pretrained = clip.load_clip(clip.TINY)
    ref = tower_image_features(pretrained, x)
    ours = np.asarray(model.apply(variables, x, method=model.image_features))
    np.testing.assert_array_equal(ours, ref)  # eager vs eager: the very same operations
    # 2 layers -> [patch embedding, pre-transformer, 2 attention blocks, post].
    assert [type(b).__name__ for b in model.blocks] == [
        "PatchEmbedding", "PreTransformer", "ResidualAttentionBlock", "ResidualAttentionBlock",
        "PostBlock"]
    tokens = model.apply(variables, x, 0, 1, method=model.run_blocks)
    assert tokens.shape == (4, 4, 4, 32)  # 32 px / patch 8, hidden 32: the token map PMI inverts
    # Logits: exp(logit_scale) * normalised features . text prototypes of the class names.
    protos = clip.text_prototypes(pretrained, NAMES, SPEC.templates)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-5)
    f = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    expected = np.exp(float(pretrained.params["logit_scale"])) * f @ protos.T
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected, rtol=1e-4,
                               atol=1e-4)


def test_text_prototypes_average_the_templates(tiny):
    pretrained = clip.load_clip(clip.TINY)
    one = [clip.text_prototypes(pretrained, NAMES[:2], (t,)) for t in SPEC.templates]
    both = clip.text_prototypes(pretrained, NAMES[:2], SPEC.templates)
    mean = (one[0] + one[1]) / np.linalg.norm(one[0] + one[1], axis=1, keepdims=True)
    np.testing.assert_allclose(both, mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one[0], one[1])


def test_real_format_directory_round_trips(tiny, tmp_path):
    """The path used for openai/clip-vit-base-patch16's snapshot, on a written tiny model: the
    files are the Hugging Face formats, and save -> load gives identical weights and features."""
    model, variables, x = tiny
    d = ckpt.write_tiny_clip(str(tmp_path / "tiny"))
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "tokenizer.json"]
    with safe_open(os.path.join(d, "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    tensors = load_file(os.path.join(d, "model.safetensors"))
    assert tensors["vision_model.embeddings.patch_embedding.weight"].shape == (32, 3, 8, 8)
    assert tensors["vision_model.encoder.layers.1.mlp.fc1.weight"].shape == (64, 32)  # (out, in)
    assert tensors["visual_projection.weight"].shape == (16, 32)
    assert tensors["text_model.embeddings.token_embedding.weight"].shape == (514, 32)
    assert tensors["logit_scale"].shape == ()
    with open(os.path.join(d, "config.json")) as f:
        raw = json.load(f)
    assert raw["vision_config"]["patch_size"] == 8 and raw["text_config"]["eos_token_id"] == 513
    loaded = clip.build_clip(clip.CLIPSpec(source=d, bottleneck=8, templates=SPEC.templates),
                             len(NAMES), NAMES)
    v2 = loaded.init_variables(jax.random.key(1), x[:1])
    # Same module code and bit-identical weights: the same image features.
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), v2["params"], variables["params"])
    assert all(jax.tree.leaves(same))
    assert loaded.blocks[0].config == model.blocks[0].config
    # Our writer and reader are inverses: save what was loaded, load it again.
    first = ckpt.load_clip_directory(d)
    again = str(tmp_path / "again")
    ckpt.save_clip(again, first.config, first.params)
    shutil.copy(os.path.join(d, "tokenizer.json"), again)
    second = ckpt.load_clip_directory(again)
    assert second.config == first.config
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                            first.params, second.params)))
    np.testing.assert_array_equal(tower_image_features(second, x), tower_image_features(first, x))


def test_bad_checkpoints_fail_naming_the_tensor_or_file(tmp_path, monkeypatch):
    d = ckpt.write_tiny_clip(str(tmp_path / "tiny"))
    path = os.path.join(d, "model.safetensors")
    good = load_file(path)
    config = ckpt.load_clip_directory(d).config
    bad = {**good, "vision_model.encoder.layers.1.self_attn.q_proj.weight": np.zeros((32, 31),
                                                                                      np.float32)}
    with pytest.raises(ValueError, match=r"mis-shaped tensors: vision_model\.encoder\.layers\.1\."
                       r"self_attn\.q_proj\.weight \(32, 31\) \(expected \(32, 32\)\)"):
        ckpt.params_from_state_dict(bad, config)
    bad = {k: v for k, v in good.items() if k != "text_projection.weight"}
    bad["text_model.extra.weight"] = np.zeros((2,), np.float32)
    save_file(bad, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.safetensors does not match config\.json's CLIP "
                       r"architecture; missing tensors: text_projection\.weight; unexpected "
                       r"tensors: text_model\.extra\.weight"):
        ckpt.load_clip_directory(d)
    with open(path, "rb") as f:
        head = f.read(100)
    with open(path, "wb") as f:
        f.write(head)  # truncated
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors as safetensors"):
        ckpt.load_clip_directory(d)
    os.remove(os.path.join(d, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="lacks tokenizer.json"):
        ckpt.load_clip_directory(d)
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="'openai/clip-vit-base-patch16' is not a local directory "
                       "and could not be fetched"):
        clip.load_clip("openai/clip-vit-base-patch16")


def test_config_json_parsing_follows_hugging_face():
    cfg = clip_config_from_dict({"vision_config": {"patch_size": 32, "hidden_size": 64,
                                                   "num_attention_heads": 4},
                                 "vision_config_dict": {"patch_size": 16}})
    assert cfg.vision.patch_size == 16 and cfg.vision.hidden_size == 64  # *_config_dict wins
    assert cfg.text.vocab_size == 49408 and cfg.projection_dim == 512  # Hugging Face defaults
    assert cfg.logit_scale_init == pytest.approx(2.6592)
    with pytest.raises(ValueError, match="text_config.hidden_act='swiglu'; allowed: quick_gelu"):
        clip_config_from_dict({"text_config": {"hidden_act": "swiglu"}})
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_attention_heads"):
        clip_config_from_dict({"vision_config": {"hidden_size": 100}})


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


# The layout of openai/clip-vit-base-patch16's config.json (the keys that matter; others, like
# "id2label", are ignored): the legacy eos_token_id 2, sizes not listed take the defaults.
VIT_B16_CONFIG_JSON = {
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
    "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
    "text_config": {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_size": 512,
                    "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
                    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-05, "projection_dim": 512, "id2label": {"0": "LABEL_0"},
                    "model_type": "clip_text_model"},
    "vision_config": {"patch_size": 16, "projection_dim": 512, "dropout": 0.0,
                      "model_type": "clip_vision_model"},
}


def test_vit_b16_checkpoint_layout_maps_onto_15_blocks():
    """The real architecture (shapes only, no weights): ViT-B/16's config.json gives the
    checkpoint's tensor names and PyTorch shapes, and every vision parameter lands in the block
    tree with the block's own shape."""
    cfg = clip_config_from_dict(VIT_B16_CONFIG_JSON)
    assert (cfg.vision.hidden_size, cfg.vision.image_size, cfg.text.eos_token_id) == (768, 224, 2)
    shapes = clip_param_shapes(cfg)
    names = {ckpt.torch_name(p): ckpt.torch_shape(p[-1], s.shape)
             for p, s in traverse_util.flatten_dict(shapes).items()}
    assert len(names) == 3 + 2 + 12 * 16 + 2 + (2 + 12 * 16 + 2) + 3  # 398 tensors
    assert names["vision_model.embeddings.patch_embedding.weight"] == (768, 3, 16, 16)
    assert names["vision_model.embeddings.position_embedding.weight"] == (197, 768)
    assert names["vision_model.encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    assert names["vision_model.pre_layrnorm.weight"] == (768,)
    assert names["text_model.embeddings.token_embedding.weight"] == (49408, 512)
    assert names["text_model.final_layer_norm.bias"] == (512,)
    assert names["visual_projection.weight"] == (512, 768)
    assert names["text_projection.weight"] == (512, 512) and names["logit_scale"] == ()
    blocks = clip.hf_to_block_params(shapes, 12)
    model = clip.CLIPClassifier(blocks=tuple(clip.clip_blocks(cfg.vision, 512)),
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
