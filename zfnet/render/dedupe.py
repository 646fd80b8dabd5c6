"""The overlap pairs as a thumbnail sheet (B image | its A match, with the score) and the histogram of each B
image's best score, from the matches (never a model)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..io import atomic_save_figure


def _show(t: torch.Tensor) -> np.ndarray:
    arr = t.float().cpu().numpy() / 255.0
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _short(image_id: str) -> str:
    """The last two parts of an image id (split/number, class/file), enough to find it."""
    return "/".join(image_id.replace("\\", "/").split("/")[-2:])[-28:]


def pairs_sheet(
    pairs: list[dict], images_b: list[torch.Tensor], images_a: list[torch.Tensor], path: str, cols: int = 6
) -> None:
    """Up to len(pairs) pairs, each as B | A with 'score, B id, A id' under it."""
    n = max(1, len(pairs))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p, b, a in zip(axes.flat, pairs, images_b, images_a):
        tile = np.concatenate([_show(b), np.ones_like(_show(b)[:, :2]), _show(a)], axis=1)
        ax.imshow(tile, cmap="gray" if b.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{p['score']:.4f}\nB {_short(p['b_id'])}\nA {_short(p['a_id'])}", fontsize=6)
    if not pairs:
        axes.flat[0].text(0.5, 0.5, "no pair above the threshold", ha="center", va="center")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=90)
    plt.close(fig)


def score_histogram(best: torch.Tensor, threshold: float, path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(best.numpy(), bins=100, range=(min(0.0, float(best.min())), 1.0), color="tab:blue")
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold}")
    ax.set_yscale("log")
    ax.set_xlabel("best normalized correlation with set A")
    ax.set_ylabel("images of set B")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
