"""PMI (Tong et al., NeurIPS 2025): per-layer model inversion, then full-model refinement.

Given a frozen classifier exposed as blocks `B_1..B_L` and target penultimate features `z`:

1. per-layer phase, from the last block back to the first: optimise the input `x_i` of `B_i` so
   that `B_i(x_i)` matches `y_i` (`y_L = z` after pooling, `y_i = x_{i+1}*`), with PMI's Gaussian
   KL on the block's BatchNorms and on the statistics of `x_i` itself (`per_layer_inversion`);
2. full-model phase: from `x_1*`, Adam on the image against MSE(pool(f(x)), z) + BN-KL over every
   BatchNorm (`full_model_refinement`).

Every block solve is a `ChunkedLoop` of Adam steps (a jitted `lax.scan`) built once per block and
cached on the `PMIInverter`, so inverting after every task compiles each block once. Targets are
solved together, in micro-batches of `micro_batch` along the data axis (one compiled shape for all
tasks) and, given a mesh, sharded over it (BatchNorm statistics are over the global micro-batch).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from dfcl_jax.inversion import losses
from dfcl_jax.inversion.chunked import ChunkedLoop
from dfcl_jax.inversion.loop_defaults import resolve_loop_options, with_loop_defaults
from dfcl_jax.models.blocks import BlockClassifier, BNMoments, apply_with_bn_moments
from dfcl_jax.train.mesh import batch_sharding


@dataclasses.dataclass(frozen=True)
class PMIConfig:
    """PMI inversion constants; defaults are the ResNet-32 reference (methods.md 3.3)."""

    block_steps: int = 50  # Adam steps per block
    block_lr: float = 0.8
    a_mse: float = 1.0  # feature/activation alignment weight
    rf_per_block: float = 5.0  # a_rf = rf_per_block * L (reference: 0.25 * 20 = 5, a_rf = 80 at L = 16)
    input_prior: bool = True  # KL of x_i's channel statistics to the previous block's last BN affine
    boost: bool = True  # double a term's weight while it exceeds its initial value
    boost_cap_mse: float = 10.0
    boost_cap_bn: float = 10.0
    boost_cap_input: float = 5.0
    full_steps: int = 160  # full-model refinement steps
    full_lr: float = 0.4
    full_warmup: int = 5
    full_milestones: tuple[int, ...] = (80, 120)
    full_decay: float = 0.5
    full_bn: float = 0.25  # BN-KL weight of the full-model phase (summed over all BatchNorms)
    keep_best: bool = True
    # Keep a block's input >= 0 when the previous block ends in a ReLU (its output can be nothing
    # else); the reference leaves it unconstrained. The initialisation is rectified as well.
    nonneg_after_relu: bool = False
    # CLIP variant (methods.md 3.3): invert down to the input of block `first_block` (1: the
    # patch-embedding token map), that block's solve runs `first_block_steps` steps (0: block_steps)
    # starting at `progressive` resolutions, each upsampled (bicubic) to the next at the steps in
    # `progressive_at`, ending at the full size; the full-model phase may use a cosine schedule and
    # a TV prior on its input.
    first_block: int = 0
    first_block_steps: int = 0
    progressive: tuple[int, ...] = ()  # e.g. (2, 4, 8): 2 -> 4 -> 8 -> full (14)
    progressive_at: tuple[int, ...] = ()  # e.g. (300, 600, 900)
    rf_scale_by_blocks: bool = True  # a_rf = rf_per_block * L (ResNet); False: a_rf = rf_per_block
    full_schedule: str = "step"  # "step": warm-up + milestones; "cosine": cosine to 0 over
    full_cosine_steps: int = 2000  # ... this many steps (torch CosineAnnealingLR T_max)
    full_tv: float = 0.0  # total variation on the full-model phase's input (CLIP: 0.005)
    micro_batch: int = 4000  # targets solved together (memory bound; BN statistics over these)
    chunk: int | str = "auto"  # steps per jitted call; "auto": CPU 10, GPU/TPU 50 (loop_defaults)
    unroll: bool | str = "auto"  # unroll each chunk (XLA:CPU while loops are slow); "auto": CPU only

    def validate(self) -> None:
        resolve_loop_options(self.unroll, self.chunk, field="pmi")
        for f in ("block_lr", "full_lr", "a_mse", "micro_batch", "block_steps", "full_steps"):
            if getattr(self, f) <= 0:
                raise ValueError(f"pmi.{f}={getattr(self, f)} must be > 0")
        for f in ("full_warmup", "rf_per_block", "full_bn"):
            if getattr(self, f) < 0:
                raise ValueError(f"pmi.{f}={getattr(self, f)} must be >= 0")
        for f in ("boost_cap_mse", "boost_cap_bn", "boost_cap_input"):
            if getattr(self, f) < 1:
                raise ValueError(f"pmi.{f}={getattr(self, f)} must be >= 1")
        for f in ("first_block", "first_block_steps", "full_tv"):
            if getattr(self, f) < 0:
                raise ValueError(f"pmi.{f}={getattr(self, f)} must be >= 0")
        if self.full_schedule not in ("step", "cosine"):
            raise ValueError(f"pmi.full_schedule={self.full_schedule!r}; allowed: step, cosine")
        if len(self.progressive) != len(self.progressive_at):
            raise ValueError(f"pmi.progressive={tuple(self.progressive)} and pmi.progressive_at="
                             f"{tuple(self.progressive_at)} must have the same length")
        at = tuple(self.progressive_at)
        if at and (list(at) != sorted(set(at)) or at[0] <= 0
                   or at[-1] >= (self.first_block_steps or self.block_steps)):
            raise ValueError(f"pmi.progressive_at={at} must increase within (0, first_block_steps)")


class PMIResult(NamedTuple):
    images: jax.Array  # (N, H, W, C) normalised image space
    block_curves: list  # per block (first .. last): the per-step total loss of its solve
    block_terms: list  # per block: {"mse", "bn", "input"} at the first and the kept iterate
    full_curve: np.ndarray  # per-step loss of the full-model phase (all micro-batches concatenated)
    feature_mse: float  # MSE(pool(f(images)), z) of the returned images (eval mode)
    bn_kl: float  # sum over every BatchNorm of kl_pmi, mean over micro-batches


def input_prior_moments(x, prior_bn) -> BNMoments:
    """PMI KL_in: x's channel moments against N(beta, gamma^2) of the previous block's last BN."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return BNMoments(mean, var, prior_bn["bias"], jnp.square(prior_bn["scale"]))


def last_bn_affine(block_params) -> dict:
    """The affine (scale, bias) of the BatchNorm that ends a block's main branch."""
    for name in ("bn_1", "bn_0"):
        if name in block_params and "scale" in block_params[name]:
            return block_params[name]
    raise ValueError(f"block has no affine BatchNorm named bn_1/bn_0 (has {sorted(block_params)})")


def ends_in_relu(block) -> bool:
    """Whether a block's output passes a ReLU last (stems and BasicBlocks unless last_relu=False)."""
    return bool(getattr(block, "last_relu", type(block).__name__ == "StemBlock"))


def boosted(weight, base, current, initial, cap: float, enabled: bool):
    """PMI boost rule: double a term's weight while it exceeds its initial value (at most cap x)."""
    if not enabled:
        return weight
    return jnp.where(current > initial, jnp.minimum(2.0 * weight, cap * base), weight)


def full_model_schedule(cfg: PMIConfig) -> optax.Schedule:
    """Linear warm-up, then x`full_decay` at each milestone (PMI full-model phase); or, with
    `full_schedule="cosine"`, cosine annealing to 0 over `full_cosine_steps` (CLIP variant)."""
    if cfg.full_schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.full_lr, cfg.full_cosine_steps)
    boundaries = {m - cfg.full_warmup: cfg.full_decay for m in cfg.full_milestones
                  if m > cfg.full_warmup}
    decay = optax.piecewise_constant_schedule(cfg.full_lr, boundaries)
    if not cfg.full_warmup:
        return decay
    # lr * (step + 1) / warmup for the first `full_warmup` steps.
    warm = optax.linear_schedule(cfg.full_lr / cfg.full_warmup, cfg.full_lr, max(cfg.full_warmup - 1, 1))
    return optax.join_schedules([warm, decay], [cfg.full_warmup])


class PMIInverter:
    """Per-layer + full-model inversion of one model architecture; compiled solves are cached."""

    def __init__(self, model: BlockClassifier, cfg: PMIConfig = PMIConfig(), mesh=None):
        cfg.validate()
        cfg = with_loop_defaults(cfg)
        self.model, self.cfg, self.mesh = model, cfg, mesh
        self.L = len(model.blocks)
        self.first = cfg.first_block
        if not 0 <= self.first < self.L:
            raise ValueError(f"pmi.first_block={self.first} must be in [0, {self.L})")
        self.a_rf = cfg.rf_per_block * (self.L if cfg.rf_scale_by_blocks else 1)
        self._block_loops: dict[int, tuple] = {}
        self._full_loop = None
        self._shapes: dict = {}
        self._features = jax.jit(lambda v, x: model.apply(v, x, self.first, method=model.features_from))
        self.traces: dict[str, int] = {}  # how often each solve was traced (compile-once checks)

    # ------------------------------------------------------------------------ the block losses
    def block_loss(self, variables, i: int, x, target, weights, full_shape=None):
        """PMI per-layer objective for block i (Sec. 3.3 step 1): (total, base-weighted, terms).

        `full_shape`: x is a low-resolution input, upsampled to it first (progressive; Keys
        bicubic, a = -0.5, as `jax.image.resize`; torch's bicubic uses a = -0.75)."""
        if full_shape is not None and tuple(x.shape) != tuple(full_shape):
            x = jax.image.resize(x, full_shape, "cubic")
        y, moments = apply_with_bn_moments(self.model, variables, x, i, i + 1, False,
                                           method=BlockClassifier.run_blocks)
        if i == self.L - 1:
            y = self.model.pool_features(y)
        terms = {"mse": losses.feature_matching(y, target),
                 "bn": losses.bn_kl_pmi(moments) if moments else jnp.zeros(()),
                 "input": jnp.zeros(())}
        if i > self.first and self.cfg.input_prior:
            prior = last_bn_affine(variables["params"][f"blocks_{i - 1}"])
            terms["input"] = losses.bn_kl_pmi([input_prior_moments(x, prior)])
        w_mse, w_bn, w_in = weights
        total = w_mse * terms["mse"] + self.a_rf * (w_bn * terms["bn"] + w_in * terms["input"])
        base = self.cfg.a_mse * terms["mse"] + self.a_rf * (terms["bn"] + terms["input"])
        return total, (base, terms)

    def full_loss(self, variables, x, z, weights):
        """PMI full-model objective (Sec. 3.3 step 2): MSE to z + full_bn * BN-KL over all BNs
        (+ full_tv * TV of the input: the CLIP variant's prior on the token map)."""
        f, moments = apply_with_bn_moments(self.model, variables, x, self.first, False,
                                           method=BlockClassifier.features_from)
        terms = {"mse": losses.feature_matching(f, z),
                 "bn": losses.bn_kl_pmi(moments) if moments else jnp.zeros(())}
        w_mse, w_bn = weights
        tv = self.cfg.full_tv * losses.total_variation(x) if self.cfg.full_tv else 0.0
        total = w_mse * terms["mse"] + self.cfg.full_bn * w_bn * terms["bn"] + tv
        base = self.cfg.a_mse * terms["mse"] + self.cfg.full_bn * terms["bn"] + tv
        return total, (base, terms)

    # ------------------------------------------------------------------------- the solvers
    def _adam_loop(self, name: str, loss_fn, tx, caps: tuple[float, ...], nonneg: bool = False):
        """A ChunkedLoop of Adam steps on x with boosted weights and keep-best in the carry."""
        cfg = self.cfg
        grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)

        keys = ("mse", "bn", "input")[:len(caps)]
        base_weights = self._base_weights(len(caps))

        def one_step(carry, step, variables, target, _):
            self.traces[name] = self.traces.get(name, 0) + 1  # runs once per trace
            x, opt_state, weights, initial, best_x, best, best_terms = carry
            (_, (base, terms)), g = grad_fn(variables, x, target, weights)
            # The first step fixes the reference values of the boost rule.
            initial = {k: jnp.where(step == 0, terms[k], initial[k]) for k in keys}
            weights = tuple(boosted(w, b, terms[k], initial[k], cap, cfg.boost)
                            for w, b, k, cap in zip(weights, base_weights, keys, caps))
            # Keep-best as the reference: score each iterate before its update (the iterate after
            # the last update is not scored), by the loss at the base (un-boosted) weights.
            better = base < best if cfg.keep_best else jnp.asarray(True)
            best_x = jnp.where(better, x, best_x)
            best = jnp.where(better, base, best)
            best_terms = {k: jnp.where(better, terms[k], best_terms[k]) for k in keys}
            updates, opt_state = tx.update(g, opt_state, x)
            x = optax.apply_updates(x, updates)
            if nonneg:  # the input of a block that follows a ReLU: stay in the reachable set
                x = jnp.maximum(x, 0.0)
            carry = (x, opt_state, weights, initial, best_x, best, best_terms)
            return carry, {"loss": base, **terms}

        return ChunkedLoop(one_step, cfg.chunk, cfg.unroll)

    def _base_weights(self, n: int) -> tuple:
        return (self.cfg.a_mse, 1.0, 1.0)[:n]

    def block_loop(self, i: int, full_shape=None, stage: int = 0):
        """The solve of block i (`full_shape`: its input is a `stage` x `stage` x, upsampled)."""
        key = i if full_shape is None else (i, tuple(full_shape), stage)
        if key not in self._block_loops:
            tx = optax.adam(self.cfg.block_lr)
            fn = lambda variables, x, target, w: self.block_loss(variables, i, x, target, w,
                                                                 full_shape)
            caps = (self.cfg.boost_cap_mse, self.cfg.boost_cap_bn, self.cfg.boost_cap_input)
            nonneg = self.cfg.nonneg_after_relu and i > 0 and ends_in_relu(self.model.blocks[i - 1])
            name = f"block_{i}" if full_shape is None else f"block_{i}_at_{stage}"
            self._block_loops[key] = (tx, self._adam_loop(name, fn, tx, caps, nonneg))
        return self._block_loops[key]

    def full_loop(self):
        if self._full_loop is None:
            tx = optax.adam(full_model_schedule(self.cfg))
            caps = (self.cfg.boost_cap_mse, self.cfg.boost_cap_bn)
            self._full_loop = (tx, self._adam_loop("full", self.full_loss, tx, caps))
        return self._full_loop

    def _solve(self, loop_parts, variables, x0, target, steps: int, n_terms: int, desc: str,
               progress: bool):
        tx, loop = loop_parts
        carry = self.initial_carry(tx, x0, n_terms)
        carry, history = loop.run(carry, steps, (variables, target, jnp.zeros(())),
                                  progress=progress, desc=desc,
                                  carry_sharding=self.carry_sharding(carry))
        x, _, _, _, best_x, _, best_terms = carry
        if self.cfg.keep_best:
            return best_x, history, best_terms
        keys = ("mse", "bn", "input")[:n_terms]
        return x, history, {k: v[-1] for k, v in history.items() if k in keys}

    def initial_carry(self, tx, x0, n_terms: int) -> tuple:
        """The carry of an Adam loop (`block_loop`, `full_loop`) starting at x0, on the mesh."""
        keys = ("mse", "bn", "input")[:n_terms]
        weights = tuple(jnp.asarray(w, jnp.float32) for w in self._base_weights(n_terms))
        initial = {k: jnp.zeros((), jnp.float32) for k in keys}
        best_terms = {k: jnp.zeros((), jnp.float32) for k in keys}
        carry = (x0, tx.init(x0), weights, initial, jnp.copy(x0), jnp.asarray(jnp.inf, jnp.float32),
                 best_terms)
        return self._place(carry, x0.shape[0])

    def carry_sharding(self, carry):
        """Where an Adam loop's carry lives: image-shaped leaves along "data", the rest
        replicated (None without a mesh); kept by every chunk of the loop."""
        return batch_sharding(self.mesh, carry, carry[0].shape[0])

    def _place(self, tree, batch: int):
        """Shard batch-leading leaves over the mesh's data axis, replicate the rest."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, batch_sharding(self.mesh, tree, batch))

    def input_shapes(self, variables, image_shape, batch: int) -> list[tuple]:
        """Shape of the input of every block for a batch of `batch` images (cached)."""
        key = (tuple(image_shape), batch)
        if key not in self._shapes:
            self._shapes[key] = self._input_shapes(variables, image_shape, batch)
        return self._shapes[key]

    def _input_shapes(self, variables, image_shape, batch: int) -> list[tuple]:
        """Entries before `first_block` are None; `image_shape` is the input of `first_block`."""
        shapes, x = [None] * self.first, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
        for i in range(self.first, self.L):
            shapes.append(tuple(x.shape))
            x = jax.eval_shape(lambda v, a, i=i: self.model.apply(
                v, a, i, i + 1, False, method=BlockClassifier.run_blocks), variables, x)
        return shapes

    # --------------------------------------------------------------------------- the phases
    def initial_input(self, variables, i: int, shape, rng):
        """x_i at the start of its solve: eps * gamma + beta of the previous block's last BN
        (ResNets), N(mean, var) of a model's reference input statistics (`input_reference`,
        CLIP), else N(0, 1) (the image)."""
        eps = jax.random.normal(rng, shape, jnp.float32)
        if hasattr(self.model, "input_reference"):
            ref = self.model.input_reference(variables, i)
            return eps if ref is None else eps * jnp.sqrt(ref[1]) + ref[0]
        if i == 0:
            return eps
        prior = last_bn_affine(variables["params"][f"blocks_{i - 1}"])
        x0 = eps * prior["scale"] + prior["bias"]
        if self.cfg.nonneg_after_relu and ends_in_relu(self.model.blocks[i - 1]):
            x0 = jnp.maximum(x0, 0.0)
        return x0

    def progressive_stages(self, full_shape) -> list[tuple[tuple, int]]:
        """(input shape, steps) of each resolution stage of the first inverted block's solve."""
        steps = self.cfg.first_block_steps or self.cfg.block_steps
        if not self.cfg.progressive:
            return [(tuple(full_shape), steps)]
        b, *_, d = full_shape
        bounds = [0, *self.cfg.progressive_at, steps]
        sizes = [*self.cfg.progressive, None]
        return [((b, s, s, d) if s else tuple(full_shape), bounds[j + 1] - bounds[j])
                for j, s in enumerate(sizes)]

    def solve_first_block(self, variables, target, full_shape, rng, progress: bool = False):
        """The first inverted block: progressive resolutions (CLIP: 2 -> 4 -> 8 -> 14 at steps
        300/600/900), each stage initialised by upsampling the previous one's kept iterate."""
        i = self.first
        curves, x = [], None
        for shape, steps in self.progressive_stages(full_shape):
            if x is None:
                x0 = self.initial_input(variables, i, shape, rng)
            else:
                x0 = jax.image.resize(x, shape, "cubic")
            low = shape != tuple(full_shape)
            loop = self.block_loop(i, full_shape if low else None, shape[1])
            x, history, terms = self._solve(loop, variables, x0, target, steps, 3,
                                            f"block {i + 1} @{shape[1]}", progress)
            curves.append(history.get("loss", np.zeros(0)))
        return x, np.concatenate(curves), history, terms

    def per_layer_inversion(self, variables, z, image_shape, rng, progress: bool = True):
        """PMI Sec. 3.3 step 1: invert blocks L..first in turn; returns x_first* and per-block
        records (None for blocks before `first_block`)."""
        shapes = self.input_shapes(variables, image_shape, z.shape[0])
        target, curves, records = z, [None] * self.L, [None] * self.L
        for i in tqdm(range(self.L - 1, self.first - 1, -1), desc="PMI blocks", leave=False,
                      disable=not progress or None):
            k = jax.random.fold_in(rng, i)
            if i == self.first:
                x, curve, history, terms = self.solve_first_block(variables, target, shapes[i], k)
            else:
                x0 = self.initial_input(variables, i, shapes[i], k)
                x, history, terms = self._solve(self.block_loop(i), variables, x0, target,
                                                self.cfg.block_steps, 3, f"block {i + 1}", False)
                curve = history.get("loss", np.zeros(0))
            curves[i] = curve
            records[i] = {"first": {k: float(v[0]) for k, v in history.items()} if history else {},
                          "kept": {k: float(v) for k, v in terms.items()}}
            target = x
        return target, curves, records

    def full_model_refinement(self, variables, x0, z, progress: bool = True,
                              steps: int | None = None):
        """PMI Sec. 3.3 step 2: Adam on the image against feature MSE + BN-KL (keep-best).

        `steps` (default `full_steps`) stops the same schedule earlier or later without a new
        compilation. The solve donates its start, so this public entry works on a copy: the
        caller's `x0` stays usable (e.g. several refinements from one start in a notebook)."""
        return self._refine(variables, jnp.array(x0, copy=True), z, progress, steps)

    def _refine(self, variables, x0, z, progress: bool, steps: int | None = None):
        """`full_model_refinement` consuming `x0` (its buffer is donated to the solve)."""
        steps = self.cfg.full_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"full-model steps={steps} must be >= 1")
        x, history, terms = self._solve(self.full_loop(), variables, x0, z, steps,
                                        2, "PMI full model", progress)
        return x, history.get("loss", np.zeros(0)), terms

    def micro_batches(self, n: int) -> tuple[int, int]:
        """(groups, rows per group): rows = `micro_batch` (one compiled shape for every task) or n
        when n is smaller; the last group is padded with repeated targets."""
        rows = min(n, self.cfg.micro_batch)
        return math.ceil(n / rows), rows

    def warmup(self, variables, z, image_shape) -> float:
        """Compile every solve for the micro-batch shape of `z` (one chunk each); returns seconds."""
        start = time.perf_counter()
        rows = self.micro_batches(z.shape[0])[1]
        zg = self._place(jnp.asarray(z[:rows], jnp.float32), rows)
        shapes = self.input_shapes(variables, image_shape, rows)
        x, target = None, zg
        for i in range(self.L - 1, self.first - 1, -1):
            stages = self.progressive_stages(shapes[i]) if i == self.first else [(shapes[i], 1)]
            for shape, _ in stages:
                x0 = jnp.full(shape, 0.1, jnp.float32)  # float32, not weakly typed: as in invert()
                full = shapes[i] if shape != tuple(shapes[i]) else None
                x, _, _ = self._solve(self.block_loop(i, full, shape[1]), variables, x0, target,
                                      min(self.cfg.chunk, self.cfg.block_steps), 3, "", False)
            target = x
        x, _, _ = self._solve(self.full_loop(), variables, x, zg,
                              min(self.cfg.chunk, self.cfg.full_steps), 2, "", False)
        jax.block_until_ready(self._features(variables, x))
        return time.perf_counter() - start

    def invert(self, variables, z, image_shape, rng, progress: bool = True) -> PMIResult:
        """Synthesise one image per target feature (rows of z): per-layer, then full model."""
        z = jnp.asarray(z, jnp.float32)
        n = z.shape[0]
        groups, rows = self.micro_batches(n)
        padded = jnp.concatenate([z, z[jnp.arange(groups * rows - n) % n]]) if groups * rows > n else z
        images, full_curves, block_curves, block_terms, bnkl = [], [], None, None, []
        for g in range(groups):
            zg = self._place(padded[g * rows:(g + 1) * rows], rows)
            k = jax.random.fold_in(rng, g)
            x1, curves, records = self.per_layer_inversion(variables, zg, image_shape, k, progress)
            x, curve, terms = self._refine(variables, x1, zg, progress)  # x1 not reused
            images.append(x)
            full_curves.append(curve)
            block_curves = block_curves or curves
            block_terms = block_terms or records
            bnkl.append(float(terms["bn"]))
        x = jnp.concatenate(images)[:n]
        feats = jnp.concatenate([self._features(variables, x[i:i + rows]) for i in range(0, n, rows)])
        return PMIResult(x, block_curves, block_terms, np.concatenate(full_curves),
                         float(losses.feature_matching(feats, z)), float(np.mean(bnkl)))


def full_model_inversion(inverter: PMIInverter, variables, z, image_shape, rng, steps: int,
                         progress: bool = True):
    """Baseline: the full-model phase alone, from the first block's initial input (N(0, 1) noise
    for images), for `steps` steps."""
    x0 = inverter.initial_input(variables, inverter.first, (z.shape[0], *image_shape), rng)
    cfg = dataclasses.replace(inverter.cfg, full_steps=steps)
    plain = PMIInverter(inverter.model, cfg, inverter.mesh)
    return plain.full_model_refinement(variables, x0, jnp.asarray(z, jnp.float32), progress)
