"""PyTorch (CPU) reference of the benchmarked steps, for `python -m benchmarks.run --vs-torch`.

Each step computes the same operations as its JAX benchmark in `benchmarks/suite.py` (same
architectures, losses, optimisers and constants, float32, NCHW):

- `train`: CIFAR ResNet-32 (option-A shortcuts, BN in train mode) fine-tune step: the same
  on-the-fly augmentation (crop with padding 4, flip, brightness/contrast jitter, normalisation)
  from uint8, CE over the seen classes, SGD momentum 0.9 with weight decay 2e-4 (lr 0.1).
- `deepinversion`: Adam (lr 0.1) on the pixels of CE + 10 R_BN (l2) + 2.5e-5 TV (+ 0 l2) of the
  jittered images through the frozen eval-mode teacher, keep-best.
- `abd_generator`: generator forward (train mode), frozen teacher, content (T = 1000) + diversity
  + 50 BN-KL + 1e-3 smoothness, Adam (lr 1e-3) on the generator.
- `abd_student`: real (augmented) + generator images, student (train mode) + head on detached
  features + frozen teacher, local CE + FT-CE + 0.1 importance-weighted feature KD, SGD.
- `pmi_block`: one PMI block solve step (block forward + BN-KL + input prior + MSE, boosted
  weights, keep-best, Adam lr 0.8 on the block input).
- `pmi_full`: the PMI full-model phase (MSE to the pooled features + 0.25 BN-KL, boost,
  keep-best, Adam with warm-up and milestones on the image), `steps_per_call` steps per call.

The constants come from the library's config dataclasses, so both sides use the same values.
The step classes take explicit inputs (jitter shifts, z, ...) so that tests can feed them the
JAX side's draws; `load_resnet`/`load_generator` copy Flax variables into the torch modules
(`tests/test_torch_reference.py` checks that the losses agree). `BUILDERS` maps benchmark names
to factories `build(args, steps_per_call) -> benchmarks.common.Case`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = -1e9  # as dfcl_jax.models.heads.NEG_INF
VAR_EPS = 1e-8  # as dfcl_jax.inversion.losses.VAR_EPS
NUM_CLASSES = 100
IMAGE_CHW = (3, 32, 32)


def xla_cpu_threads() -> int:
    """The size of XLA:CPU's intra-op thread pool: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


CHANNELS_LAST = False  # --torch-channels-last: models and optimised inputs in NHWC memory


def layout(t):
    """A module or 4-D tensor in the benchmark's memory format (`CHANNELS_LAST`)."""
    if CHANNELS_LAST and (isinstance(t, nn.Module) or t.ndim == 4):
        return t.to(memory_format=torch.channels_last)
    return t


def set_threads(n: int | None = None) -> int:
    """torch intra-op threads = `n` (default: as XLA:CPU, `xla_cpu_threads()`); returns it."""
    n = n or xla_cpu_threads()
    torch.set_num_threads(n)
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------- modules
class BN(nn.BatchNorm2d):
    """BatchNorm2d (PyTorch semantics, as `dfcl_jax.models.batchnorm.BatchNorm`) that appends
    (batch mean, biased batch var, running mean, running var) of its input to `self.sink`
    when a `recording` block sets it."""

    sink: list | None = None

    def forward(self, x):
        if self.sink is not None:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            self.sink.append((mean, var, self.running_mean, self.running_var))
        return super().forward(x)


class recording:
    """`with recording(module) as moments:` collects the moments of every BN input, in order."""

    def __init__(self, module: nn.Module):
        self.bns = [m for m in module.modules() if isinstance(m, BN)]

    def __enter__(self) -> list:
        self.moments: list = []
        for m in self.bns:
            m.sink = self.moments
        return self.moments

    def __exit__(self, *exc):
        for m in self.bns:
            m.sink = None


def _conv(cin, cout, k, stride=1, bias=False):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # as ours
    return conv


class StemBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_0, self.bn_0 = _conv(cin, cout, 3), BN(cout)

    def forward(self, x):
        return F.relu(self.bn_0(self.conv_0(x)))


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + option-A shortcut (subsample, zero-pad channels), ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv_0, self.bn_0 = _conv(cin, cout, 3, stride), BN(cout)
        self.conv_1, self.bn_1 = _conv(cout, cout, 3), BN(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn_0(self.conv_0(x)))
        y = self.bn_1(self.conv_1(y))
        r = x
        if self.stride != 1 or self.extra:
            r = x[:, :, ::self.stride, ::self.stride]
            r = F.pad(r, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(y + r)


class ResNet(nn.Module):
    """CIFAR ResNet (depth 6n + 2, ABD variant: ResNet-32 by default) as a list of blocks."""

    def __init__(self, num_classes=NUM_CLASSES, depth=32, widths: Sequence[int] = (16, 32, 64),
                 in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        blocks: list[nn.Module] = [StemBlock(in_channels, widths[0])]
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i == 0 and stage > 0) else 1))
                cin = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, num_classes)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def run_blocks(self, x, start=0, stop=None):
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    def features(self, x, start=0):
        return self.run_blocks(x, start).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


class Generator(nn.Module):
    """ABD generator as `dfcl_jax.models.generator.Generator`: Linear - BN - [up x2 - conv3x3 -
    BN(eps 0.8 quirk) - LeakyReLU(0.2)] x n - conv3x3 - tanh - BN(no affine)."""

    def __init__(self, image_size=32, channels=3, z_dim=1000, width=128, bn_eps_quirk=True):
        super().__init__()
        self.stages = 5 if image_size >= 224 else 2
        self.s, self.width = image_size // 2**self.stages, width
        eps = 0.8 if bn_eps_quirk else 1e-5
        self.fc = nn.Linear(z_dim, width * self.s * self.s)
        self.bn_in = BN(width)
        convs, bns, cin = [], [], width
        for i in range(self.stages):
            out = width // 2 if i == self.stages - 1 else width
            convs.append(nn.Conv2d(cin, out, 3, 1, 1))
            bns.append(BN(out, eps=eps))
            cin = out
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        self.conv_out = nn.Conv2d(cin, channels, 3, 1, 1)
        self.bn_out = BN(channels, affine=False)

    def forward(self, z):
        x = self.bn_in(self.fc(z).view(z.shape[0], self.width, self.s, self.s))
        for conv, bn in zip(self.convs, self.bns):
            x = F.leaky_relu(bn(conv(F.interpolate(x, scale_factor=2, mode="nearest"))), 0.2)
        return self.bn_out(torch.tanh(self.conv_out(x)))


def frozen(module: nn.Module) -> nn.Module:
    """`module` in eval mode without parameter gradients (a frozen teacher)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# --------------------------------------------------------------------- Flax weights -> torch
def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _load_conv(conv: nn.Conv2d, p):
    conv.weight.data.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
    if conv.bias is not None:
        conv.bias.data.copy_(_t(p["bias"]))


def _load_bn(bn: nn.BatchNorm2d, p, s):
    if bn.affine:
        bn.weight.data.copy_(_t(p["scale"]))
        bn.bias.data.copy_(_t(p["bias"]))
    bn.running_mean.copy_(_t(s["mean"]))
    bn.running_var.copy_(_t(s["var"]))


def load_resnet(model: ResNet, variables) -> ResNet:
    """Copy the variables of `dfcl_jax.models.resnet.cifar_resnet` into `model` (in place)."""
    params, stats = variables["params"], variables["batch_stats"]
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            p, s = params[f"blocks_{i}"], stats[f"blocks_{i}"]
            for name, child in block.named_children():
                if isinstance(child, nn.Conv2d):
                    _load_conv(child, p[name])
                elif isinstance(child, nn.BatchNorm2d):
                    _load_bn(child, p[name], s[name])
        model.head.weight.copy_(_t(params["head"]["kernel"]).T)
        model.head.bias.copy_(_t(params["head"]["bias"]))
    return model


def load_generator(gen: Generator, variables) -> Generator:
    """Copy the variables of `dfcl_jax.models.generator.Generator` into `gen` (in place); the
    Dense output is (h, w, c)-ordered there and (c, h, w)-ordered here."""
    params, stats = variables["params"], variables["batch_stats"]
    s, w = gen.s, gen.width
    with torch.no_grad():
        k = _t(params["fc"]["kernel"])  # (z, s*s*w), columns (h, w, c)
        gen.fc.weight.copy_(k.reshape(-1, s, s, w).permute(3, 1, 2, 0).reshape(w * s * s, -1))
        gen.fc.bias.copy_(_t(params["fc"]["bias"]).reshape(s, s, w).permute(2, 0, 1).reshape(-1))
        _load_bn(gen.bn_in, params["bn_in"], stats["bn_in"])
        for i, (conv, bn) in enumerate(zip(gen.convs, gen.bns)):
            _load_conv(conv, params[f"conv_{i}"])
            _load_bn(bn, params[f"bn_{i}"], stats[f"bn_{i}"])
        _load_conv(gen.conv_out, params["conv_out"])
        _load_bn(gen.bn_out, {}, stats["bn_out"])
    return gen


# ------------------------------------------------------------ losses (dfcl_jax.inversion.losses)
def mask_logits(logits, lo, hi):
    c = torch.arange(logits.shape[-1])
    return logits.masked_fill(~((c >= lo) & (c < hi)), NEG_INF)


def masked_ce(logits, labels, lo, hi, reduction="mean"):
    return F.cross_entropy(mask_logits(logits, lo, hi), labels, reduction=reduction)


def content_loss(logits, n_seen, temperature):
    pseudo = mask_logits(logits, 0, n_seen).argmax(-1)
    return masked_ce(logits / temperature, pseudo, 0, n_seen)


def diversity_loss(logits, n_seen):
    pbar = F.softmax(mask_logits(logits, 0, n_seen), -1).mean(0)
    positive = (pbar > 0) & (torch.arange(pbar.shape[0]) < n_seen)
    plogp = torch.where(positive, pbar * torch.log(torch.where(positive, pbar, 1.0)), 0.0)
    return 1.0 + plogp.sum() / math.log(max(n_seen, 2))


def bn_l2_di(moments, first_layer_scale=1.0):
    terms = [torch.norm(rv - v) + torch.norm(rm - m) for m, v, rm, rv in moments]
    return first_layer_scale * terms[0] + sum(terms[1:])


def bn_kl_abd(moments):
    total = 0.0
    for m, var, rm, rv in moments:
        s2, v = var + VAR_EPS, rv + VAR_EPS
        total = total + (0.5 * (torch.log(s2) - torch.log(v))
                         - 0.5 * (1.0 - (v + (rm - m) ** 2) / s2)).mean()
    return total / len(moments)


def bn_kl_pmi(moments):
    total = 0.0
    for m, var, rm, rv in moments:
        s2, v = var + VAR_EPS, rv + VAR_EPS
        total = total + (0.5 * (torch.log(v) - torch.log(s2) - 1.0 + (s2 + (m - rm) ** 2) / v)).mean()
    return total


def total_variation(x):  # NCHW
    dx = x[:, :, :, :-1] - x[:, :, :, 1:]
    dy = x[:, :, :-1, :] - x[:, :, 1:, :]
    d1 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d2 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return torch.norm(dx) + torch.norm(dy) + torch.norm(d1) + torch.norm(d2)


def pixel_l2(x):
    return torch.norm(x.reshape(x.shape[0], -1), dim=1).mean()


def gaussian_kernel_2d(channels, size=5, sigma=1.0):
    d = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    k = torch.exp(-((d / (2.0 * sigma)) ** 2))
    k = k / k.sum()
    return torch.outer(k, k).expand(channels, 1, size, size).contiguous()


def smoothness_prior(x, kernel):
    """mean((x - blur(x))^2), depthwise 5x5 Gaussian with reflect padding (as ABD's reference)."""
    pad = kernel.shape[-1] // 2
    blur = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, groups=x.shape[1])
    return ((x - blur) ** 2).mean()


# ------------------------------------------------------------------------------ augmentation
class Augmentation:
    """`dfcl_jax.data.augment.Augmentation` on uint8 NHWC batches -> normalised NCHW float32."""

    def __init__(self, mean, std, crop_padding=4, hflip=True, brightness=63 / 255, contrast=0.8):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.hflip, self.brightness, self.contrast = (crop_padding, hflip, brightness,
                                                                contrast)

    @classmethod
    def like(cls, aug) -> Augmentation:
        """The torch twin of a `dfcl_jax.data.augment.Augmentation`."""
        return cls(aug.mean, aug.std, aug.crop_padding, aug.hflip, aug.brightness, aug.contrast)

    def draw(self, n: int) -> dict:
        """The random draws of one batch: crop offsets, flips, brightness and contrast factors."""
        b, c = self.brightness, self.contrast
        return {"offsets": torch.randint(0, 2 * self.pad + 1, (n, 2)),
                "flip": torch.rand(n) < 0.5,
                "brightness": torch.empty(n).uniform_(max(0.0, 1 - b), 1 + b),
                "contrast": torch.empty(n).uniform_(max(0.0, 1 - c), 1 + c)}

    def __call__(self, images_u8: torch.Tensor, draws: dict | None = None) -> torch.Tensor:
        x = images_u8.permute(0, 3, 1, 2).float() / 255.0
        n, c, h, w = x.shape
        d = self.draw(n) if draws is None else draws
        if self.pad:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            off = d["offsets"]
            rows = (off[:, 0, None] + torch.arange(h))[:, None, :, None]
            cols = (off[:, 1, None] + torch.arange(w))[:, None, None, :]
            x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                       rows, cols]
        if self.hflip:
            x = torch.where(d["flip"].view(n, 1, 1, 1), x.flip(3), x)
        if self.brightness:
            x = (x * d["brightness"].view(n, 1, 1, 1)).clamp(0.0, 1.0)
        if self.contrast:
            f = d["contrast"].view(n, 1, 1, 1)
            gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]) if c == 3 else x.mean(1)
            gray = gray.mean(dim=(1, 2)).view(n, 1, 1, 1)
            x = (f * x + (1 - f) * gray).clamp(0.0, 1.0)
        return (x - self.mean) / self.std


def sgd(params, train_cfg) -> torch.optim.SGD:
    """PyTorch SGD with momentum and weight decay (what `dfcl_jax.train.state` mirrors)."""
    return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                           weight_decay=train_cfg.weight_decay)


# ------------------------------------------------------------------------------------- steps
class TrainStep:
    """Fine-tune train step: augment, forward (BN train mode), masked CE, backward, SGD."""

    def __init__(self, model, images_u8, labels, n_seen, augmentation, train_cfg):
        self.model, self.aug, self.n_seen = model.train(), augmentation, int(n_seen)
        self.images, self.labels = torch.as_tensor(images_u8), torch.as_tensor(labels).long()
        self.opt = sgd(model.parameters(), train_cfg)

    def step(self) -> dict:
        logits = self.model(self.aug(self.images))
        loss = masked_ce(logits, self.labels, 0, self.n_seen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


class DeepInversionStep:
    """DeepInversion image step (`dfcl_jax.inversion.deepinversion`), Adam on the pixels."""

    def __init__(self, teacher, x0, labels, n_seen, cfg):
        if cfg.flip or cfg.clip is not None or cfg.warmup_steps or cfg.cosine:
            raise NotImplementedError("the torch reference covers the CIFAR recipe only")
        self.teacher, self.cfg, self.n_seen = frozen(teacher), cfg, int(n_seen)
        self.x = torch.as_tensor(x0).clone().requires_grad_(True)
        self.labels = torch.as_tensor(labels).long()
        self.opt = torch.optim.Adam([self.x], lr=cfg.lr, betas=(cfg.b1, cfg.b2))
        self.best_x, self.best_loss = self.x.detach().clone(), torch.tensor(math.inf)

    def loss(self, x, shifts):
        cfg = self.cfg
        xj = torch.roll(x, shifts, dims=(2, 3)) if cfg.jitter else x
        with recording(self.teacher) as moments:
            logits = self.teacher(xj)
        terms = {"ce": masked_ce(logits, self.labels, 0, self.n_seen),
                 "bn": bn_l2_di(moments, cfg.first_bn_scale), "tv": total_variation(x),
                 "l2": pixel_l2(x)}
        total = (cfg.ce * terms["ce"] + cfg.r_feature * terms["bn"] + cfg.tv * terms["tv"]
                 + cfg.l2 * terms["l2"])
        return total, terms

    def step(self, shifts=None) -> dict:
        """One Adam step; `shifts` = (dh, dw) of the jitter roll (default: random)."""
        if shifts is None:
            shifts = tuple(torch.randint(-self.cfg.jitter, self.cfg.jitter + 1, (2,)).tolist())
        total, terms = self.loss(self.x, tuple(int(s) for s in shifts))
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        with torch.no_grad():
            if self.cfg.keep_best:
                better = total < self.best_loss
                self.best_x = torch.where(better, self.x, self.best_x)
                self.best_loss = torch.where(better, total, self.best_loss)
        self.opt.step()
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}


class GeneratorStep:
    """ABD generator step (`dfcl_jax.inversion.generator`): Adam on the generator."""

    def __init__(self, gen, teacher, n_seen, cfg):
        self.gen, self.teacher, self.cfg, self.n_seen = gen.train(), frozen(teacher), cfg, int(n_seen)
        self.opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
        self.kernel = gaussian_kernel_2d(gen.conv_out.out_channels)

    def loss(self, z):
        cfg = self.cfg
        images = self.gen(z)
        with recording(self.teacher) as moments:
            logits = self.teacher(images)
        terms = {"content": content_loss(logits, self.n_seen, cfg.content_temperature),
                 "diversity": diversity_loss(logits, self.n_seen), "bn": bn_kl_abd(moments),
                 "smoothness": smoothness_prior(images, self.kernel)}
        total = (cfg.content * terms["content"] + cfg.diversity * terms["diversity"]
                 + cfg.bn * terms["bn"] + cfg.smoothness * terms["smoothness"])
        return total, terms

    def step(self, z=None) -> dict:
        """One Adam step on a batch of latents `z` (default: N(0, 1), `cfg.batch_size` rows)."""
        if z is None:
            z = torch.randn(self.cfg.batch_size, self.gen.fc.in_features)
        total, terms = self.loss(torch.as_tensor(z))
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}


class StudentStep:
    """ABD student step (`dfcl_jax.methods.abd`): real + generator images, local CE + FT-CE + KD."""

    def __init__(self, model, teacher, gen, images_u8, labels, n_old, n_seen, augmentation,
                 train_cfg, kd_weight=0.1):
        self.model, self.teacher, self.gen = model.train(), frozen(teacher), frozen(gen)
        self.images, self.labels = torch.as_tensor(images_u8), torch.as_tensor(labels).long()
        self.n_old, self.n_seen, self.aug, self.kd_weight = int(n_old), int(n_seen), augmentation, kd_weight
        self.opt = sgd(model.parameters(), train_cfg)

    def step(self, z=None) -> dict:
        b, n_old, n_seen = self.images.shape[0], self.n_old, self.n_seen
        x_real = self.aug(self.images)
        with torch.no_grad():
            z = torch.randn(b, self.gen.fc.in_features) if z is None else torch.as_tensor(z)
            x_syn = self.gen(z)
            y_syn = mask_logits(self.teacher(x_syn), 0, n_old).argmax(-1)
        x, y = torch.cat([x_real, x_syn]), torch.cat([self.labels, y_syn])
        f = self.model.features(x)
        logits = self.model.head(f)
        head = self.model.head(f.detach())
        with torch.no_grad():
            t_f = self.teacher.features(x)
        ratio = n_old / n_seen
        w = torch.where(y < n_old, ratio, 1.0 - ratio)
        lce = (w[:b] * masked_ce(logits[:b], self.labels, n_old, n_seen, "none")).mean()
        fce = (w * masked_ce(head, y, 0, n_seen, "none")).mean()
        diff = (f - t_f) @ self.teacher.head.weight.T
        diff = torch.where(torch.arange(diff.shape[-1]) < n_old, diff, 0.0)
        kd = (diff ** 2).sum(-1).mean() / max(n_old, 1)
        total = lce + fce + self.kd_weight * kd
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return {"loss": total.detach(), "local_ce": lce.detach(), "ft_ce": fce.detach(),
                "kd": kd.detach()}


def _boosted(w, base, current, initial, cap, enabled):
    if not enabled:
        return w
    return torch.where(current > initial, torch.minimum(2.0 * w, torch.tensor(cap * base)), w)


class _PMISolve:
    """Adam on x with PMI's boosted weights and keep-best by the base-weighted loss."""

    keys: tuple[str, ...] = ()

    def reset(self, x0, lr):
        self.x = torch.as_tensor(x0).clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.x], lr=lr)
        self.weights = [torch.tensor(w) for w in self.base_weights]
        self.initial = {k: torch.tensor(0.0) for k in self.keys}
        self.best_x, self.best = self.x.detach().clone(), torch.tensor(math.inf)
        self.best_terms = {k: torch.tensor(0.0) for k in self.keys}
        self.t = 0

    def step(self) -> dict:
        base, terms = self.loss_and_backward()
        with torch.no_grad():
            if self.t == 0:
                self.initial = {k: terms[k] for k in self.keys}
            self.weights = [_boosted(w, b, terms[k], self.initial[k], cap, self.cfg.boost)
                            for w, b, k, cap in zip(self.weights, self.base_weights, self.keys,
                                                    self.caps)]
            better = base < self.best if self.cfg.keep_best else torch.tensor(True)
            self.best_x = torch.where(better, self.x, self.best_x)
            self.best = torch.where(better, base, self.best)
            self.best_terms = {k: torch.where(better, terms[k], self.best_terms[k])
                               for k in self.keys}
        self.set_lr()
        self.opt.step()
        self.t += 1
        return {"loss": base, **terms}

    def set_lr(self):
        pass


class PMIBlockStep(_PMISolve):
    """One PMI block solve step (`PMIInverter.block_loss` for block `i`, not the last of a
    progressive first block)."""

    keys = ("mse", "bn", "input")

    def __init__(self, model, i, x0, target, cfg):
        self.model, self.i, self.cfg = frozen(model), i, cfg
        self.block = model.blocks[i]
        self.L = len(model.blocks)
        self.a_rf = cfg.rf_per_block * (self.L if cfg.rf_scale_by_blocks else 1)
        self.target = torch.as_tensor(target)
        self.base_weights = (cfg.a_mse, 1.0, 1.0)
        self.caps = (cfg.boost_cap_mse, cfg.boost_cap_bn, cfg.boost_cap_input)
        self.prior = None
        if i > 0 and cfg.input_prior:
            prev = model.blocks[i - 1]
            self.prior = prev.bn_1 if hasattr(prev, "bn_1") else prev.bn_0
        self.reset(x0, cfg.block_lr)

    def loss_and_backward(self):
        x = self.x
        with recording(self.block) as moments:
            y = self.block(x)
        if self.i == self.L - 1:
            y = y.mean(dim=(2, 3))
        terms = {"mse": ((y - self.target) ** 2).mean(), "bn": bn_kl_pmi(moments),
                 "input": torch.zeros(())}
        if self.prior is not None:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            terms["input"] = bn_kl_pmi([(mean, var, self.prior.bias, self.prior.weight ** 2)])
        w_mse, w_bn, w_in = self.weights
        total = w_mse * terms["mse"] + self.a_rf * (w_bn * terms["bn"] + w_in * terms["input"])
        base = self.cfg.a_mse * terms["mse"] + self.a_rf * (terms["bn"] + terms["input"])
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        return base.detach(), {k: v.detach() for k, v in terms.items()}


def full_model_lr(cfg, step: int) -> float:
    """`dfcl_jax.inversion.pmi.full_model_schedule` (step schedule) at optimiser step `step`."""
    if cfg.full_schedule != "step":
        raise NotImplementedError("the torch reference covers the step schedule only")
    w = cfg.full_warmup
    if w and step < w:
        return cfg.full_lr / w + (cfg.full_lr - cfg.full_lr / w) * min(step, max(w - 1, 1)) / max(w - 1, 1)
    rel = step - w
    lr = cfg.full_lr
    for m in cfg.full_milestones:
        if m > w and rel >= m - w:
            lr *= cfg.full_decay
    return lr


class PMIFullStep(_PMISolve):
    """The PMI full-model phase (`PMIInverter.full_loss`); `reset` starts a new phase."""

    keys = ("mse", "bn")

    def __init__(self, model, x0, z, cfg):
        if cfg.full_tv or cfg.first_block:
            raise NotImplementedError("the torch reference covers the ResNet recipe only")
        self.model, self.cfg, self.z = frozen(model), cfg, torch.as_tensor(z)
        self.base_weights = (cfg.a_mse, 1.0)
        self.caps = (cfg.boost_cap_mse, cfg.boost_cap_bn)
        self.x0 = torch.as_tensor(x0)
        self.reset(self.x0, full_model_lr(cfg, 0))

    def set_lr(self):
        for g in self.opt.param_groups:
            g["lr"] = full_model_lr(self.cfg, self.t)

    def loss_and_backward(self):
        with recording(self.model) as moments:
            f = self.model.features(self.x)
        terms = {"mse": ((f - self.z) ** 2).mean(), "bn": bn_kl_pmi(moments)}
        w_mse, w_bn = self.weights
        total = w_mse * terms["mse"] + self.cfg.full_bn * w_bn * terms["bn"]
        base = self.cfg.a_mse * terms["mse"] + self.cfg.full_bn * terms["bn"]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        return base.detach(), {k: v.detach() for k, v in terms.items()}


# ------------------------------------------------------------------ benchmark factories
def _case(name, step, images, steps_per_call, **info):
    from benchmarks.common import Case

    def call():
        for _ in range(steps_per_call):
            out = step()
        return None if out is None else float(out["loss"])

    return Case(f"{name}[torch]", call, images, steps_per_call=steps_per_call, info=info)


def _uint8_batch(batch, seed=0):
    """The suite's batch (`benchmarks.suite._uint8_batch`): same images and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(50, 60, batch).astype(np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _train_setup():
    from benchmarks.suite import _augmentation
    from experiments.base import get_config

    cfg = get_config()
    return cfg, Augmentation.like(_augmentation(cfg))


def train(a, steps_per_call=1):
    cfg, aug = _train_setup()
    images, labels = _uint8_batch(a.batch)
    step = TrainStep(layout(ResNet(NUM_CLASSES)), images, labels, 60, aug, cfg.train)
    return _case("train", step.step, a.batch, steps_per_call)


def deepinversion(a, steps_per_call=1):
    from dfcl_jax.inversion import DeepInversionConfig

    x0 = layout(torch.randn(a.batch, *IMAGE_CHW))
    step = DeepInversionStep(layout(ResNet(NUM_CLASSES)), x0, torch.arange(a.batch) % NUM_CLASSES,
                             NUM_CLASSES, DeepInversionConfig())
    return _case("deepinversion", step.step, a.batch, steps_per_call)


def abd_generator(a, steps_per_call=1):
    import dataclasses

    from dfcl_jax.inversion.generator import GeneratorConfig

    cfg = dataclasses.replace(GeneratorConfig(), batch_size=a.batch)
    step = GeneratorStep(layout(Generator()), layout(ResNet(NUM_CLASSES)), NUM_CLASSES, cfg)
    return _case("abd_generator", step.step, a.batch, steps_per_call)


def abd_student(a, steps_per_call=1):
    from dfcl_jax.methods import method_config

    cfg, aug = _train_setup()
    images, labels = _uint8_batch(a.batch)
    model = layout(ResNet(NUM_CLASSES))
    g = method_config("abd").generator
    gen = layout(Generator(32, 3, g.z_dim, g.width, g.bn_eps_quirk))
    step = StudentStep(model, copy.deepcopy(model), gen, images, labels, 50, 60, aug, cfg.train,
                       method_config("abd").kd_weight)
    return _case("abd_student", step.step, 2 * a.batch, steps_per_call)


def _block_shapes(model, batch):
    x, shapes = torch.zeros(batch, *IMAGE_CHW), []
    with torch.no_grad():
        for block in model.blocks:
            shapes.append(tuple(x.shape))
            x = block(x)
    return shapes


def pmi_block(a, steps_per_call=1):
    from dfcl_jax.inversion.pmi import PMIConfig

    model = layout(frozen(ResNet(NUM_CLASSES)))
    i, shapes = a.pmi_block, _block_shapes(model, a.targets)
    out_shape = shapes[i + 1] if i + 1 < len(shapes) else (a.targets, 64)
    step = PMIBlockStep(model, i, layout(torch.randn(shapes[i])), layout(torch.randn(out_shape)),
                        PMIConfig(micro_batch=a.targets))
    return _case("pmi_block", step.step, a.targets, steps_per_call, block=i)


def pmi_full(a, steps_per_call=1):
    """One call: a whole full-model phase of `steps_per_call` steps from the same start."""
    from benchmarks.common import Case
    from dfcl_jax.inversion.pmi import PMIConfig

    cfg = PMIConfig(micro_batch=a.targets, full_steps=steps_per_call)
    step = PMIFullStep(layout(ResNet(NUM_CLASSES)), layout(torch.randn(a.targets, *IMAGE_CHW)),
                       torch.rand(a.targets, 64), cfg)

    def call():
        step.reset(step.x0, full_model_lr(cfg, 0))
        for _ in range(steps_per_call):
            step.step()
        return None

    return Case("pmi_full[torch]", call, a.targets, steps_per_call=steps_per_call)


BUILDERS = {"train": train, "deepinversion": deepinversion, "abd_generator": abd_generator,
            "abd_student": abd_student, "pmi_block": pmi_block, "pmi_full": pmi_full}
