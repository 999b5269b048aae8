"""Diagnostics of synthetic data (methods.md section 7): MID, MMD and an embedding plot."""

from __future__ import annotations

import numpy as np


def mean_image_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-8) -> float:
    """ABD Eq. 10 (MID): || (mean f(A) - mean f(B)) / std f(A) ||_2, A the reference sample."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return float(np.linalg.norm((a.mean(0) - b.mean(0)) / (a.std(0) + eps)))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T, 0.0)


def mmd_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel exp(-d^2 / (2 h^2)); h: median heuristic."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least two samples on each side")
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    if bandwidth is None:
        pooled = np.concatenate([dxx[np.triu_indices(m, 1)], dyy[np.triu_indices(n, 1)], dxy.ravel()])
        bandwidth = float(np.sqrt(0.5 * np.median(pooled))) or 1.0
    k = lambda d: np.exp(-d / (2 * bandwidth**2))
    kxx, kyy = k(dxx), k(dyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(dxy).mean())


def plot_embeddings(path: str, groups: dict[str, np.ndarray], title: str = "") -> None:
    """2-D PCA of feature groups (e.g. real-old, real-new, synthetic-old), one colour each."""
    from matplotlib.figure import Figure

    allf = np.concatenate([np.asarray(g, np.float64) for g in groups.values()])
    centre = allf.mean(0)
    _, _, vt = np.linalg.svd(allf - centre, full_matrices=False)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for name, g in groups.items():
        xy = (np.asarray(g, np.float64) - centre) @ vt[:2].T
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5, label=f"{name} ({len(g)})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "penultimate features (PCA)")
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_image_grid(path: str, images: np.ndarray, labels=None, columns: int = 10,
                    title: str = "") -> None:
    """A grid of images in [0, 1] (NHWC), optionally titled by label."""
    from matplotlib.figure import Figure

    images = np.clip(np.asarray(images), 0, 1)
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(columns * 0.9, rows * 0.95 + 0.3))
    axes = fig.subplots(rows, columns)
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < len(images):
            img = images[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=7, pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
