"""Hugging Face CLIP checkpoints without transformers: `config.json`, `model.safetensors` (PyTorch
tensor names and layouts) and `tokenizer.json`, the files of
`huggingface_hub.snapshot_download("openai/clip-vit-base-patch16")`.

`load_clip(source)` takes such a directory, a hub id (downloaded with `huggingface_hub` when it is
installed and the network is reachable), or `"tiny"`: a tiny random CLIP of the same architecture
written in the same three formats to a temporary directory and read back through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from dfcl_jax.models.clip_towers import (
    CLIPConfig,
    TextConfig,
    VisionConfig,
    clip_config_from_dict,
    clip_config_to_dict,
    clip_param_shapes,
)

TINY = "tiny"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")  # optional: pad token
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
# CLIP's pre-tokenisation split (contractions, letter runs, single digits, other symbol runs).
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_LAYOUT_SUFFIX = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class PretrainedCLIP:
    """A loaded checkpoint: config, `CLIPModel` parameters, tokenizer (pads and truncates)."""

    config: CLIPConfig
    params: dict
    tokenizer: tokenizers.Tokenizer


# ----------------------------------------------------------------------- safetensors weights
def torch_name(path: Sequence[str]) -> str:
    """PyTorch state-dict name of a `CLIPModel` parameter path."""
    *module, leaf = path
    if leaf in ("class_embedding", "logit_scale"):
        return ".".join(path)
    return ".".join([*module, _LAYOUT_SUFFIX[leaf]])


def torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape in PyTorch layout of a Flax parameter: Dense kernels (out, in), convolution kernels
    (out, in, kh, kw); everything else unchanged."""
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if leaf == "kernel" else tuple(shape)


def from_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A PyTorch-layout tensor as the Flax parameter `leaf` (inverse of `to_torch_layout`)."""
    if leaf == "kernel":
        return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    return array


def to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A Flax parameter `leaf` in PyTorch layout."""
    if leaf == "kernel":
        return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    return array


def state_dict_from_params(params: dict) -> dict[str, np.ndarray]:
    """`CLIPModel` parameters as a Hugging Face PyTorch state dict (names, layouts)."""
    return {torch_name(path): to_torch_layout(path[-1], np.asarray(v)).copy(order="C")
            for path, v in traverse_util.flatten_dict(params).items()}


def _listed(names: list[str], limit: int = 8) -> str:
    """The first `limit` names, comma-separated, and how many more there are."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def params_from_state_dict(tensors: dict[str, np.ndarray], config: CLIPConfig,
                           origin: str = "state dict") -> dict:
    """`CLIPModel(config)` parameters (float32) from a PyTorch state dict; `position_ids` buffers
    are ignored. Raises ValueError naming every missing, unexpected and mis-shaped tensor."""
    shapes = traverse_util.flatten_dict(clip_param_shapes(config))
    expected = {torch_name(p): (p, torch_shape(p[-1], s.shape)) for p, s in shapes.items()}
    missing = [n for n in expected if n not in tensors]
    unexpected = sorted(n for n in tensors if n not in expected and not n.endswith(".position_ids"))
    misshaped = [f"{n} {tuple(tensors[n].shape)} (expected {shape})"
                 for n, (_, shape) in expected.items()
                 if n in tensors and tuple(tensors[n].shape) != shape]
    if missing or unexpected or misshaped:
        problems = [f"{what}: {_listed(names)}" for what, names in (
            ("missing tensors", missing), ("unexpected tensors", unexpected),
            ("mis-shaped tensors", misshaped)) if names]
        raise ValueError(f"{origin} does not match config.json's CLIP architecture; "
                         + "; ".join(problems))
    flat = {p: jnp.asarray(from_torch_layout(p[-1], np.asarray(tensors[n], np.float32)))
            for n, (p, _) in expected.items()}
    return traverse_util.unflatten_dict(flat)


def read_safetensors_params(path: str, config: CLIPConfig) -> dict:
    """`CLIPModel(config)` parameters from a Hugging Face `model.safetensors` (PyTorch layout)."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {path} as safetensors: {type(e).__name__}: {e}") from e
    return params_from_state_dict(tensors, config, origin=path)


def save_clip(directory: str, config: CLIPConfig, params: dict) -> str:
    """Write `config.json` and `model.safetensors` (PyTorch layout, with the `position_ids`
    buffers older published checkpoints carry) as Hugging Face does."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(clip_config_to_dict(config), f, indent=2)
    tensors = state_dict_from_params(params)
    n_patches = (config.vision.image_size // config.vision.patch_size) ** 2
    tensors["vision_model.embeddings.position_ids"] = np.arange(n_patches + 1, dtype=np.int64)[None]
    tensors["text_model.embeddings.position_ids"] = np.arange(
        config.text.max_position_embeddings, dtype=np.int64)[None]
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory


# ---------------------------------------------------------------------------------- tokenizer
def _pad_token(directory: str) -> str:
    """The pad token named in tokenizer_config.json or special_tokens_map.json, else EOS (as
    `CLIPTokenizer`)."""
    for name in TOKENIZER_CONFIGS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as f:
                pad = json.load(f).get("pad_token")
            if pad:
                return pad["content"] if isinstance(pad, dict) else pad
    return EOS


def load_tokenizer(directory: str, length: int = CONTEXT_LENGTH) -> tokenizers.Tokenizer:
    """`tokenizer.json` of `directory`, padding and truncating every prompt to `length` tokens."""
    tok = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    pad = _pad_token(directory)
    pad_id = tok.token_to_id(pad)
    if pad_id is None:
        raise ValueError(f"{directory}/tokenizer.json has no pad token {pad!r}")
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=pad_id, pad_token=pad)
    return tok


def encode_prompts(tokenizer: tokenizers.Tokenizer, prompts: Sequence[str]):
    """(input_ids, attention_mask), int32 arrays of shape (len(prompts), context length)."""
    enc = tokenizer.encode_batch(list(prompts))
    return (np.asarray([e.ids for e in enc], np.int32),
            np.asarray([e.attention_mask for e in enc], np.int32))


def clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """CLIP's byte-level BPE pipeline (NFC, whitespace runs to one space, lowercase; CLIP's split;
    `</w>` word ends; `<|startoftext|>` ... `<|endoftext|>` around every prompt)."""
    tok = tokenizers.Tokenizer(models.BPE(
        vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
        fuse_unk=False, unk_token=EOS))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(),
                                           normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(sep=(EOS, vocab[EOS]), cls=(BOS, vocab[BOS]),
                                                      add_prefix_space=False, trim_offsets=False)
    tok.add_special_tokens([BOS, EOS])
    return tok


def tiny_vocab() -> dict[str, int]:
    """Every byte-level character, alone and as a word end (`</w>`), then BOS and EOS: 514 ids."""
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


# ----------------------------------------------------------------------------- tiny and load
def tiny_clip_config(hidden: int = 32, layers: int = 2, heads: int = 2, image_size: int = 32,
                     patch: int = 8, projection_dim: int = 16, vocab_size: int = 514) -> CLIPConfig:
    """A tiny CLIP of the ViT-B/16 architecture (tests, smoke runs); EOS is the last id."""
    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads}
    return CLIPConfig(vision=VisionConfig(**common, image_size=image_size, patch_size=patch),
                      text=TextConfig(**common, vocab_size=vocab_size, max_position_embeddings=77,
                                      eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
                      projection_dim=projection_dim)


def tiny_random_params(config: CLIPConfig, seed: int = 0) -> dict:
    """Random `CLIPModel(config)` parameters drawn directly: normal(0, 0.2) weights, LayerNorm
    scale 1 and zero biases, `logit_scale` at its initial value."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1]
        if name == "logit_scale":
            return np.full(shape.shape, config.logit_scale_init, np.float32)
        if name in ("scale", "bias"):
            return np.full(shape.shape, float(name == "scale"), np.float32)
        return (0.2 * rng.standard_normal(shape.shape)).astype(np.float32)

    flat = traverse_util.flatten_dict(clip_param_shapes(config))
    return traverse_util.unflatten_dict({p: draw(p, s) for p, s in flat.items()})


def write_tiny_clip(directory: str, seed: int = 0) -> str:
    """config.json, model.safetensors and tokenizer.json of a tiny random CLIP in `directory`."""
    config = tiny_clip_config()
    save_clip(directory, config, tiny_random_params(config, seed))
    clip_tokenizer(tiny_vocab(), []).save(os.path.join(directory, "tokenizer.json"))
    return directory


def load_clip_directory(directory: str) -> PretrainedCLIP:
    """Config, weights and tokenizer of a Hugging Face CLIP snapshot directory."""
    missing = [f for f in CHECKPOINT_FILES if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}; a CLIP checkpoint "
                                f"directory holds {', '.join(CHECKPOINT_FILES)}")
    with open(os.path.join(directory, "config.json")) as f:
        config = clip_config_from_dict(json.load(f))
    params = read_safetensors_params(os.path.join(directory, "model.safetensors"), config)
    length = min(config.text.max_position_embeddings, CONTEXT_LENGTH)
    return PretrainedCLIP(config, params, load_tokenizer(directory, length))


def download_clip(repo_id: str) -> str:
    """Local snapshot directory of the hub model `repo_id` (only the files `load_clip` reads)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"{repo_id!r} is not a local directory, and downloading it needs "
                          "huggingface_hub (pip install huggingface_hub)") from e
    try:
        return snapshot_download(repo_id, allow_patterns=[*CHECKPOINT_FILES, *TOKENIZER_CONFIGS])
    except (OSError, ValueError) as e:  # offline, no network, unknown repository, invalid id
        raise OSError(f"{repo_id!r} is not a local directory and could not be fetched from the "
                      f"Hugging Face hub ({type(e).__name__}: {e}). Without network: run "
                      f"huggingface_hub.snapshot_download({repo_id!r}) on a machine with network "
                      "and pass the directory it returns") from e


def load_clip(source: str, seed: int = 0) -> PretrainedCLIP:
    """A CLIP checkpoint from a snapshot directory, a hub id, or `"tiny"` (random, `seed`)."""
    if source == TINY:
        with tempfile.TemporaryDirectory(prefix="dfcl_jax_tiny_clip_") as d:
            return load_clip_directory(write_tiny_clip(d, seed))
    return load_clip_directory(source if os.path.isdir(source) else download_clip(source))
