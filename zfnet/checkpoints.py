"""Training state (Sec. 3): checkpoints for exact resume and the per-epoch snapshots Fig. 4 reads.

A checkpoint holds the model, the optimizer and scheduler state, every process's RNG state, the history and the
preprocessing, in one atomically written safetensors file; a snapshot is a zfnet weights file
(`zfnet.weights`), possibly of the conv layers only. The weights format itself lives in `zfnet.weights`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from . import data as zdata
from .errors import UsageError
from .io import atomic_save_tensors, load_tensors, safetensors_metadata
from .runtime import Dist, unwrap
from .weights import MEAN_KEY, WeightsFile

# --- snapshots (Fig. 4) -------------------------------------------------------------------------------


def find_snapshots(folder: str) -> list[tuple[int, str]]:
    """(epoch, path) of every `epoch-NNN.safetensors` in `folder` (a run's snapshots/ or the run itself)."""
    for cand in (os.path.join(folder, "snapshots"), folder):
        files = sorted(glob.glob(os.path.join(cand, "epoch-*.safetensors")))
        if files:
            return [(int(re.findall(r"epoch-(\d+)", os.path.basename(f))[0]), f) for f in files]
    raise UsageError(f"no snapshots (epoch-NNN.safetensors) in {folder!r}; pass a `zfnet train` run folder")


def load_snapshot(model: nn.Module, snapshot: str | WeightsFile) -> WeightsFile:
    """Load a snapshot (read once; returned for its stored preprocessing); snapshots may hold the conv layers
    only (enough for every conv visualization)."""
    wf = snapshot if isinstance(snapshot, WeightsFile) else WeightsFile.read(snapshot)
    state, path = wf.state, wf.path
    own = model.state_dict()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    missing = [f"{c}.weight" for c in convs if f"{c}.weight" not in state]
    wrong = [
        f"{c}.weight"
        for c in convs
        if f"{c}.weight" not in missing and state[f"{c}.weight"].shape != own[f"{c}.weight"].shape
    ]
    if missing or wrong:
        raise UsageError(
            f"snapshot {path!r} {'lacks' if missing else 'has another shape for'} "
            f"{(missing or wrong)[0]}; it was not made for this model (pass the matching --model)"
        )
    # the classifier may differ (another class count): conv visualizations never read it
    model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    return wf


# --- training checkpoints (exact resume) ----------------------------------------------------------------

CHECKPOINT = "checkpoint.safetensors"


def rng_states(dist: Dist) -> list[torch.Tensor]:
    """Every process's torch RNG state (dropout), gathered to all (a collective under torchrun)."""

    mine = torch.get_rng_state()
    if dist.world == 1:
        return [mine]
    parts = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather_object(parts, mine)
    return parts


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    pp: zdata.Preprocess,
    recipe_json: str,
    epoch: int,
    step: int,
    history: list,
    partial: dict,
    classes: list,
    rngs: list[torch.Tensor],
    extra: dict | None = None,
) -> None:
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
        "recipe": recipe_json,
        "epoch": str(epoch),
        "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(
            {i: {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)} for i, st in opt["state"].items()}
        ),
        "scheduler": json.dumps(scheduler.state_dict()),
        "history": json.dumps(history),
        "partial": json.dumps(partial),
        "classes": json.dumps(classes),
        "preprocess": json.dumps(pp.to_dict()),
        "model": str(getattr(unwrap(model), "zfnet_name", "")),
        **(extra or {}),
    }
    atomic_save_tensors(tensors, path, meta)


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        meta = safetensors_metadata(path)
        tensors = load_tensors(path)
    except Exception as e:
        raise UsageError(
            f"cannot read checkpoint {path!r} ({type(e).__name__}); it is damaged - delete it to "
            "start over, or restore a copy"
        ) from None
    return tensors, meta


def restore(
    tensors: dict, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, rank: int = 0
) -> None:
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
        raise UsageError("the checkpoint was written by a run with fewer processes; resume with the same process count")
    torch.set_rng_state(tensors[f"rng/torch/{rank}"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
