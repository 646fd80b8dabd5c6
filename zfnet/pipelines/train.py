"""`zfnet train` as a library call: `zfnet.train.fit` with the training curves drawn after every epoch."""

from __future__ import annotations

import os
from typing import Any

from ..recipe import Recipe, RunOptions
from ..render.plots import training_curves
from ..train import fit


def draw_curves(out: str, history: list[dict]) -> None:
    """OUT/curves.png from the run's history (errors, losses, learning rate per epoch)."""
    training_curves(history, os.path.join(out, "curves.png"))


def train(
    recipe: Recipe, options: RunOptions | None = None, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train into `options.out` (see `fit`): checkpoints, snapshots, metrics.jsonl/csv and curves.png."""
    return fit(recipe, options, resume, progress, on_logs=draw_curves)
