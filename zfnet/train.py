"""Sec. 3 training, as plain functions: `fit(recipe)` = for each epoch `train_one_epoch` then `evaluate`.

SGD (mini-batch 128, lr 1e-2, momentum 0.9), learning rate annealed x0.1 when the validation error plateaus,
dropout 0.5 on fc6/fc7, N(0, 1e-2) init, per-pixel mean subtraction, random crops + flips, feature scale
clipping of conv filters after every update, 70 epochs. Table 1/2 metrics: train top-1, val top-1/top-5 with a
centre crop and with 10 crops; ensembles average the softmax of several models (Table 1's "5 convnets").

Exact resume: every random choice of an epoch (order, crops, flips) comes from a generator seeded with
(seed, epoch); dropout draws from torch's global generator, whose state is saved in each checkpoint together
with the weights, optimizer momentum, scheduler, epoch, step, history and partial-epoch statistics. A run
killed at any point and resumed ends with the same weights, bit for bit, on CPU.
Scale-out: under `torchrun`, each process trains on its slice of every global mini-batch (DDP, gloo on CPU,
nccl on GPU); the loss is scaled so that the update equals the single-process one on the same global batch.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from . import data as zdata
from . import models
from .errors import UsageError, note
from .io import atomic_save_tensors, atomic_write_json, atomic_write_text, load_tensors
from .provenance import environment
from .recipe import Recipe, snapshot_epochs

CHECKPOINT = "checkpoint.safetensors"
# Recipe fields that may change when resuming: they do not change what is computed.
RESUMABLE_CHANGES = {"epochs", "workers", "threads", "checkpoint_minutes", "out", "device", "snapshots", "anneal_at"}


# --- processes and devices ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} asked for but CUDA is not available; pass --device cpu")
    return dev


def setup_processes(recipe: Recipe) -> Dist:
    """Single process, or the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(recipe.device, local)
    if world > 1:
        if recipe.batch_size % world:
            raise UsageError(f"batch_size {recipe.batch_size} does not split over {world} processes; "
                             "pick a multiple of the process count")
        if not torch_dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), device)
    return Dist(0, 1, device)


def _all_sum(values: list[float], dist: Dist) -> list[float]:
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t)
    return t.tolist()


# --- Sec. 3 pieces -------------------------------------------------------------------------------------

@torch.no_grad()
def clip_filters(model: nn.Module, radius: float | None) -> None:
    """Feature scale clipping (Sec. 3): every conv filter whose RMS exceeds `radius` is scaled to `radius`."""
    if not radius:
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            rms = w.pow(2).mean(dim=tuple(range(1, w.dim())), keepdim=True).sqrt()
            w.mul_(torch.where(rms > radius, radius / rms, torch.ones_like(rms)))


@dataclass(frozen=True)
class EpochPlan:
    """Every random choice of one epoch, from (seed, epoch) alone: order, crop offsets and flips."""

    order: torch.Tensor  # permutation of the training set
    offsets: torch.Tensor  # N x 2 crop (top, left) per image index
    flips: torch.Tensor  # N bools per image index


def epoch_plan(n: int, epoch: int, recipe: Recipe, pp: zdata.Preprocess) -> EpochPlan:
    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    offsets = torch.randint(0, pp.base_size - pp.input_size + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g).bool() if recipe.flip else torch.zeros(n, dtype=torch.bool)
    return EpochPlan(order, offsets, flips)


def local_slices(plan: EpochPlan, batch_size: int, dist: Dist, start_step: int = 0) -> list[tuple[torch.Tensor, int]]:
    """(this process's share of each global batch, global batch size), from `start_step` on."""
    out = []
    for step, global_idx in enumerate(torch.split(plan.order, batch_size)):
        if step < start_step:
            continue
        share = torch.tensor_split(global_idx, dist.world)[dist.rank]
        out.append((share, len(global_idx)))
    return out


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of images whose label is not among the top-k classes, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return [int((~hit[:, :k].any(1)).sum()) for k in ks]


# --- evaluation (Tables 1, 2) --------------------------------------------------------------------------

@torch.no_grad()
def predict(model_list: list[nn.Module], bases: torch.Tensor, pp: zdata.Preprocess, ten_crop: bool,
            device: torch.device) -> torch.Tensor:
    """Averaged softmax over models (ensembles, Table 1) and crops (10-crop, Sec. 3) -> N x C probabilities."""
    bases = bases.to(device)
    x = pp.ten_crop_input(bases) if ten_crop else pp.eval_input(bases)
    n = bases.shape[0]
    probs = 0
    for m in model_list:
        p = F.softmax(m(x).float(), dim=1)
        probs = probs + (p.view(10, n, -1).mean(0) if ten_crop else p)
    return probs / len(model_list)


def evaluate(model: nn.Module | list[nn.Module], dataset: zdata.ImageSet, pp: zdata.Preprocess,
             batch_size: int = 256, ten_crop: bool = False, dist: Dist = Dist(), workers: int = 0,
             progress: bool = False) -> dict[str, float]:
    """Top-1 / top-5 error and loss on `dataset` (centre crop, or Sec. 3's 10 crops), in eval mode."""
    model_list = model if isinstance(model, list) else [model]
    was = [m.training for m in model_list]
    for m in model_list:
        m.eval()
    idx = torch.arange(len(dataset))
    share = torch.tensor_split(idx, dist.world)[dist.rank]
    if ten_crop:  # 10 crops per image go through the model at once
        batch_size = max(1, batch_size // 10)
    totals = [0.0, 0.0, 0.0, 0.0]  # err1, err5, nll, n
    try:
        for bases, labels, _ in zdata.batches(dataset, zdata.chunked(share, batch_size), workers=workers,
                                              progress=progress and dist.main, desc="evaluate"):
            probs = predict(model_list, bases, pp, ten_crop, dist.device)
            labels = labels.to(dist.device)
            e1, e5 = topk_errors(probs, labels)
            nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
            totals = [totals[0] + e1, totals[1] + e5, totals[2] + nll, totals[3] + len(labels)]
    finally:
        for m, w in zip(model_list, was):
            m.train(w)
    e1, e5, nll, n = _all_sum(totals, dist)
    n = max(n, 1)
    return {"top1_err": e1 / n, "top5_err": e5 / n, "loss": nll / n, "images": int(n)}


# --- checkpoints ---------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_weights(model: nn.Module, path: str, pp: zdata.Preprocess | None, **meta: Any) -> None:
    """Weights as safetensors, with the preprocessing mean image and string metadata (model, classes, ...)."""
    net = _unwrap(model)
    tensors = dict(net.state_dict())
    if pp is not None and pp.mean_image is not None:
        tensors["preprocess/mean_image"] = pp.mean_image
    metadata = models.save_metadata(net, **meta)
    if pp is not None:
        metadata["preprocess"] = json.dumps(pp.to_dict())
    atomic_save_tensors(tensors, path, metadata)


def rng_states(dist: Dist) -> list[torch.Tensor]:
    """Every process's torch RNG state (dropout), gathered to all (a collective under torchrun)."""
    mine = torch.get_rng_state()
    if dist.world == 1:
        return [mine]
    parts = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather_object(parts, mine)
    return parts


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, pp,
                    recipe: Recipe, epoch: int, step: int, history: list, partial: dict, classes: list,
                    rngs: list[torch.Tensor]) -> None:
    """Everything needed to continue exactly, in one atomically written safetensors file."""
    tensors = {f"model/{k}": v for k, v in _unwrap(model).state_dict().items()}
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
        tensors["preprocess/mean_image"] = pp.mean_image
    meta = {
        "recipe": recipe.to_json(), "epoch": str(epoch), "step": str(step),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps({i: {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                                     for i, st in opt["state"].items()}),
        "scheduler": json.dumps(scheduler.state_dict()), "history": json.dumps(history),
        "partial": json.dumps(partial), "classes": json.dumps(classes),
        "model": str(getattr(_unwrap(model), "zfnet_name", "")),
    }
    atomic_save_tensors(tensors, path, meta)


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = load_tensors(path)
    return tensors, models.weights_metadata(path)


def restore(tensors: dict, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            rank: int = 0) -> None:
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
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


# --- one epoch -----------------------------------------------------------------------------------------

def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, train_set: zdata.ImageSet,
                    pp: zdata.Preprocess, plan: EpochPlan, recipe: Recipe, dist: Dist, epoch: int,
                    start_step: int = 0, partial: dict | None = None, on_step=None) -> dict[str, float]:
    """One pass over the training set from `start_step`: SGD step, then feature scale clipping, per batch.
    `on_step(step, stats)` is called after each update (used for mid-epoch checkpoints)."""
    model.train()
    stats = dict(partial or {"loss": 0.0, "err": 0.0, "images": 0, "seconds": 0.0})
    work = local_slices(plan, recipe.batch_size, dist, start_step)
    chunks = [share for share, _ in work]
    step = start_step
    t0 = time.perf_counter()
    desc = f"epoch {epoch}/{recipe.epochs}"
    for (bases, labels, idx), (_, global_n) in zip(
            zdata.batches(train_set, chunks, workers=recipe.workers, progress=dist.main, desc=desc), work):
        bases, labels = bases.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
        x = pp.train_input(bases, plan.offsets[idx], plan.flips[idx])
        logits = model(x)
        # sum over this share, scaled so that DDP's average over processes is the global-batch mean
        loss = F.cross_entropy(logits, labels, reduction="sum") * (dist.world / global_n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip_filters(_unwrap(model), recipe.clip_radius)
        with torch.no_grad():
            stats["loss"] += float(loss) * global_n / dist.world
            stats["err"] += topk_errors(logits.detach(), labels, ks=(1,))[0]
            stats["images"] += len(labels)
        step += 1
        if on_step is not None:
            stats_now = dict(stats, seconds=stats["seconds"] + time.perf_counter() - t0)
            on_step(step, stats_now)
    stats["seconds"] += time.perf_counter() - t0
    loss_sum, err_sum, n, secs = _all_sum([stats["loss"], stats["err"], stats["images"], stats["seconds"]], dist)
    n = max(n, 1)
    return {"train_loss": loss_sum / n, "train_top1_err": err_sum / n, "train_images": int(n),
            "train_seconds": secs / dist.world, "images_per_s": n / max(secs / dist.world, 1e-9)}


# --- a whole run ---------------------------------------------------------------------------------------

def _anneal(optimizer, scheduler, recipe: Recipe) -> None:
    for g in optimizer.param_groups:
        g["lr"] = max(g["lr"] * recipe.lr_factor, recipe.min_lr)
    scheduler.num_bad_epochs = 0


def _check_resume(saved: Recipe, recipe: Recipe, done: int, step: int) -> None:
    a, b = saved.to_dict(), recipe.to_dict()
    diff = [k for k in a if a[k] != b.get(k) and k not in RESUMABLE_CHANGES]
    if diff:
        raise UsageError(f"--resume with a different recipe ({', '.join(f'{k}: {a[k]!r} -> {b[k]!r}' for k in diff)}); "
                         "rerun with the saved recipe (recipe.json in the run folder) or pick a new --out")
    # a fresh run with the new recipe must equal the resumed one: only annealing still ahead may change (after
    # the epoch just finished too, when resuming at its end: the rate is then lowered on resume)
    added, removed = set(recipe.anneal_at) - set(saved.anneal_at), set(saved.anneal_at) - set(recipe.anneal_at)
    past = sorted({e for e in added if e < done or (e == done and step)} | {e for e in removed if e <= done})
    if past:
        raise UsageError(f"--resume changes anneal_at at epoch {past[0]}, already trained ({done} done); "
                         f"only later epochs can be added or removed")


def open_training_data(recipe: Recipe, model: nn.Module, dist: Dist):
    """Training and validation sets plus the preprocessing with the training set's mean image."""
    pp = zdata.preprocess_for(model)
    train_set = zdata.open_dataset(recipe.data, recipe.train_split, pp).head(recipe.limit_train)
    val_set = zdata.open_dataset(recipe.data, recipe.val_split, pp).head(recipe.limit_val)
    if train_set.labels.dim() != 1:
        raise UsageError(f"{recipe.data} has multi-label targets; the Sec. 3 recipe trains a softmax on "
                         "single-label data")
    if pp.mean_image is None and pp.channel_mean is None:
        pp = pp.with_mean(zdata.mean_image(train_set, workers=recipe.workers, progress=dist.main))
        train_set.preprocess = val_set.preprocess = pp
    return train_set, val_set, pp


def fit(recipe: Recipe, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train with `recipe` into `recipe.out`; with `resume`, continue the run found there. Returns the final
    metrics (also written to OUT/metrics.json)."""
    from .progress import set_enabled

    set_enabled(progress)
    dist = setup_processes(recipe)
    if recipe.deterministic:
        if dist.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    out = recipe.out
    ckpt_path = os.path.join(out, CHECKPOINT)
    have_ckpt = os.path.isfile(ckpt_path)
    if have_ckpt and not resume:
        meta = models.weights_metadata(ckpt_path)
        raise UsageError(f"{out!r} already holds a run (epoch {meta.get('epoch', '?')} done); pass --resume to "
                         "continue it, or choose another --out")
    tensors, meta = load_checkpoint(ckpt_path) if (resume and have_ckpt) else ({}, {})
    if meta:
        saved = Recipe().replace(**json.loads(meta["recipe"]))
        _check_resume(saved, recipe, int(meta["epoch"]), int(meta["step"]))

    torch.manual_seed(recipe.seed)
    probe = models.build(recipe.model, num_classes=recipe.num_classes or 1, init="torch",
                         **recipe.model_overrides) if not recipe.model.startswith("torchvision:") else \
        models.build(recipe.model, num_classes=recipe.num_classes or 1)
    train_set, val_set, pp = open_training_data(recipe, probe, dist)
    num_classes = recipe.num_classes or len(train_set.classes)
    torch.manual_seed(recipe.seed)
    overrides = dict(recipe.model_overrides)
    if not recipe.model.startswith("torchvision:"):
        overrides.update(init=recipe.init, dropout=recipe.dropout)
    model = models.build(recipe.model, num_classes=num_classes, **overrides).to(dist.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.lr_factor, patience=recipe.lr_patience,
        threshold=recipe.lr_threshold, threshold_mode="abs", min_lr=recipe.min_lr)
    epoch, step, history, partial = 0, 0, [], None
    if meta:
        restore(tensors, meta, model, optimizer, scheduler, dist.rank)
        epoch, step = int(meta["epoch"]), int(meta["step"])
        history, partial = json.loads(meta["history"]), json.loads(meta["partial"]) or None
        if step == 0 and epoch in recipe.anneal_at and epoch not in saved.anneal_at:
            _anneal(optimizer, scheduler, recipe)
        if dist.main:
            print(f"resuming {out}: epoch {epoch} done" + (f", {step} steps into epoch {epoch + 1}" if step else ""),
                  flush=True)
    else:
        torch.manual_seed(recipe.seed + dist.rank)  # dropout streams differ across processes
    if dist.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dist.device] if dist.device.type == "cuda"
                                                    else None)
    if dist.main:
        os.makedirs(out, exist_ok=True)
        atomic_write_text(os.path.join(out, "recipe.json"), recipe.to_json() + "\n")
    snaps = snapshot_epochs(recipe)
    started = time.perf_counter() - (history[-1]["wall_seconds"] if history else 0.0)
    last_save = [time.monotonic()]

    def checkpoint(ep: int, st: int, part: dict | None) -> None:
        rngs = rng_states(dist)  # every process calls this (a collective under torchrun)
        if dist.main:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, pp, recipe, ep, st, history, part or {},
                            train_set.classes, rngs)
        last_save[0] = time.monotonic()

    def on_step(st: int, stats: dict) -> None:
        if not recipe.checkpoint_minutes:
            return
        due = time.monotonic() - last_save[0] > 60 * recipe.checkpoint_minutes
        if dist.world > 1:  # rank 0's clock decides, so that every process checkpoints at the same step
            flag = torch.tensor([int(due)], device=dist.device)
            torch_dist.broadcast(flag, 0)
            due = bool(flag.item())
        if due:
            checkpoint(epoch, st, stats)

    while epoch < recipe.epochs:
        plan = epoch_plan(len(train_set), epoch + 1, recipe, pp)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(model, optimizer, train_set, pp, plan, recipe, dist, epoch + 1, step, partial, on_step)
        va = evaluate(model, val_set, pp, dist=dist, workers=recipe.workers)
        epoch, step, partial = epoch + 1, 0, None
        row = {"epoch": epoch, "lr": lr, **tr, "val_loss": va["loss"], "val_top1_err": va["top1_err"],
               "val_top5_err": va["top5_err"], "wall_seconds": time.perf_counter() - started}
        history.append(row)
        recent = [r["val_top1_err"] for r in history[-recipe.lr_window:]]
        scheduler.step(sum(recent) / len(recent))  # plateau of the smoothed validation error
        if epoch in recipe.anneal_at:  # annealed by hand (recorded in the recipe)
            _anneal(optimizer, scheduler, recipe)
        if dist.main:
            write_logs(out, history)
            if epoch in snaps:
                save_weights(model, os.path.join(out, "snapshots", f"epoch-{epoch:03d}.safetensors"), pp,
                             epoch=str(epoch), recipe=recipe.to_json(), metrics=json.dumps(row),
                             classes=json.dumps(train_set.classes))
            print(f"epoch {epoch}/{recipe.epochs}  lr {lr:.0e}  train err {tr['train_top1_err']:.4f}  "
                  f"val top-1 {va['top1_err']:.4f} top-5 {va['top5_err']:.4f}  {tr['images_per_s']:.0f} img/s",
                  flush=True)
        checkpoint(epoch, 0, None)
    # final: Table 2's columns with a centre crop and with 10 crops
    final_c = evaluate(model, val_set, pp, dist=dist, workers=recipe.workers)
    final_10 = evaluate(model, val_set, pp, ten_crop=True, dist=dist, workers=recipe.workers)
    last = history[-1] if history else {}
    result = {
        "model": recipe.model, "data": recipe.data, "epochs": recipe.epochs,
        "train_top1_err": last.get("train_top1_err"),
        "val": {"centre": final_c, "ten_crop": final_10},
        "train_wall_seconds": sum(r["train_seconds"] for r in history),
        "recipe": recipe.to_dict(), "environment": environment(dist.device), "processes": dist.world,
    }
    if dist.main:
        save_weights(model, os.path.join(out, "model.safetensors"), pp, recipe=recipe.to_json(),
                     metrics=json.dumps({k: result[k] for k in ("train_top1_err", "val")}),
                     classes=json.dumps(train_set.classes))
        atomic_write_json(os.path.join(out, "metrics.json"), result)
    teardown(dist)
    return result


def teardown(dist: Dist) -> None:
    """End the process group a torchrun run opened."""
    if dist.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def write_logs(out: str, history: list[dict]) -> None:
    """metrics.jsonl, metrics.csv and curves.png, rewritten whole from the history (so resumes never
    duplicate rows)."""
    from .plots import training_curves

    atomic_write_text(os.path.join(out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    cols = list(history[0])
    lines = [",".join(cols)] + [",".join(_fmt(r.get(c)) for c in cols) for r in history]
    atomic_write_text(os.path.join(out, "metrics.csv"), "\n".join(lines) + "\n")
    training_curves(history, os.path.join(out, "curves.png"))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


def open_model(model_name: str | None, weights: str | None = None, pretrained: bool = False,
               device: torch.device = torch.device("cpu"), seed: int = 0):
    """(model, preprocessing, name, weights path) for the analysis commands: the embedded model, a model with
    its weights, or (no weights) the model at its initialization, seeded so that every torchrun rank and every
    rerun sees the same network."""
    if pretrained:
        from .pretrained import pretrained as embedded

        p = embedded()
        return p.model.to(device), p.preprocess, p.name, p.weights_path
    if not model_name:
        raise UsageError("pass --model NAME (see `zfnet models`), with --weights FILE for a trained model, "
                         "or --pretrained")
    if weights:
        model, pp = load_for_eval(model_name, weights, device)
        return model, pp, model_name, weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(model_name)
    note(f"no --weights: {model_name} at its random initialization (seed {seed}), no mean image")
    model = model.to(device).eval()
    return model, zdata.preprocess_for(model), model_name, None


def load_for_eval(model_name: str, weights: str, device: torch.device) -> tuple[nn.Module, zdata.Preprocess]:
    """A model with its weights and the preprocessing stored beside them (mean image)."""
    model = models.build(model_name, weights=weights).to(device).eval()
    pp = zdata.preprocess_for(model)
    if not isinstance(model, models.ConvNet):
        return model, pp
    mean = load_tensors(weights).get("preprocess/mean_image") if weights.endswith(".safetensors") else None
    if mean is None:
        raise UsageError(f"{weights!r} carries no mean image (Sec. 3 preprocessing); use weights written by "
                         "`zfnet train`, which stores it")
    return model, pp.with_mean(mean)
