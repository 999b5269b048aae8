"""Privacy / data-free audit of a finished (or interrupted) run's workdir (protocols.md sec. 1).

(a) Persisted real data: every array of every orbax checkpoint and of every `.npy`, `.npz` and
    JSON artefact is checked for per-sample image-shaped rows (trailing dimensions equal to the
    image shape, or flattened to it). Such rows are decoded (uint8, [0, 1], [0, 255] or normalised
    with the dataset's mean/std) and compared with the real training images: exactly (hashing the
    uint8 pixels) and as near copies (RMS pixel distance <= `near_tol` in [0, 1] units). A data-free
    learner must persist none; coreset learners (`data_free = False`) store real images by design
    and are reported as the labelled exception.
(b) Memorisation: for synthetic images (the learner's `sample_synthetic`, and stored image-shaped
    arrays that are not real), the L2 distance to the nearest real training image versus the
    typical real-to-real nearest-neighbour distance (a memorisation ratio; << 1 means synthetic
    images sit closer to training images than training images sit to each other), with the closest
    pairs saved as a PNG.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np

AUDIT_DIR = "audit"  # outputs; skipped by the scan (its PNG shows real images on purpose)
ARRAY_EXTS = (".npy", ".npz")
JSON_EXTS = (".json", ".jsonl")


# ----------------------------------------------------------------------------- reading a workdir
def _is_orbax_item(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(
        os.path.join(path, "manifest.ocdbt"))


def _restore_orbax(path: str):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)


def _leaves(tree, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """(key path, array) of every array-like leaf of nested dicts/lists."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}[{k!r}]")
        return
    if isinstance(tree, (list, tuple)):
        arr = None
        try:  # rectangular numeric lists (JSON) are arrays too
            arr = np.asarray(tree)
        except ValueError:
            pass
        if arr is not None and arr.dtype.kind in "biuf" and arr.ndim >= 2:
            yield prefix, arr
            return
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}[{i}]")
        return
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        yield prefix, np.asarray(tree)


def _read_json(path: str):
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # JSON lines
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def iter_workdir_arrays(workdir: str, skipped: list[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(location relative to workdir, key path, array) for every array the run persisted.

    Files that are neither checkpoints nor array/JSON artefacts are appended to `skipped`.
    """
    workdir = os.path.abspath(workdir)
    for root, dirs, files in os.walk(workdir):
        rel = os.path.relpath(root, workdir)
        if rel.split(os.sep)[0] == AUDIT_DIR:
            dirs[:] = []
            continue
        if _is_orbax_item(root):
            dirs[:] = []
            for key, arr in _leaves(_restore_orbax(root)):
                yield rel, key, arr
            continue
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            loc = os.path.relpath(path, workdir)
            ext = os.path.splitext(name)[1].lower()
            try:
                if ext == ".npy":
                    yield loc, "", np.load(path, allow_pickle=False)
                elif ext == ".npz":
                    with np.load(path, allow_pickle=False) as z:
                        for k in z.files:
                            yield loc, f"[{k!r}]", z[k]
                elif ext in JSON_EXTS or (name == "metadata" and os.path.getsize(path) < 50e6):
                    for key, arr in _leaves(_read_json(path)):
                        yield loc, key, arr
                elif name not in ("commit_success.txt", "_CHECKPOINT_METADATA", ".write_test"):
                    skipped.append(loc)
            except (OSError, ValueError) as e:
                skipped.append(f"{loc} (unreadable: {type(e).__name__})")


# ----------------------------------------------------------------------------- matching real data
def image_rows(arr: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray | None:
    """`arr` as (N, H, W, C) per-sample images if its trailing dims are image-shaped, else None."""
    h, w, c = image_shape
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        return None
    # (..., H, W, C) stacks; for single-channel data also (N, H, W) and flattened (N, H*W*C)
    # rows, with exactly that rank (a (3, 3, 32, 32) convolution kernel is not 9 images).
    if arr.ndim >= 3 and tuple(arr.shape[-3:]) == (h, w, c):
        return arr.reshape(-1, h, w, c)
    if c == 1 and arr.ndim == 3 and tuple(arr.shape[-2:]) == (h, w):
        return arr.reshape(-1, h, w, 1)
    if arr.ndim == 2 and arr.shape[-1] == h * w * c:
        return arr.reshape(-1, h, w, c)
    return None


def decodings(rows: np.ndarray, mean, std) -> dict[str, np.ndarray]:
    """Candidate [0, 1] versions of stored rows: how the run may have encoded real pixels."""
    if rows.dtype == np.uint8:
        return {"uint8": rows.astype(np.float32) / 255.0}
    x = rows.astype(np.float32)
    out = {"normalised": x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)}
    lo, hi = float(x.min()), float(x.max())
    if lo >= -1e-6 and hi <= 1.0 + 1e-6:
        out["unit"] = x
    if lo >= -1e-6 and hi <= 255.0 + 1e-3 and hi > 1.5:
        out["0-255"] = x / 255.0
    return out


class RealImages:
    """The dataset's real training images: exact lookup by pixels, nearest neighbours in [0, 1]."""

    def __init__(self, images_uint8: np.ndarray, pool: np.ndarray | None = None):
        self.images = images_uint8
        self.hash = {img.tobytes(): i for i, img in enumerate(images_uint8)}
        self.pool = np.arange(len(images_uint8)) if pool is None else np.asarray(pool)
        flat = images_uint8[self.pool].reshape(len(self.pool), -1).astype(np.float32) / 255.0
        self.flat, self.sq = flat, np.sum(flat * flat, axis=1)

    def exact(self, unit: np.ndarray) -> np.ndarray:
        """Index of the real image each row equals exactly after rounding to uint8 (-1: none)."""
        scaled = unit * 255.0
        q = np.rint(scaled)
        out = np.full(len(unit), -1, np.int64)
        ok = np.all(np.abs(scaled - q).reshape(len(unit), -1) < 1e-3, axis=1)
        ok &= np.all((q >= 0) & (q <= 255), axis=tuple(range(1, unit.ndim)))
        for i in np.flatnonzero(ok):
            out[i] = self.hash.get(q[i].astype(np.uint8).tobytes(), -1)
        return out

    def nearest(self, unit: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 8192):
        """(L2 distance, dataset index) of each row's nearest pool image in [0, 1] pixels;
        `exclude[i]` (a dataset index) is not a candidate for row i."""
        q = unit.reshape(len(unit), -1).astype(np.float32)
        qsq = np.sum(q * q, axis=1)
        best = np.full(len(q), np.inf, np.float32)
        arg = np.zeros(len(q), np.int64)
        for s in range(0, len(self.flat), chunk):
            d = qsq[:, None] + self.sq[None, s:s + chunk] - 2.0 * q @ self.flat[s:s + chunk].T
            if exclude is not None:
                d[self.pool[None, s:s + chunk] == exclude[:, None]] = np.inf
            j = np.argmin(d, axis=1)
            v = d[np.arange(len(q)), j]
            better = v < best
            best[better], arg[better] = v[better], s + j[better]
        return np.sqrt(np.maximum(best, 0.0)), self.pool[arg]


@dataclasses.dataclass
class ArrayFinding:
    """One image-shaped array the run persisted."""

    location: str  # checkpoint item or file, relative to the workdir
    key: str  # path inside it
    shape: tuple
    dtype: str
    rows: int  # per-sample images in it
    encoding: str  # how its pixels decode best ("uint8", "unit", "0-255", "normalised")
    exact_real: int  # rows equal to a real training image
    near_real: int  # further rows within near_tol RMS of a real training image
    real_tasks: list  # tasks (of the run's split) of the matched real images
    blank_rows: int  # constant rows (unfilled buffer slots)

    @property
    def real(self) -> int:
        return self.exact_real + self.near_real


def examine_array(location, key, arr, image_shape, real: RealImages, mean, std, near_tol: float,
                  task_of_index) -> tuple[ArrayFinding, np.ndarray] | None:
    """The finding for one array (None when it is not image-shaped) and its non-real, non-blank
    rows decoded to [0, 1] (synthetic candidates)."""
    rows = image_rows(arr, image_shape)
    if rows is None:
        return None
    flat = rows.reshape(len(rows), -1)
    blank = np.all(flat == flat[:, :1], axis=1)
    best_name, best_unit, best_idx = None, None, None
    for name, unit in decodings(rows, mean, std).items():
        idx = real.exact(unit)
        if best_idx is None or (idx >= 0).sum() > (best_idx >= 0).sum():
            best_name, best_unit, best_idx = name, unit, idx
    exact = (best_idx >= 0) & ~blank
    rest = ~exact & ~blank
    near = np.zeros(len(rows), bool)
    if rest.any():
        d, j = real.nearest(best_unit[rest])
        rms = d / np.sqrt(flat.shape[1])
        near[np.flatnonzero(rest)] = rms <= near_tol
        best_idx = best_idx.copy()
        best_idx[np.flatnonzero(rest)[rms <= near_tol]] = j[rms <= near_tol]
    matched = best_idx[exact | near]
    tasks = sorted({int(t) for t in task_of_index(matched)}) if len(matched) else []
    finding = ArrayFinding(location, key, tuple(int(s) for s in arr.shape), str(arr.dtype),
                           len(rows), best_name, int(exact.sum()), int(near.sum()), tasks,
                           int(blank.sum()))
    return finding, best_unit[rest & ~near]


# ----------------------------------------------------------------------------- memorisation
def memorisation(synthetic_unit: np.ndarray, real: RealImages, rng: np.random.Generator,
                 n_real: int = 256) -> dict:
    """Nearest-real distances of synthetic images against the real-to-real nearest-neighbour
    distances of `n_real` pool images (L2 in [0, 1] pixel units); the ratios of their medians
    and of the closest synthetic image to the real median."""
    d_syn, nn = real.nearest(synthetic_unit)
    pick = real.pool[rng.choice(len(real.pool), min(n_real, len(real.pool)), replace=False)]
    d_real, _ = real.nearest(real.images[pick].astype(np.float32) / 255.0, exclude=pick)
    med = float(np.median(d_real))
    return {"num_synthetic": len(d_syn), "num_real_reference": len(d_real),
            "synthetic_to_real_median": float(np.median(d_syn)),
            "synthetic_to_real_min": float(d_syn.min()),
            "real_to_real_median": med,
            "memorisation_ratio": float(np.median(d_syn)) / max(med, 1e-12),
            "closest_ratio": float(d_syn.min()) / max(med, 1e-12),
            "fraction_closer_than_median_real_pair": float(np.mean(d_syn < med)),
            "_distances": d_syn, "_nearest": nn}


def plot_closest_pairs(path: str, synthetic_unit: np.ndarray, real: RealImages,
                       distances: np.ndarray, nearest: np.ndarray, k: int = 8,
                       title: str = "") -> None:
    """The `k` synthetic images closest to a real training image (top) above that image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(distances)[:k]
    fig, axes = plt.subplots(2, len(order), figsize=(1.4 * len(order), 3.2), squeeze=False)
    for col, i in enumerate(order):
        for row, img in enumerate((synthetic_unit[i], real.images[nearest[i]] / 255.0)):
            ax = axes[row, col]
            ax.imshow(np.clip(img.squeeze(-1) if img.shape[-1] == 1 else img, 0, 1),
                      cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, col].set_title(f"d={distances[i]:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the audit
def _load_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json (not a run's workdir)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _latest_state(exp):
    """The run's latest checkpointed RunState (None when there is no checkpoint)."""
    import jax

    from dfcl_jax.train.checkpoint import RunCheckpointer
    from dfcl_jax.train.state import init_run_state

    ckpt = RunCheckpointer(os.path.join(exp.workdir, "checkpoints"))
    try:
        if ckpt.latest() is None:
            return None
        sample = np.zeros((1, *exp.data.image_shape), np.float32)
        abstract = init_run_state(exp.model, exp.config.train, jax.random.key(exp.config.seed),
                                  sample, exp.method)
        return ckpt.restore_state(abstract)
    finally:
        ckpt.close()


def audit_run(workdir: str, *, strict: bool = False, num_synthetic: int = 256,
              near_tol: float = 0.02, seed: int = 0, write: bool = True) -> dict:
    """Audit `workdir` (see the module docstring); writes `workdir/audit/` when `write`.

    Verdict: "fail" when a data-free learner persisted real images (or, with `strict`, when any
    learner did); "exception" when a coreset learner did (allowed, labelled); "pass" otherwise.
    """
    from dfcl_jax.train.loop import build_experiment

    workdir = os.path.abspath(workdir)
    config = _load_config(workdir)
    # Other runs it started from or compares with are not part of this run's artefacts.
    config.first_task_from, config.upper_bound_workdir = "", ""
    exp = build_experiment(config, workdir)
    data, method = exp.data, exp.method
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    real = RealImages(data.train_images, exp.train_pool)

    def task_of_index(ix):
        return exp.splits.task_of(exp.train_labels[np.asarray(ix, np.int64)])

    findings, synthetic, skipped = [], {}, []
    arrays = 0
    latest = _latest_location(workdir)
    for loc, key, arr in iter_workdir_arrays(workdir, skipped):
        arrays += 1
        out = examine_array(loc, key, arr, data.image_shape, real, mean, std, near_tol,
                            task_of_index)
        if out is None:
            continue
        finding, candidates = out
        findings.append(finding)
        if len(candidates) and loc == latest:  # stored synthetic sets, once (latest checkpoint)
            synthetic[f"stored {key}"] = candidates
    if hasattr(method, "sample_synthetic"):
        import jax

        state = _latest_state(exp)
        if state is not None:
            rng = jax.random.fold_in(jax.random.key(seed), 7000)
            images, _ = method.sample_synthetic(exp.model, state, rng, num_synthetic,
                                                exp.splits.n_seen(config.data.num_tasks - 1))
            synthetic["sample_synthetic"] = np.asarray(exp.augmentation.denormalize(images))

    persisted = sum(f.real for f in findings)
    if persisted and (method.data_free or strict):
        verdict = "fail"
    elif persisted:
        verdict = "exception"
    else:
        verdict = "pass"
    report = {
        "workdir": workdir, "method": config.method.name, "data_free": bool(method.data_free),
        "strict": strict, "verdict": verdict, "near_tol_rms": near_tol,
        "arrays_scanned": arrays, "real_images_persisted": persisted,
        "image_shaped_arrays": [dataclasses.asdict(f) for f in findings],
        "not_scanned": skipped, "memorisation": {},
    }
    if verdict == "exception":
        report["exception"] = (f"{config.method.name} is a coreset baseline: it stores real "
                               "images by design (protocols.md sec. 1, the labelled exception)")
    out_dir = os.path.join(workdir, AUDIT_DIR)
    if write:
        os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, unit in synthetic.items():
        m = memorisation(unit[:num_synthetic], real, rng)
        d, nn = m.pop("_distances"), m.pop("_nearest")
        if write:
            fname = "closest_pairs_" + "".join(ch if ch.isalnum() else "_" for ch in name)
            fname = fname.strip("_")[:80] + ".png"
            plot_closest_pairs(os.path.join(out_dir, fname), unit[:num_synthetic], real, d, nn,
                               title=f"{config.method.name}: {name} (memorisation ratio "
                                     f"{m['memorisation_ratio']:.2f})")
            m["closest_pairs_png"] = os.path.join(AUDIT_DIR, fname)
        report["memorisation"][name] = m
    if write:
        with open(os.path.join(out_dir, "audit.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(out_dir, "audit.md"), "w") as f:
            f.write(format_report(report))
    return report


def _latest_location(workdir: str) -> str | None:
    """The latest checkpoint's state item, relative to the workdir."""
    ck = os.path.join(workdir, "checkpoints")
    steps = sorted((int(s) for s in os.listdir(ck) if s.isdigit()), reverse=True) if (
        os.path.isdir(ck)) else []
    return os.path.join("checkpoints", str(steps[0]), "state") if steps else None


def format_report(report: dict) -> str:
    """The audit as Markdown."""
    kind = "data-free" if report["data_free"] else "stores real data"
    lines = [f"# Data-free audit: {report['method']} ({kind})",
             "", f"Verdict: **{report['verdict']}**", ""]
    if report.get("exception"):
        lines += [report["exception"], ""]
    lines += [f"{report['arrays_scanned']} arrays scanned; real training images persisted "
              f"(exact or within {report['near_tol_rms']} RMS): {report['real_images_persisted']}",
              "", "| where | key | shape | dtype | rows | exact real | near real | tasks | blank |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in report["image_shaped_arrays"]:
        lines.append(f"| {f['location']} | `{f['key']}` | {tuple(f['shape'])} | {f['dtype']} | "
                     f"{f['rows']} | {f['exact_real']} | {f['near_real']} | {f['real_tasks']} | "
                     f"{f['blank_rows']} |")
    if not report["image_shaped_arrays"]:
        lines.append("| (no image-shaped arrays) | | | | | | | | |")
    if report["memorisation"]:
        lines += ["", "Memorisation (L2 in [0, 1] pixels; ratio = median synthetic-to-nearest-real "
                      "/ median real-to-nearest-other-real):", "",
                  "| synthetic set | n | ratio | closest ratio | closer than median real pair |",
                  "|---|---|---|---|---|"]
        for name, m in report["memorisation"].items():
            lines.append(f"| {name} | {m['num_synthetic']} | {m['memorisation_ratio']:.3f} | "
                         f"{m['closest_ratio']:.3f} | "
                         f"{100 * m['fraction_closer_than_median_real_pair']:.1f}% |")
    if report["not_scanned"]:
        lines += ["", "Not scanned (not arrays): " + ", ".join(report["not_scanned"])]
    return "\n".join(lines) + "\n"
