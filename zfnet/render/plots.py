"""Training curves (Sec. 3 runs): errors, loss and learning rate per epoch, as a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..io import atomic_save_figure


def training_curves(history: list[dict], path: str, title: str = "") -> None:
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("train_top1_err", "train top-1"), ("val_top1_err", "val top-1"), ("val_top5_err", "val top-5")):
        ax1.plot(epochs, [100 * r[key] for r in history], marker=".", label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("error (%)")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(epochs, [r["train_loss"] for r in history], marker=".", label="train loss")
    ax2.plot(epochs, [r["val_loss"] for r in history], marker=".", label="val loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3)
    lr = ax2.twinx()
    lr.step(epochs, [r["lr"] for r in history], where="post", color="grey", alpha=0.6, label="lr")
    lr.set_yscale("log")
    lr.set_ylabel("learning rate")
    ax2.legend(loc="upper right")
    ax1.set_title("top-1 / top-5 error per epoch")
    ax2.set_title("loss and learning rate per epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
