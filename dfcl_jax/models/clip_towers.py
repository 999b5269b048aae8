"""CLIP's vision and text towers in Linen, with Hugging Face CLIP's parameter names and tree.

`CLIPModel(config).init(...)["params"]` has the layout of a Hugging Face Flax CLIP checkpoint
(`vision_model/embeddings/patch_embedding/kernel`, `text_model/encoder/layers/0/self_attn/q_proj/
kernel`, `visual_projection/kernel`, `logit_scale`, ...), so `clip_checkpoint` maps the PyTorch
tensor names of `model.safetensors` onto it one to one, and `clip.hf_to_block_params` splits the
vision tower into the block list. The config is ours (`CLIPConfig`), parsed from a Hugging Face
`config.json` by `clip_config_from_dict`; missing keys take Hugging Face CLIP's defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


def quick_gelu(x):
    """x * sigmoid(1.702 x): the activation of the OpenAI CLIP checkpoints."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


# ------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower sizes (Hugging Face `CLIPVisionConfig` names and defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower sizes and special token ids (Hugging Face `CLIPTextConfig` names and defaults;
    `pad_token_id` is only carried through config.json: padding uses the tokenizer's pad token)."""

    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407
    pad_token_id: int = 1


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Both towers, the joint embedding size and the initial log logit scale."""

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    projection_dim: int = 512
    logit_scale_init: float = 2.6592


def _tower_config(cls, raw: dict, name: str):
    """`cls` from the keys of `raw` it knows (others ignored), validated."""
    cfg = cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(f"config.json {name}.hidden_act={cfg.hidden_act!r}; allowed: "
                         f"{', '.join(ACTIVATIONS)}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"config.json {name}: hidden_size={cfg.hidden_size} is not divisible by "
                         f"num_attention_heads={cfg.num_attention_heads}")
    return cfg


def clip_config_from_dict(raw: dict) -> CLIPConfig:
    """Our config from a Hugging Face CLIP `config.json` dict (`text_config`, `vision_config`,
    and the legacy `*_config_dict` entries, which override them as in Hugging Face)."""
    towers = {k: {**(raw.get(f"{k}_config") or {}), **(raw.get(f"{k}_config_dict") or {})}
              for k in ("text", "vision")}
    return CLIPConfig(vision=_tower_config(VisionConfig, towers["vision"], "vision_config"),
                      text=_tower_config(TextConfig, towers["text"], "text_config"),
                      projection_dim=raw.get("projection_dim", 512),
                      logit_scale_init=raw.get("logit_scale_init_value", 2.6592))


def clip_config_to_dict(config: CLIPConfig) -> dict:
    """A Hugging Face CLIP `config.json` dict of `config`."""
    return {"architectures": ["CLIPModel"], "model_type": "clip",
            "projection_dim": config.projection_dim,
            "logit_scale_init_value": config.logit_scale_init,
            "text_config": dataclasses.asdict(config.text),
            "vision_config": dataclasses.asdict(config.vision)}


# ----------------------------------------------------------------------------------- modules
def causal_attention_bias(attention_mask, length: int):
    """The text tower's additive attention bias, (B or 1, 1, L, L): 0 where a query may attend a
    key (not later, not padding), the float32 minimum elsewhere, as Hugging Face CLIP."""
    mask = nn.make_causal_mask(jnp.ones((1, length), jnp.int32))
    if attention_mask is not None:
        mask = nn.combine_masks(mask, jnp.asarray(attention_mask)[:, None, None, :])
    return jnp.where(mask > 0, 0.0, jnp.finfo(jnp.float32).min)


class Attention(nn.Module):
    """Multi-head self-attention with `q_proj`, `k_proj`, `v_proj`, `out_proj`."""

    config: VisionConfig | TextConfig

    @nn.compact
    def __call__(self, x, bias=None):
        d, h = self.config.hidden_size, self.config.num_attention_heads
        split = lambda t: t.reshape(t.shape[:2] + (h, d // h))
        q, k, v = (split(nn.Dense(d, name=f"{n}_proj")(x)) for n in ("q", "k", "v"))
        weights = nn.dot_product_attention_weights(q, k, bias=bias, deterministic=True)
        out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return nn.Dense(d, name="out_proj")(out.reshape(out.shape[:2] + (d,)))


class MLP(nn.Module):
    """fc1, the configured activation (quick_gelu for CLIP), fc2."""

    config: VisionConfig | TextConfig

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.config.intermediate_size, name="fc1")(x)
        return nn.Dense(self.config.hidden_size, name="fc2")(ACTIVATIONS[self.config.hidden_act](x))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: x + attn(ln1 x), then h + mlp(ln2 h)."""

    config: VisionConfig | TextConfig

    @nn.compact
    def __call__(self, x, bias=None):
        eps = self.config.layer_norm_eps
        h = nn.LayerNorm(epsilon=eps, name="layer_norm1")(x)
        x = x + Attention(self.config, name="self_attn")(h, bias)
        h = nn.LayerNorm(epsilon=eps, name="layer_norm2")(x)
        return x + MLP(self.config, name="mlp")(h)


class EncoderLayers(nn.Module):
    """`num_hidden_layers` encoder layers, named "0", "1", ..."""

    config: VisionConfig | TextConfig

    @nn.compact
    def __call__(self, x, bias=None):
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, name=str(i))(x, bias)
        return x


class Encoder(nn.Module):
    """The layer stack under `layers` (Hugging Face's `encoder/layers/<i>` tree)."""

    config: VisionConfig | TextConfig

    @nn.compact
    def __call__(self, x, bias=None):
        return EncoderLayers(self.config, name="layers")(x, bias)


class VisionEmbeddings(nn.Module):
    """Patch-embedding convolution, class token, positional embeddings (NHWC input)."""

    config: VisionConfig

    @nn.compact
    def __call__(self, images):
        c, p = self.config, self.config.patch_size
        x = nn.Conv(c.hidden_size, (p, p), (p, p), padding="VALID", use_bias=False,
                    name="patch_embedding")(images)
        x = jnp.reshape(x, (x.shape[0], -1, c.hidden_size))
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,))
        x = jnp.concatenate([jnp.tile(cls[None, None], (x.shape[0], 1, 1)), x], axis=1)
        return x + nn.Embed(x.shape[1], c.hidden_size, name="position_embedding")(
            jnp.arange(x.shape[1])[None])


class VisionTransformer(nn.Module):
    """Embeddings, `pre_layrnorm` (sic, as in the checkpoints), encoder, `post_layernorm` on the
    class token: the pooled image representation."""

    config: VisionConfig

    @nn.compact
    def __call__(self, images):
        eps = self.config.layer_norm_eps
        x = VisionEmbeddings(self.config, name="embeddings")(images)
        x = nn.LayerNorm(epsilon=eps, name="pre_layrnorm")(x)
        x = Encoder(self.config, name="encoder")(x)
        return nn.LayerNorm(epsilon=eps, name="post_layernorm")(x[:, 0, :])


class TextEmbeddings(nn.Module):
    """Token embeddings plus positional embeddings of positions 0..L-1."""

    config: TextConfig

    @nn.compact
    def __call__(self, input_ids):
        c = self.config
        tokens = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(input_ids)
        positions = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embedding")
        return tokens + positions(jnp.arange(input_ids.shape[-1])[None])


def eos_positions(input_ids, eos_token_id: int):
    """Where the text tower pools, as Hugging Face CLIP: configs with the pre-2023 `eos_token_id`
    of 2 take the position of the largest id (the EOS of the original vocabulary), others the first
    position of `eos_token_id`."""
    if eos_token_id == 2:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class TextTransformer(nn.Module):
    """Embeddings, causal encoder with the padding mask, `final_layer_norm`, pooled at the EOS
    token: the pooled text representation."""

    config: TextConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        input_ids = jnp.asarray(input_ids, jnp.int32)
        x = TextEmbeddings(self.config, name="embeddings")(input_ids)
        bias = causal_attention_bias(attention_mask, input_ids.shape[-1])
        x = Encoder(self.config, name="encoder")(x, bias)
        x = nn.LayerNorm(epsilon=self.config.layer_norm_eps, name="final_layer_norm")(x)
        return x[jnp.arange(x.shape[0]), eos_positions(input_ids, self.config.eos_token_id)]


class CLIPModel(nn.Module):
    """Both towers, `visual_projection`, `text_projection` (no bias) and `logit_scale`."""

    config: CLIPConfig

    def setup(self):
        c = self.config
        self.vision_model = VisionTransformer(c.vision)
        self.text_model = TextTransformer(c.text)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init), ())

    def image_features(self, images):
        """Unnormalised image embeddings of NHWC images (`get_image_features`)."""
        return self.visual_projection(self.vision_model(images))

    def text_features(self, input_ids, attention_mask=None):
        """Unnormalised text embeddings of token ids (`get_text_features`)."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def __call__(self, images, input_ids, attention_mask=None):
        """Image-text logits: exp(logit_scale) * cosine similarities, (images, texts)."""
        i = self.image_features(images)
        t = self.text_features(input_ids, attention_mask)
        i = i / jnp.linalg.norm(i, axis=-1, keepdims=True)
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale) * i @ t.T


def clip_param_shapes(config: CLIPConfig) -> dict:
    """The parameter tree of `CLIPModel(config)` as shapes (no computation)."""
    s, n = config.vision.image_size, config.text.max_position_embeddings
    return jax.eval_shape(lambda k: CLIPModel(config).init(
        k, jnp.zeros((1, s, s, 3)), jnp.zeros((1, n), jnp.int32)), jax.random.key(0))["params"]
