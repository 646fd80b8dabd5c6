"""Many training runs under one folder, each resumable on its own: finished runs (model.safetensors +
metrics.json) are never retrained, a run with a checkpoint resumes exactly, the rest start."""

from __future__ import annotations

import os

from ..recipe import Recipe, RunOptions
from ..train import fit


def finished(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "metrics.json")) and os.path.isfile(
        os.path.join(folder, "model.safetensors")
    )


def train_runs(
    out: str, recipes: dict[str, Recipe], options: RunOptions, progress: bool = True, on_logs=None, on_run=None
) -> None:
    """Train each named recipe into OUT/<name>/ unless it has finished; `on_run(name, resume)` announces each."""
    for name, recipe in recipes.items():
        folder = os.path.join(out, name)
        if finished(folder):
            continue
        resume = os.path.isfile(os.path.join(folder, "checkpoint.safetensors"))
        if on_run is not None:
            on_run(name, resume)
        fit(recipe, options.replace(out=folder), resume=resume, progress=progress, on_logs=on_logs)
