"""Weights files with the preprocessing they were trained with, training checkpoints, snapshots, and the one
place models are opened for analysis.

A weights file written by zfnet (`save_weights`) holds the state dict, the model name and class names, and the
Sec. 3 preprocessing the model was trained with: fit (pad or resize), base and input size, channels, pixel
scale, and the per-pixel mean image (tensor `preprocess/mean_image`) or channel mean/std. Every loader reads it
back from there (`stored_preprocess`); nothing re-derives it from the kind of dataset afterwards. Weights that
carry no mean (ported from another framework) take one from `mean=`: "data" (the per-pixel mean of a dataset's
training split, computed and cached as `zfnet train` does), a file (.safetensors or .npy image), or "none".
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import data as zdata
from . import models
from .errors import UsageError, note
from .io import atomic_save_tensors, load_tensors
from .runtime import Dist, unwrap

MEAN_KEY = "preprocess/mean_image"
MEAN_CHOICES = "--mean data (the mean image of --data's training split), --mean FILE (.safetensors or .npy) or --mean none"


# --- preprocessing ------------------------------------------------------------------------------------

def default_preprocess(model: nn.Module) -> zdata.Preprocess:
    """A fresh model's Sec. 3 preprocessing from its layer table (input size, channels, pixel range), no mean
    yet and `fit` left to the training data; torchvision models get torchvision's ImageNet normalisation."""
    c, s, _ = models.model_input_shape(model)
    if not isinstance(model, models.ConvNet):
        return zdata.Preprocess.torchvision(s, round(s * 256 / 224))
    return zdata.for_model(s, c, scale=model.arch.pixel_scale)


def stored_preprocess(path: str | os.PathLike, model: nn.Module | None = None) -> zdata.Preprocess | None:
    """The preprocessing stored in a zfnet weights file (None when the file carries none). Files from before
    the fit was stored reliably fall back to the model's defaults with the stored mean image."""
    path = os.fspath(path)
    meta = models.weights_metadata(path)
    mean = _stored_mean(path)
    if "preprocess" in meta:
        try:
            return zdata.Preprocess.from_dict(json.loads(meta["preprocess"]), mean)
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path!r} has a damaged 'preprocess' record; re-save the weights with zfnet") from None
    if mean is not None and model is not None:
        return default_preprocess(model).with_mean(mean)
    return None


def _stored_mean(path: str) -> torch.Tensor | None:
    if not path.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return f.get_tensor(MEAN_KEY) if MEAN_KEY in f.keys() else None
    except Exception as e:
        raise UsageError(f"cannot read weights {path!r} ({type(e).__name__}); the file is damaged - "
                         "copy it again") from None


def read_mean_file(path: str) -> torch.Tensor:
    """A mean image from a .safetensors file (its one tensor, or 'mean' / 'preprocess/mean_image') or a .npy
    array (C x H x W, or H x W (x C)), in raw [0, 255] pixel units."""
    if not os.path.isfile(path):
        raise UsageError(f"--mean {path!r}: no such file; pass data, none or an existing .safetensors/.npy file")
    try:
        if path.endswith(".npy"):
            import numpy as np

            arr = np.load(path, allow_pickle=False)
            t = torch.from_numpy(np.array(arr, dtype=np.float32))
            if t.dim() == 2:
                t = t[None]
            elif t.dim() == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
                t = t.permute(2, 0, 1)
        else:
            tensors = load_tensors(path)
            t = next((tensors[k] for k in ("mean", MEAN_KEY) if k in tensors), None)
            if t is None and len(tensors) == 1:
                t = next(iter(tensors.values()))
            if t is None:
                raise UsageError(f"--mean {path!r} holds {len(tensors)} tensors and none named 'mean'; "
                                 "save the mean image alone or under 'mean'")
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"cannot read mean image {path!r} ({type(e).__name__}); pass a .safetensors or .npy "
                         "file") from None
    if t.dim() != 3 or not torch.isfinite(t).all():
        raise UsageError(f"--mean {path!r} is not a finite C x H x W image (shape {tuple(t.shape)})")
    return t.float()


def data_mean(pp: zdata.Preprocess, data: str | None, split: str | None = None, workers: int = 0,
              progress: bool = True) -> torch.Tensor:
    """The per-pixel mean image of `data`'s training split (else of `split`), as `zfnet train` computes it."""
    if not data:
        raise UsageError("--mean data needs --data (the dataset whose training-split mean to use); or pass "
                         "--mean FILE")
    try:
        ds = zdata.open_dataset(data, "train", pp)
    except UsageError:
        ds = zdata.open_dataset(data, split, pp)
        note(f"--mean data: {data} has no train split; the mean image is that of split {ds.split!r}")
    return zdata.mean_image(ds, workers=workers, progress=progress)


def apply_mean(pp: zdata.Preprocess, mean: str | None, data: str | None = None, split: str | None = None,
               workers: int = 0) -> zdata.Preprocess:
    """`pp` with the mean asked for: None keeps it, 'none' drops it, 'data' computes it, else a file."""
    if mean is None:
        return pp
    if mean == "none":
        return pp.with_mean(None)
    if mean == "data":
        return pp.with_mean(data_mean(pp, data, split, workers))
    try:
        return pp.with_mean(read_mean_file(mean))
    except UsageError as e:
        if mean in str(e):
            raise
        raise UsageError(f"--mean {mean!r}: {e}") from None


# --- weights files ------------------------------------------------------------------------------------

def save_weights(model: nn.Module, path: str, pp: zdata.Preprocess | None, **meta: Any) -> None:
    """Weights as safetensors with the preprocessing (mean image as a tensor, the rest as metadata) and string
    metadata (model, classes, ...)."""
    net = unwrap(model)
    tensors = dict(net.state_dict())
    metadata = models.save_metadata(net, **meta)
    if pp is not None:
        if pp.mean_image is not None:
            tensors[MEAN_KEY] = pp.mean_image
        metadata["preprocess"] = json.dumps(pp.to_dict())
    atomic_save_tensors(tensors, path, metadata)


EMBEDDED_MODEL = "zfnet-small"  # the embedded default (zfnet.pretrained(); README: 'The laptop model')
EMBEDDED_FOLDER = "fashion_mnist"


def embedded_folder() -> str:
    from importlib import resources

    return str(resources.files("zfnet") / "pretrained" / EMBEDDED_FOLDER)


@dataclass
class Opened:
    """A model ready for analysis, with what made it."""

    model: nn.Module
    preprocess: zdata.Preprocess
    name: str
    weights: str | None
    classes: list[str] | None = None


def open_model(model_name: str | None = None, weights: str | None = None, pretrained: bool = False,
               device: torch.device | str = "cpu", seed: int = 0, mean: str | None = None,
               data: str | None = None, split: str | None = None, workers: int = 0,
               overrides: dict | None = None) -> Opened:
    """The embedded model, a model with its weights and stored preprocessing, or (no weights) the model at its
    initialization, seeded so that every torchrun rank and every rerun sees the same network. `mean` overrides
    the mean image (see `apply_mean`); weights of a paper-style model that carry none must be given one.
    `overrides` are the architecture overrides the weights were trained with (a recipe's model_overrides)."""
    device = torch.device(device)
    if pretrained:
        if model_name or weights:
            raise UsageError("--pretrained is the embedded model; drop --model/--weights, or drop --pretrained")
        path = os.path.join(embedded_folder(), "model.safetensors")
        if not os.path.isfile(path):
            raise UsageError(f"the embedded model is missing ({path}); reinstall zfnet or retrain it "
                             "(README: 'The laptop model')")
        return open_model(EMBEDDED_MODEL, path, device=device, mean=mean, data=data, split=split, workers=workers)

    if not model_name:
        raise UsageError("pass --model NAME (see `zfnet models`), with --weights FILE for a trained model, "
                         "or --pretrained")
    if weights:
        model = models.build(model_name, weights=weights, **(overrides or {})).to(device).eval()
        pp = stored_preprocess(weights, model)
        if pp is None:
            pp = default_preprocess(model)
            if mean is None and isinstance(model, models.ConvNet):
                raise UsageError(f"{weights!r} carries no mean image (Sec. 3 preprocessing); pass {MEAN_CHOICES}")
        pp = apply_mean(pp, mean, data, split, workers)
        meta = models.weights_metadata(weights)
        classes = json.loads(meta["classes"]) if "classes" in meta else None
        return Opened(model, pp, model_name, weights, classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(model_name)
    model = model.to(device).eval()
    pp = apply_mean(default_preprocess(model), mean, data, split, workers)
    note(f"no --weights: {model_name} at its random initialization (seed {seed})"
         + ("" if pp.mean_image is not None or pp.channel_mean is not None else ", no mean image"))
    return Opened(model, pp, model_name, None)


# --- snapshots (Fig. 4) -------------------------------------------------------------------------------

def find_snapshots(folder: str) -> list[tuple[int, str]]:
    """(epoch, path) of every `epoch-NNN.safetensors` in `folder` (a run's snapshots/ or the run itself)."""
    for cand in (os.path.join(folder, "snapshots"), folder):
        files = sorted(glob.glob(os.path.join(cand, "epoch-*.safetensors")))
        if files:
            return [(int(re.search(r"epoch-(\d+)", os.path.basename(f)).group(1)), f) for f in files]
    raise UsageError(f"no snapshots (epoch-NNN.safetensors) in {folder!r}; pass a `zfnet train` run folder")


def load_snapshot(model: nn.Module, path: str) -> None:
    """Load a snapshot; snapshots may hold the conv layers only (enough for every conv visualization)."""
    state = models.read_weights(path)
    own = model.state_dict()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    missing = [f"{c}.weight" for c in convs if f"{c}.weight" not in state]
    wrong = [f"{c}.weight" for c in convs
             if f"{c}.weight" not in missing and state[f"{c}.weight"].shape != own[f"{c}.weight"].shape]
    if missing or wrong:
        raise UsageError(f"snapshot {path!r} {'lacks' if missing else 'has another shape for'} "
                         f"{(missing or wrong)[0]}; it was not made for this model (pass the matching --model)")
    # the classifier may differ (another class count): conv visualizations never read it
    model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)


# --- training checkpoints (exact resume) ----------------------------------------------------------------

CHECKPOINT = "checkpoint.safetensors"


def rng_states(dist: Dist) -> list[torch.Tensor]:
    """Every process's torch RNG state (dropout), gathered to all (a collective under torchrun)."""
    import torch.distributed as torch_dist

    mine = torch.get_rng_state()
    if dist.world == 1:
        return [mine]
    parts = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather_object(parts, mine)
    return parts


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    pp: zdata.Preprocess, recipe_json: str, epoch: int, step: int, history: list, partial: dict,
                    classes: list, rngs: list[torch.Tensor], extra: dict | None = None) -> None:
    """Everything needed to continue exactly, in one atomically written safetensors file."""
    tensors = {f"model/{k}": v for k, v in unwrap(model).state_dict().items()}
    opt = optimizer.state_dict()
    for i, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{i}/{k}"] = v
    for rank, state in enumerate(rngs):
        tensors[f"rng/torch/{rank}"] = state
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    if pp.mean_image is not None:
        tensors[MEAN_KEY] = pp.mean_image
    meta = {
        "recipe": recipe_json, "epoch": str(epoch), "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps({i: {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                                     for i, st in opt["state"].items()}),
        "scheduler": json.dumps(scheduler.state_dict()), "history": json.dumps(history),
        "partial": json.dumps(partial), "classes": json.dumps(classes), "preprocess": json.dumps(pp.to_dict()),
        "model": str(getattr(unwrap(model), "zfnet_name", "")), **(extra or {}),
    }
    atomic_save_tensors(tensors, path, meta)


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    meta = models.weights_metadata(path)
    try:
        tensors = load_tensors(path)
    except Exception as e:
        raise UsageError(f"cannot read checkpoint {path!r} ({type(e).__name__}); it is damaged - delete it to "
                         "start over, or restore a copy") from None
    return tensors, meta


def restore(tensors: dict, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            rank: int = 0) -> None:
    unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, Any]] = {}
    for i, scalars in json.loads(meta["optim_scalars"]).items():
        state[int(i)] = dict(scalars)
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    if f"rng/torch/{rank}" not in tensors:
        raise UsageError("the checkpoint was written by a run with fewer processes; resume with the same "
                         "process count")
    torch.set_rng_state(tensors[f"rng/torch/{rank}"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
