"""Table 2 as an experiment: train a base model and each architectural variant with one recipe, each in its own
run folder under OUT, and collect train top-1, val top-1 and val top-5 error per row.

Every run is resumable on its own and can be trained on another machine (`--variants rm34` alone); the table
collects whatever has finished. Rerun after a kill: finished runs (model.safetensors + metrics.json) are never
retrained, a run with a checkpoint resumes exactly (zfnet.train), the rest start.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .. import models
from ..errors import UsageError
from ..io import safetensors_metadata
from ..models import TABLE2_VARIANTS
from ..readback import Finite, read_json_or_none
from ..recipe import Recipe, RunOptions
from .runs import train_runs

CROP = {"top1_err": Finite, "top5_err": Finite}
# A finished run's metrics.json (`zfnet.train`); one that does not hold these is not a finished row.
METRICS_SCHEMA = {
    "epochs": int,
    "train_top1_err": Finite,
    "train_wall_seconds": Finite,
    "val": {"centre": CROP, "ten_crop": CROP},
}

BASES = ("zfnet", "alexnet", "zfnet-small")

# Table 2 of the paper (train top-1, val top-1, val top-5 error %), per row. Rows removing layers come from the
# Krizhevsky half of the table, rows resizing layers from ZFNet's (the 2048/8192-unit rows exist in both halves).
PAPER_TABLE2 = {
    "alexnet": {
        "base": (35.1, 40.5, 18.1),
        "rm34": (41.8, 45.4, 22.1),
        "rm7": (27.4, 40.0, 18.4),
        "rm67": (27.4, 44.8, 22.4),
        "rm3467": (71.1, 71.3, 50.1),
        "fc2048": (40.3, 41.7, 18.8),
        "fc8192": (26.8, 40.0, 18.1),
    },
    "zfnet": {
        "base": (33.1, 38.4, 16.5),
        "fc2048": (38.2, 40.2, 17.6),
        "fc8192": (22.0, 38.8, 17.0),
        "wide345": (18.8, 37.5, 16.0),
        "fc8192-wide345": (10.0, 38.3, 16.9),
    },
}


def paper_row(base: str, variant: str) -> tuple[tuple[float, float, float] | None, str]:
    """The paper's numbers for a row and which half of Table 2 they come from."""
    own = "alexnet" if base.startswith("alexnet") else "zfnet"
    if variant in PAPER_TABLE2[own]:
        return PAPER_TABLE2[own][variant], own
    other = "zfnet" if own == "alexnet" else "alexnet"
    if variant in PAPER_TABLE2[other]:
        return PAPER_TABLE2[other][variant], other
    return None, ""


@dataclass
class Row:
    variant: str  # "base" or a Table 2 suffix
    model: str
    status: str  # "done", "partial" (checkpoint, epochs done) or "missing"
    epochs_done: int = 0
    train_top1_err: float | None = None
    val_top1_err: float | None = None
    val_top5_err: float | None = None
    val_top1_err_10crop: float | None = None
    val_top5_err_10crop: float | None = None
    train_seconds: float | None = None
    parameters: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def variant_names(spec: str | None) -> list[str]:
    """'all' or None -> every Table 2 variant; else the comma-separated list, checked."""
    if not spec or spec == "all":
        return list(TABLE2_VARIANTS)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in names if v != "base" and v not in TABLE2_VARIANTS]
    if bad:
        raise UsageError(f"unknown Table 2 variant {bad[0]!r}; known: base, {', '.join(TABLE2_VARIANTS)}")
    return [v for v in names if v != "base"]


def model_name(base: str, variant: str) -> str:
    return base if variant == "base" else f"{base}-{variant}"


def run_folder(out: str, variant: str) -> str:
    return os.path.join(out, variant)


def collect(out: str, base: str, variants: list[str]) -> list[Row]:
    """The table's rows from whatever the run folders hold."""

    rows = []
    for v in ["base", *variants]:
        folder = run_folder(out, v)
        name = model_name(base, v)
        params = sum(p.numel() for p in models.build(name, init="torch").parameters())
        metrics = os.path.join(folder, "metrics.json")
        m = read_json_or_none(metrics, METRICS_SCHEMA)
        if m is not None and os.path.isfile(os.path.join(folder, "model.safetensors")):
            rows.append(
                Row(
                    v,
                    name,
                    "done",
                    m["epochs"],
                    m["train_top1_err"],
                    m["val"]["centre"]["top1_err"],
                    m["val"]["centre"]["top5_err"],
                    m["val"]["ten_crop"]["top1_err"],
                    m["val"]["ten_crop"]["top5_err"],
                    m["train_wall_seconds"],
                    params,
                )
            )
        elif os.path.isfile(os.path.join(folder, "checkpoint.safetensors")):
            try:
                meta = safetensors_metadata(os.path.join(folder, "checkpoint.safetensors"))
            except (OSError, ValueError):  # a damaged checkpoint: the row is partial at an unknown epoch
                meta = {}
            rows.append(Row(v, name, "partial", int(meta.get("epoch", 0)), parameters=params))
        else:
            rows.append(Row(v, name, "missing", parameters=params))
    return rows


def train_variants(
    out: str,
    base: str,
    *,
    variants: list[str],
    recipe: Recipe,
    options: RunOptions,
    progress: bool = True,
    on_logs=None,
    on_run=None,
) -> list[Row]:
    """Train the base and every variant that has not finished, with `recipe` (its model replaced by each row's)."""
    if base not in BASES:
        raise UsageError(f"--base must be one of {', '.join(BASES)} (Table 2's halves and the small family)")
    if recipe.model_overrides:
        raise UsageError("the ablation builds each row's model by name; drop --model-overrides")
    train_runs(
        out,
        {v: recipe.replace(model=model_name(base, v)) for v in ["base", *variants]},
        options,
        progress,
        on_logs,
        on_run,
    )
    return collect(out, base, variants)
