"""The training recipe of Sec. 3 as a frozen dataclass: defaults are the paper's values.

`Recipe` is what is computed; `RunOptions` is how one run of it is carried out (output folder, device, CPU
threads, decoding workers, checkpoint interval), which never changes the result. Overrides come from a file
(JSON or TOML), then from command-line flags; the resolved recipe is written into the run folder and inside
every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UsageError

# Fig. 4 shows features at these epochs of a 70-epoch run; shorter runs scale them (see `snapshot_epochs`).
PAPER_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 64)
PAPER_EPOCHS = 70


@dataclass(frozen=True)
class Recipe:
    """Sec. 3 training details. Units in comments."""

    model: str = "zfnet"  # registry name (zfnet models) or torchvision:<name>
    data: str = "imagenet"  # dataset spec (see zfnet.data)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"fc_units": 2048} (Table 2)
    num_classes: int | None = None  # None: the training set's class count
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 70  # "We stopped training after 70 epochs"
    batch_size: int = 128  # mini-batch, images (global, across processes)
    lr: float = 1e-2  # initial learning rate
    momentum: float = 0.9
    # The paper is silent on weight decay. Its implementation was "based on [18]" (Krizhevsky et al.'s
    # cuda-convnet), which used 5e-4; we follow that. Set 0 to train without it. It applies to the weights
    # and, unlike cuda-convnet, to the biases too (one optimizer group): the embedded model was trained so.
    weight_decay: float = 5e-4
    # "We anneal the learning rate throughout training manually when the validation error plateaus":
    # automated as x lr_factor once the val top-1 error, averaged over the last lr_window epochs, has not dropped
    # by lr_threshold (absolute) for lr_patience epochs. The average matters: on 5,000 validation images the
    # error's noise (~0.4 points) alone triggered annealing at epoch 12 of a run still improving (measured).
    lr_factor: float = 0.1
    lr_window: int = 3  # epochs averaged
    lr_patience: int = 4  # epochs
    lr_threshold: float = 5e-4  # fraction of images (0.05 percentage points)
    min_lr: float = 1e-5
    # Epochs after which the rate is annealed (x lr_factor) whatever the plateau rule says: the manual
    # decision written down, so that a fresh run repeats a run annealed by hand on --resume.
    anneal_at: tuple[int, ...] = ()
    dropout: float = 0.5  # on fc6 and fc7
    # Sec. 3: N(0, 1e-2) weights, zero biases ("paper"). None: the model family's default, which is "paper" for
    # zfnet/alexnet and "kaiming" for the small family (it never leaves chance level from N(0, 1e-2)).
    init: str | None = None
    # Feature scale clipping: after each update, renormalize every conv filter whose RMS exceeds this radius
    # to the radius. None or 0 turns it off (Fig. 5(a) shows what happens then).
    clip_radius: float | None = 0.1
    # "multiple different crops and flips of each image" (Sec. 3), read as: a random 224 crop of the 256
    # base square and a random horizontal flip per image and epoch (our reading; the paper names no scheme)
    flip: bool = True
    snapshots: tuple[int, ...] | None = None  # epochs whose weights are kept (None: Fig. 4's, scaled)
    seed: int = 0
    exclude: str | None = None  # exclusion list (image ids, `zfnet dedupe`): left out of training and validation
    limit_train: int | None = None  # use only the first N training images (quick runs, tests)
    limit_val: int | None = None
    deterministic: bool = True  # torch.use_deterministic_algorithms; CPU results are then bitwise repeatable

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["snapshots"] = list(self.snapshots) if self.snapshots is not None else None
        d["anneal_at"] = list(self.anneal_at)
        return d

    def to_json(self) -> dict[str, Any]:
        """The recipe as a JSON-ready dict (what recipe.json holds)."""
        return self.to_dict()

    def dumps(self) -> str:
        """recipe.json's text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **coerce(changes, Recipe))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """A saved recipe; run options that older run folders stored beside it are left out."""
        run = {f.name for f in fields(RunOptions)}
        return cls().replace(**{k: v for k, v in d.items() if k not in run})


@dataclass(frozen=True)
class RunOptions:
    """How one run is carried out; none of these changes what is computed, so all may change on --resume."""

    out: str = "runs/zfnet"  # run folder
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads (None: torch's default)
    workers: int = 4  # image-decoding processes for file datasets
    checkpoint_minutes: float = 20.0  # also checkpoint mid-epoch this often (0: only at epoch ends)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **coerce(changes, RunOptions))


_HINTS = {**typing.get_type_hints(Recipe), **typing.get_type_hints(RunOptions)}


def _coerce_one(name: str, value: Any) -> Any:
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
        if type(None) in args or hint is Any:
            return None
        raise UsageError(f"recipe field {name!r} cannot be empty")
    optional = type(None) in args  # X | None: coerce to X
    base = next(a for a in args if a is not type(None)) if optional else hint
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(x) for x in items if str(x).strip())
        if origin is dict:
            return dict(json.loads(value)) if isinstance(value, str) else dict(value)
        if origin in (int, float, str):
            if origin is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return origin(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise UsageError(f"recipe field {name!r} got {value!r}, which is not a valid {hint}; fix the value") from None
    return value


def coerce(changes: dict[str, Any], cls: type | None = None) -> dict[str, Any]:
    known = {f.name for f in fields(cls or Recipe)}
    unknown = [k for k in changes if k not in known]
    if unknown:
        raise UsageError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {k: _coerce_one(k, v) for k, v in changes.items()}


def read_recipe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Recipe overrides from a JSON or TOML file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"recipe file {path!r} does not exist; check the path given to --recipe")
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except Exception as e:
        raise UsageError(f"cannot parse recipe file {path!r}: {e}; write JSON or TOML") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe file {path!r} must hold a table of field = value")
    return data


def resolve(file: str | None = None, flags: dict[str, Any] | None = None, base: Recipe | None = None) -> Recipe:
    """Paper defaults <- recipe file <- flags."""
    return resolve_run(file, flags, base)[0]


def resolve_run(
    file: str | None = None, flags: dict[str, Any] | None = None, base: Recipe | None = None
) -> tuple[Recipe, RunOptions]:
    """(recipe, run options) from paper defaults <- file <- flags; each key goes to the one that has it."""
    run_names = {f.name for f in fields(RunOptions)}
    changes = dict(read_recipe_file(file)) if file else {}
    changes.update({k: v for k, v in (flags or {}).items() if v is not None})
    recipe = (base or Recipe()).replace(**{k: v for k, v in changes.items() if k not in run_names})
    options = RunOptions().replace(**{k: v for k, v in changes.items() if k in run_names})
    validate(recipe)
    if options.workers < 0:
        raise UsageError(f"bad run option: workers must be >= 0, not {options.workers}")
    return recipe, options


def validate(r: Recipe) -> None:
    import math

    reals = {
        k: getattr(r, k)
        for k in ("lr", "momentum", "weight_decay", "lr_factor", "lr_threshold", "min_lr", "dropout", "clip_radius")
    }
    for k, v in reals.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"bad recipe: {k} is {v}; pass a finite number")
    checks = [
        (r.epochs >= 1, "epochs must be >= 1"),
        (r.limit_train is None or r.limit_train >= 1, "limit_train must be >= 1 (or none)"),
        (r.limit_val is None or r.limit_val >= 1, "limit_val must be >= 1 (or none)"),
        (r.batch_size >= 1, "batch_size must be >= 1"),
        (r.lr > 0, "lr must be > 0"),
        (0 <= r.momentum < 1, "momentum must be in [0, 1)"),
        (r.weight_decay >= 0, "weight_decay must be >= 0"),
        (0 < r.lr_factor < 1, "lr_factor must be in (0, 1)"),
        (r.lr_window >= 1, "lr_window must be >= 1"),
        (all(e >= 1 for e in r.anneal_at), "anneal_at holds epoch numbers, 1 or more (annealing after that epoch)"),
        (0 <= r.dropout < 1, "dropout must be in [0, 1)"),
        (r.clip_radius is None or r.clip_radius >= 0, "clip_radius must be >= 0 (0 or none: off)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(f"bad recipe: {msg}")


def snapshot_epochs(recipe: Recipe) -> list[int]:
    """Epochs whose weights are kept for the evolution figure: the recipe's, else Fig. 4's
    (1, 2, 5, 10, 20, 30, 40, 64 of 70) scaled to the run length, strictly increasing, plus the last epoch."""
    if recipe.snapshots is not None:
        return sorted({e for e in recipe.snapshots if 1 <= e <= recipe.epochs})
    out: list[int] = []
    for e in PAPER_SNAPSHOTS:
        s = max(1, round(e * recipe.epochs / PAPER_EPOCHS))
        s = max(s, out[-1] + 1) if out else s
        if s <= recipe.epochs:
            out.append(s)
    if recipe.epochs not in out:
        out.append(recipe.epochs)
    return out
