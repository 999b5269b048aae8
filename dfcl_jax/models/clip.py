"""CLIP ViT image encoder (our `clip_towers`, Hugging Face CLIP's weights) as an ordered list of
blocks, with text prototypes as the classifier and mixture-of-adapters in every transformer block
(methods.md 1.3).

Blocks: `[patch embedding, pre-transformer (class token + positional embedding + ln_pre),
residual attention block x num_layers, post (ln_post on CLS + visual projection)]`; composed they
are exactly the vision tower's `CLIPModel.image_features` (the adapters' up-projections start at zero,
so an untrained adapter adds exactly 0). Each residual attention block carries an `InputStats`
probe: reference per-channel mean/var of its input (over images and tokens), collected from real
data while a task lasts, reported as `BNMoments` so PMI's BN-KL matches them (the CLIP variant's
"KL on the inputs of every residual attention block").

Logits are `exp(logit_scale) * normalize(image_features) . t_c` with `t_c` the class prototype:
the CLIP text embedding of prompt templates, averaged and L2-normalised.

The towers are ours (`clip_towers`, Hugging Face CLIP's parameter names); `load_clip(source)`
(`clip_checkpoint`) reads a Hugging Face snapshot directory (config.json, model.safetensors,
tokenizer.json), a hub id (`openai/clip-vit-base-patch16`, downloaded once), or `"tiny"`: a tiny
random model of the same architecture written in those formats (tests, smoke runs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dfcl_jax.models.batchnorm import BN_STATS
from dfcl_jax.models.blocks import BlockClassifier
from dfcl_jax.models.clip_checkpoint import TINY, PretrainedCLIP, encode_prompts, load_clip
from dfcl_jax.models.clip_towers import MLP, Attention, CLIPConfig, CLIPModel, VisionConfig

# CLIP's own normalisation of [0, 1] pixels (CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
             "a photo of the small {}.", "a rendering of a {}.", "a cropped photo of the {}.",
             "a close-up photo of a {}.", "a bright photo of a {}.")


# ------------------------------------------------------------------------------------ blocks
class InputStats(nn.Module):
    """Reference per-channel mean/var of a block input; reports (batch mean, batch var, ref mean,
    ref var) to `bn_stats` when that collection is mutable (and `in_loss`). Identity otherwise."""

    in_loss: bool = True

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((d,), jnp.float32))
        if self.in_loss and self.is_mutable_collection(BN_STATS) and not self.is_initializing():
            axes = tuple(range(x.ndim - 1))
            m = jnp.mean(x, axes)
            self.sow(BN_STATS, "moments", (m, jnp.mean(jnp.square(x - m), axes), mean.value,
                                           var.value))
        return x


class PatchEmbedding(nn.Module):
    """Block 0: the patch-embedding convolution (images of another size are resized bilinearly to
    the model's `image_size` first); output: the token map (B, H/p, W/p, D)."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x, train: bool = False):
        s, p = self.config.image_size, self.config.patch_size
        if x.shape[-1] == 1:  # grayscale datasets (Fashion-MNIST): replicate to RGB
            x = jnp.repeat(x, 3, axis=-1)
        if x.shape[1:3] != (s, s):
            x = jax.image.resize(x, (x.shape[0], s, s, x.shape[3]), "bilinear")
        return nn.Conv(self.config.hidden_size, (p, p), (p, p), padding="VALID", use_bias=False,
                       name="patch_embedding")(x)


class PreTransformer(nn.Module):
    """Block 1: flatten the token map, prepend the class token, add positional embeddings, ln_pre."""

    config: VisionConfig

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        InputStats(in_loss=False, name="input_stats")(tokens)  # initialises the token-map solve
        b, d = tokens.shape[0], tokens.shape[-1]
        x = jnp.reshape(tokens, (b, -1, d))
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (d,))
        x = jnp.concatenate([jnp.tile(cls[None, None], (b, 1, 1)), x], axis=1)
        pos = nn.Embed(x.shape[1], d, name="position_embedding")
        x = x + pos(jnp.arange(x.shape[1])[None])
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, name="pre_layrnorm")(x)


class MixtureOfAdapters(nn.Module):
    """Router + `num_experts` bottleneck adapters (down, ReLU, up; up zero-initialised), top-k
    gating per token (MoE-Adapters style). Output 0 until trained."""

    num_experts: int = 4
    bottleneck: int = 64
    top_k: int = 2

    @nn.compact
    def __call__(self, x):
        d, e = x.shape[-1], self.num_experts
        logits = nn.Dense(e, name="router")(x)
        k = min(self.top_k, e)
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        gates = jax.nn.softmax(jnp.where(logits >= kth, logits, -jnp.inf), axis=-1)
        down = self.param("down", nn.initializers.lecun_normal(batch_axis=(0,)), (e, d, self.bottleneck))
        up = self.param("up", nn.initializers.zeros, (e, self.bottleneck, d))
        h = jax.nn.relu(jnp.einsum("...d,edr->...er", x, down))
        return jnp.einsum("...er,erd,...e->...d", h, up, gates)


class ResidualAttentionBlock(nn.Module):
    """One CLIP encoder layer (the tower's modules, same names) with a mixture of adapters
    parallel to the MLP: x + attn(ln1 x); then h + mlp(ln2 h) + adapters(ln2 h)."""

    config: VisionConfig
    num_experts: int = 4
    bottleneck: int = 64
    top_k: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = InputStats(name="input_stats")(x)
        eps = self.config.layer_norm_eps
        h = nn.LayerNorm(epsilon=eps, name="layer_norm1")(x)
        x = x + Attention(self.config, name="self_attn")(h)
        h = nn.LayerNorm(epsilon=eps, name="layer_norm2")(x)
        adapted = MixtureOfAdapters(self.num_experts, self.bottleneck, self.top_k, name="adapter")(h)
        return x + (MLP(self.config, name="mlp")(h) + adapted)


class PostBlock(nn.Module):
    """Last block: ln_post on the class token, then the visual projection (image features)."""

    config: VisionConfig
    projection_dim: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.LayerNorm(epsilon=self.config.layer_norm_eps, name="post_layernorm")(x[:, 0, :])
        return nn.Dense(self.projection_dim, use_bias=False, name="visual_projection")(h)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), eps))


class CLIPClassifier(BlockClassifier):
    """CLIP image encoder as blocks; features are L2-normalised image embeddings and logits are
    `exp(logit_scale) * features . prototypes` (`params["text_head"]`, frozen)."""

    projection_dim: int = 512
    source: str = TINY  # key of the pretrained weights in `_PRETRAINED` (see `build_clip`)
    pool: str = "none"

    def setup(self):
        self.text_head = TextHead(self.num_classes, self.projection_dim, name="text_head")

    def __call__(self, x, train: bool = False):
        return self.classify(self.features(x, train))

    def pool_features(self, h):
        return l2_normalize(h)

    def classify(self, features):
        return self.text_head(features)

    def features_and_logits(self, x, train: bool = False):
        f = self.features(x, train)
        return f, self.classify(f)

    def features_and_logits_from(self, x, start: int, train: bool = False):
        f = self.features_from(x, start, train)
        return f, self.classify(f)

    def image_features(self, x):
        """Unnormalised image embeddings: `CLIPModel.image_features` (NHWC input)."""
        return self.run_blocks(x, 0, len(self.blocks))

    # -------------------------------------------------------------- hooks used outside Flax
    def init_variables(self, rng, sample_images):
        """Initial variables without running the model (shapes from `eval_shape`): the CLIP
        weights and text prototypes of the pretrained model, adapters with LeCun-normal router
        and down-projections and zero up-projections, input statistics N(0, 1)."""
        shapes = jax.eval_shape(lambda r, x: self.init(r, x, False), rng, sample_images)
        pre = _PRETRAINED[self.source]
        seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
        gen = np.random.default_rng(seed)

        def fresh(path, leaf):
            name = str(getattr(path[-1], "key", path[-1]))
            if name in ("up", "bias", "mean") or len(leaf.shape) < 2:  # (or overwritten below)
                return jnp.zeros(leaf.shape, leaf.dtype)
            if name == "var":
                return jnp.ones(leaf.shape, leaf.dtype)
            fan_in = leaf.shape[-2]  # router kernel (D, E), down (E, D, r)
            return jnp.asarray(gen.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

        variables = jax.tree_util.tree_map_with_path(fresh, shapes)
        params = dict(variables["params"])
        for name, tree in pre["blocks"].items():
            params[name] = _merge(params[name], tree)
        params["text_head"] = {"prototypes": jnp.asarray(pre["prototypes"][: self.num_classes]),
                               "logit_scale": jnp.asarray(pre["logit_scale"])}
        missing = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                   if "adapter" not in jax.tree_util.keystr(p)
                   and not _covered(p, pre["blocks"], params)]
        if missing:
            raise ValueError(f"pretrained CLIP weights do not cover {missing[:3]}")
        return {**variables, "params": params}

    @staticmethod
    def input_reference(variables, i: int):
        """(mean, var) of block i's input statistics (PMI's initialisation), or None."""
        stats = variables.get("batch_stats", {}).get(f"blocks_{i}", {}).get("input_stats")
        return None if stats is None else (stats["mean"], stats["var"])

    @staticmethod
    def param_group(path: tuple[str, ...]) -> str:
        """Only adapters (and routers) train: group "head"; the CLIP weights are "frozen"."""
        return "head" if "adapter" in path else "frozen"


class TextHead(nn.Module):
    """exp(logit_scale) * f . t_c over class prototypes t_c (frozen)."""

    num_classes: int
    dim: int

    @nn.compact
    def __call__(self, features):
        prototypes = self.param("prototypes", nn.initializers.zeros, (self.num_classes, self.dim))
        scale = self.param("logit_scale", nn.initializers.zeros, ())
        return jnp.exp(scale) * features @ prototypes.T


def _covered(path, blocks: dict, params: dict) -> bool:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] == "text_head":
        return True
    node = blocks
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def _merge(target: dict, source: dict) -> dict:
    out = dict(target)
    for k, v in source.items():
        out[k] = _merge(target[k], v) if isinstance(v, dict) else jnp.asarray(v)
    return out


def clip_blocks(vision_config: VisionConfig, projection_dim: int, num_experts: int = 4,
                bottleneck: int = 64, top_k: int = 2) -> list[nn.Module]:
    """[patch embedding, pre-transformer, residual attention blocks..., post] (methods.md 1.3)."""
    attn = [ResidualAttentionBlock(vision_config, num_experts, bottleneck, top_k)
            for _ in range(vision_config.num_hidden_layers)]
    return [PatchEmbedding(vision_config), PreTransformer(vision_config), *attn,
            PostBlock(vision_config, projection_dim)]


def hf_to_block_params(params: dict, num_layers: int) -> dict:
    """Rename `CLIPModel` vision parameters (Hugging Face layout) to the block list's
    (`blocks_i/...`)."""
    v = params["vision_model"]
    emb = v["embeddings"]
    blocks = {"blocks_0": {"patch_embedding": emb["patch_embedding"]},
              "blocks_1": {"class_embedding": emb["class_embedding"],
                           "position_embedding": emb["position_embedding"],
                           "pre_layrnorm": v["pre_layrnorm"]}}
    for i in range(num_layers):
        blocks[f"blocks_{i + 2}"] = dict(v["encoder"]["layers"][str(i)])
    blocks[f"blocks_{num_layers + 2}"] = {"post_layernorm": v["post_layernorm"],
                                          "visual_projection": params["visual_projection"]}
    return blocks


# ------------------------------------------------------------------------------ text prototypes
@functools.partial(jax.jit, static_argnums=0)
def text_features(config: CLIPConfig, params, input_ids, attention_mask):
    """`CLIPModel.text_features` (compiled once per config and prompt batch shape)."""
    model = CLIPModel(config)
    return model.apply({"params": params}, input_ids, attention_mask, method=model.text_features)


def text_prototypes(clip: PretrainedCLIP, class_names: Sequence[str],
                    templates: Sequence[str] = TEMPLATES, batch: int = 256) -> np.ndarray:
    """Per class: CLIP text embeddings of the prompt templates, each L2-normalised, averaged,
    L2-normalised again (zero-shot CLIP's class prototypes). Shape (C, projection_dim)."""
    prompts = [t.format(name.replace("_", " ")) for name in class_names for t in templates]
    embs = []
    for s in range(0, len(prompts), batch):
        ids, mask = encode_prompts(clip.tokenizer, prompts[s:s + batch])
        embs.append(np.asarray(text_features(clip.config, clip.params, ids, mask)))
    e = np.concatenate(embs).reshape(len(class_names), len(templates), -1)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    e = e.mean(1)
    return (e / np.linalg.norm(e, axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class CLIPSpec:
    """Everything `build_clip` needs (from `config.model.clip`)."""

    source: str = TINY
    num_experts: int = 4
    bottleneck: int = 64
    top_k: int = 2
    templates: tuple[str, ...] = TEMPLATES


_PRETRAINED: dict[str, dict] = {}  # key -> {"blocks", "prototypes", "logit_scale"}


def build_clip(spec: CLIPSpec, num_classes: int, class_names: Sequence[str] | None = None,
               seed: int = 0) -> CLIPClassifier:
    """Load `spec.source`, compute text prototypes of `class_names` (remapped label order; names
    default to "class i"), and return the block classifier; `init_variables` puts the
    pretrained weights into a freshly initialised variable tree."""
    names = tuple(class_names) if class_names else tuple(f"class {i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    key = json.dumps([spec.source, seed, list(spec.templates), list(names)])
    if key not in _PRETRAINED:
        clip = load_clip(spec.source, seed)
        vc = clip.config.vision
        _PRETRAINED[key] = {
            "blocks": hf_to_block_params(clip.params, vc.num_hidden_layers),
            "prototypes": text_prototypes(clip, names, spec.templates),
            "logit_scale": np.asarray(clip.params["logit_scale"]),
            "vision_config": vc, "projection_dim": clip.config.projection_dim}
    pre = _PRETRAINED[key]
    blocks = clip_blocks(pre["vision_config"], pre["projection_dim"], spec.num_experts,
                         spec.bottleneck, spec.top_k)
    return CLIPClassifier(blocks=tuple(blocks), num_classes=num_classes,
                          projection_dim=pre["projection_dim"], source=key)


def pretrained_variables(variables):
    """The frozen pretrained encoder: the same variables with every adapter output zeroed."""
    def zero(path, x):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        return jnp.zeros_like(x) if "adapter" in keys and keys[-1] == "up" else x
    return {**variables, "params": jax.tree_util.tree_map_with_path(zero, variables["params"])}
