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

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from . import data as zdata
from . import models
from .calling import first_nonfinite
from .checkpoints import CHECKPOINT, load_checkpoint, restore, rng_states, save_checkpoint
from .errors import UsageError
from .io import atomic_write_json, atomic_write_text, safetensors_metadata
from .provenance import environment
from .recipe import Recipe, RunOptions, snapshot_epochs
from .runtime import Dist, all_sum, eval_mode, setup_processes, teardown, unwrap
from .weights import default_preprocess, save_weights

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
def predict(
    model_list: list[nn.Module], bases: torch.Tensor, pp: zdata.Preprocess, ten_crop: bool, device: torch.device
) -> torch.Tensor:
    """Averaged softmax over models (ensembles, Table 1) and crops (10-crop, Sec. 3) -> N x C probabilities."""
    bases = bases.to(device)
    x = pp.ten_crop_input(bases) if ten_crop else pp.eval_input(bases)
    n = bases.shape[0]
    total: torch.Tensor | None = None
    for m in model_list:
        p = F.softmax(m(x).float(), dim=1)
        p = p.view(10, n, -1).mean(0) if ten_crop else p
        total = p if total is None else total + p
    assert total is not None, "no model to predict with"
    return total / len(model_list)


def evaluate(
    model: nn.Module | list[nn.Module],
    dataset: zdata.ImageSet,
    pp: zdata.Preprocess,
    batch_size: int = 256,
    ten_crop: bool = False,
    dist: Dist = Dist(),
    workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 error and loss on `dataset` (centre crop, or Sec. 3's 10 crops), in eval mode."""
    model_list = model if isinstance(model, list) else [model]
    idx = torch.arange(len(dataset))
    share = torch.tensor_split(idx, dist.world)[dist.rank]
    if ten_crop:  # 10 crops per image go through the model at once
        batch_size = max(1, batch_size // 10)
    totals: list[float] = [0.0, 0.0, 0.0, 0.0]  # err1, err5, nll, n
    with eval_mode(*model_list):
        for bases, labels, idx_b in zdata.batches(
            dataset, zdata.chunked(share, batch_size), workers=workers, progress=progress and dist.main, desc="evaluate"
        ):
            probs = predict(model_list, bases, pp, ten_crop, dist.device)
            bad = first_nonfinite(probs)
            if bad is not None:  # issue 35: never an error rate of NaN outputs
                first = int(idx_b[bad])
                raise UsageError(
                    f"the model's outputs hold NaN or inf for image {dataset.image_id(first)}; check the weights "
                    "and the input's normalization (--normalize, --mean)"
                )
            labels = labels.to(dist.device)
            if int(labels.max()) >= probs.shape[1] or int(labels.min()) < 0:
                raise UsageError(
                    f"{dataset.name} has {len(dataset.classes)} classes but the model predicts "
                    f"{probs.shape[1]}; evaluate on data with the model's classes"
                )
            e1, e5 = topk_errors(probs, labels)
            nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
            totals = [totals[0] + e1, totals[1] + e5, totals[2] + nll, totals[3] + len(labels)]
    err1, err5, loss, count = (float(v) for v in all_sum(totals, dist))
    n = max(count, 1.0)
    return {"top1_err": err1 / n, "top5_err": err5 / n, "loss": loss / n, "images": int(n)}


# --- one epoch -----------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: zdata.ImageSet,
    pp: zdata.Preprocess,
    plan: EpochPlan,
    recipe: Recipe,
    dist: Dist,
    epoch: int,
    start_step: int = 0,
    partial: dict | None = None,
    on_step=None,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the training set from `start_step`: SGD step, then feature scale clipping, per batch.
    `on_step(step, stats)` is called after each update (used for mid-epoch checkpoints)."""
    model.train()
    stats = dict(partial or {"loss": 0.0, "err": 0.0, "images": 0, "seconds": 0.0})
    work = [
        (k, share, n)
        for k, (share, n) in enumerate(local_slices(plan, recipe.batch_size, dist, start_step))
        if len(share)
    ]
    position = {int(i): (k, n) for k, share, n in work for i in share}  # image -> (step in this pass, batch)
    t0 = time.perf_counter()
    desc = f"epoch {epoch}/{recipe.epochs}"
    for bases, labels, idx in zdata.batches(
        train_set, [share for _, share, _ in work], workers=workers, progress=progress and dist.main, desc=desc
    ):
        # an unreadable file leaves its batch smaller; the update stays scaled by the planned batch size
        k, global_n = position[int(idx[0])]
        step = start_step + k + 1
        bases, labels = bases.to(dist.device, non_blocking=True), labels.to(dist.device, non_blocking=True)
        x = pp.train_input(bases, plan.offsets[idx], plan.flips[idx])
        logits = model(x)
        # sum over this share, scaled so that DDP's average over processes is the global-batch mean
        loss = F.cross_entropy(logits, labels, reduction="sum") * (dist.world / global_n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip_filters(unwrap(model), recipe.clip_radius)
        with torch.no_grad():
            stats["loss"] += float(loss) * global_n / dist.world
            stats["err"] += topk_errors(logits.detach(), labels, ks=(1,))[0]
            stats["images"] += len(labels)
        if on_step is not None:
            stats_now = dict(stats, seconds=stats["seconds"] + time.perf_counter() - t0)
            on_step(step, stats_now)
    stats["seconds"] += time.perf_counter() - t0
    loss_sum, err_sum, n, secs = all_sum([stats["loss"], stats["err"], stats["images"], stats["seconds"]], dist)
    n = max(n, 1)
    return {
        "train_loss": loss_sum / n,
        "train_top1_err": err_sum / n,
        "train_images": int(n),
        "train_seconds": secs / dist.world,
        "images_per_s": n / max(secs / dist.world, 1e-9),
    }


# --- a whole run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """The state of one training run: what `fit` builds, trains epoch by epoch and checkpoints."""

    recipe: Recipe
    options: RunOptions
    dist: Dist
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_set: zdata.ImageSet
    val_set: zdata.ImageSet
    pp: zdata.Preprocess
    epoch: int = 0  # epochs done
    step: int = 0  # steps done into the next epoch
    history: list[dict] = field(default_factory=list)
    partial: dict | None = None  # running statistics of a partly done epoch
    last_save: float = field(default_factory=time.monotonic)

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.options.out, CHECKPOINT)


def open_training_data(recipe: Recipe, model: nn.Module, workers: int = 0, progress: bool = True):
    """Training and validation sets plus the preprocessing they were made with (the dataset kind fixes `fit`
    for a fresh model) and the training set's per-pixel mean image."""
    pp = default_preprocess(model)
    train_set = zdata.open_dataset(recipe.data, recipe.train_split, pp, recipe.exclude).head(recipe.limit_train)
    pp = train_set.preprocess  # now with the fit the data asks for
    val_set = zdata.open_dataset(recipe.data, recipe.val_split, pp, recipe.exclude).head(recipe.limit_val)
    if train_set.labels.dim() != 1:
        raise UsageError(
            f"{recipe.data} has multi-label targets; the Sec. 3 recipe trains a softmax on single-label data"
        )
    if pp.mean_image is None and pp.channel_mean is None:
        pp = pp.with_mean(zdata.mean_image(train_set, workers=workers, progress=progress))
        train_set.preprocess = val_set.preprocess = pp
    return train_set, val_set, pp


def _check_resume(saved: Recipe, recipe: Recipe, done: int, step: int) -> None:
    a, b = saved.to_dict(), recipe.to_dict()
    diff = [k for k in a if a[k] != b.get(k) and k not in ("epochs", "snapshots", "anneal_at")]
    if diff:
        raise UsageError(
            f"--resume with a different recipe ({', '.join(f'{k}: {a[k]!r} -> {b[k]!r}' for k in diff)}); "
            "rerun with the saved recipe (recipe.json in the run folder) or pick a new --out"
        )
    # a fresh run with the new recipe must equal the resumed one: only annealing still ahead may change (after
    # the epoch just finished too, when resuming at its end: the rate is then lowered on resume)
    added, removed = set(recipe.anneal_at) - set(saved.anneal_at), set(saved.anneal_at) - set(recipe.anneal_at)
    past = sorted({e for e in added if e < done or (e == done and step)} | {e for e in removed if e <= done})
    if past:
        raise UsageError(
            f"--resume changes anneal_at at epoch {past[0]}, already trained ({done} done); "
            f"only later epochs can be added or removed"
        )


def fig3(family: models.Family, init: str | None, dropout: float | None) -> dict[str, Any]:
    """The recipe's initialization and dropout, for a family that takes the Fig. 3 family's overrides."""
    return {"init": init, "dropout": dropout} if family.overrides else {}


def build_run(recipe: Recipe, options: RunOptions, resume: bool = False, progress: bool = True) -> Run:
    """Processes, data, model, optimizer and scheduler; with `resume`, everything restored from the checkpoint."""
    dist = setup_processes(options.device, options.threads, recipe.batch_size)
    if recipe.deterministic:
        if dist.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt_path = os.path.join(options.out, CHECKPOINT)
    have_ckpt = os.path.isfile(ckpt_path)
    if have_ckpt and not resume:
        try:
            meta = safetensors_metadata(ckpt_path)
        except (OSError, ValueError):
            meta = {}
        raise UsageError(
            f"{options.out!r} already holds a run (epoch {meta.get('epoch', '?')} done); pass --resume "
            "to continue it, or choose another --out"
        )
    tensors, meta = load_checkpoint(ckpt_path) if (resume and have_ckpt) else ({}, {})
    saved = Recipe.from_dict(json.loads(meta["recipe"])) if meta else None
    if saved is not None:
        _check_resume(saved, recipe, int(meta["epoch"]), int(meta["step"]))

    torch.manual_seed(recipe.seed)
    family = models.family(recipe.model)
    given = dict(recipe.model_overrides)  # a user's builder gets its own keywords; torchvision and timm refuse any
    probe = models.build(recipe.model, num_classes=recipe.num_classes or 1, **given, **fig3(family, "torch", None))
    train_set, val_set, pp = open_training_data(recipe, probe, options.workers, progress and dist.main)
    torch.manual_seed(recipe.seed)
    overrides = {**given, **fig3(family, recipe.init, recipe.dropout)}
    model = models.build(recipe.model, num_classes=recipe.num_classes or len(train_set.classes), **overrides).to(
        dist.device
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=recipe.lr_factor,
        patience=recipe.lr_patience,
        threshold=recipe.lr_threshold,
        threshold_mode="abs",
        min_lr=recipe.min_lr,
    )
    run = Run(recipe, options, dist, model, optimizer, scheduler, train_set, val_set, pp)
    if meta:
        restore(tensors, meta, model, optimizer, scheduler, dist.rank)
        run.epoch, run.step = int(meta["epoch"]), int(meta["step"])
        run.history, run.partial = json.loads(meta["history"]), json.loads(meta["partial"]) or None
        if saved and run.step == 0 and run.epoch in recipe.anneal_at and run.epoch not in saved.anneal_at:
            _anneal(optimizer, scheduler, recipe)
        if dist.main:
            print(
                f"resuming {options.out}: epoch {run.epoch} done"
                + (f", {run.step} steps into epoch {run.epoch + 1}" if run.step else ""),
                flush=True,
            )
    else:
        torch.manual_seed(recipe.seed + dist.rank)  # dropout streams differ across processes
    if dist.world > 1:
        run.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device] if dist.device.type == "cuda" else None
        )
    return run


def _anneal(optimizer, scheduler, recipe: Recipe) -> None:
    for g in optimizer.param_groups:
        g["lr"] = max(g["lr"] * recipe.lr_factor, recipe.min_lr)
    scheduler.num_bad_epochs = 0


def save_run_checkpoint(run: Run, partial: dict | None = None) -> None:
    """Checkpoint at `run.epoch` / `run.step` (every process takes part: the RNG states are gathered)."""
    rngs = rng_states(run.dist)
    if run.dist.main:
        save_checkpoint(
            run.checkpoint_path,
            run.model,
            run.optimizer,
            run.scheduler,
            run.pp,
            run.recipe.dumps(),
            run.epoch,
            run.step,
            run.history,
            partial or {},
            run.train_set.classes,
            rngs,
        )
    run.last_save = time.monotonic()


def _mid_epoch_checkpoint(run: Run, step: int, stats: dict) -> None:
    """Called after every step: checkpoint when `checkpoint_minutes` have passed (rank 0's clock decides)."""
    minutes = run.options.checkpoint_minutes
    if not minutes:
        return
    due = time.monotonic() - run.last_save > 60 * minutes
    if run.dist.world > 1:  # every process must checkpoint at the same step
        flag = torch.tensor([int(due)], device=run.dist.device)
        torch_dist.broadcast(flag, 0)
        due = bool(flag.item())
    if due:
        run.step = step
        save_run_checkpoint(run, stats)


def end_of_epoch(run: Run, lr: float, tr: dict, va: dict, started: float, on_logs=None) -> None:
    """Bookkeeping after epoch `run.epoch`: history, plateau annealing, logs (then `on_logs(out, history)`),
    snapshot, checkpoint."""
    recipe, out = run.recipe, run.options.out
    row = {
        "epoch": run.epoch,
        "lr": lr,
        **tr,
        "val_loss": va["loss"],
        "val_top1_err": va["top1_err"],
        "val_top5_err": va["top5_err"],
        "wall_seconds": time.perf_counter() - started,
    }
    run.history.append(row)
    recent = [r["val_top1_err"] for r in run.history[-recipe.lr_window :]]
    run.scheduler.step(sum(recent) / len(recent))  # plateau of the smoothed validation error
    if run.epoch in recipe.anneal_at:  # annealed by hand (recorded in the recipe)
        _anneal(run.optimizer, run.scheduler, recipe)
    if run.dist.main:
        write_logs(out, run.history)
        if on_logs is not None:
            on_logs(out, run.history)
        if run.epoch in snapshot_epochs(recipe):
            save_weights(
                run.model,
                os.path.join(out, "snapshots", f"epoch-{run.epoch:03d}.safetensors"),
                run.pp,
                epoch=str(run.epoch),
                recipe=recipe.dumps(),
                metrics=json.dumps(row),
                classes=json.dumps(run.train_set.classes),
            )
        print(
            f"epoch {run.epoch}/{recipe.epochs}  lr {lr:.0e}  train err {tr['train_top1_err']:.4f}  "
            f"val top-1 {va['top1_err']:.4f} top-5 {va['top5_err']:.4f}  {tr['images_per_s']:.0f} img/s",
            flush=True,
        )
    save_run_checkpoint(run)


def fit(
    recipe: Recipe, options: RunOptions | None = None, resume: bool = False, progress: bool = True, on_logs=None
) -> dict[str, Any]:
    """Train with `recipe` into `options.out`; with `resume`, continue the run found there. Returns the final
    metrics (also written to OUT/metrics.json). `on_logs(out, history)` runs after each epoch's logs are
    written (`zfnet.pipelines.train` draws the curves there)."""
    options = options or RunOptions()
    run = build_run(recipe, options, resume, progress)
    dist, out, workers = run.dist, options.out, options.workers
    if dist.main:
        os.makedirs(out, exist_ok=True)
        atomic_write_text(os.path.join(out, "recipe.json"), recipe.dumps() + "\n")
    started = time.perf_counter() - (run.history[-1]["wall_seconds"] if run.history else 0.0)
    while run.epoch < recipe.epochs:
        plan = epoch_plan(len(run.train_set), run.epoch + 1, recipe, run.pp)
        lr = run.optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            run.model,
            run.optimizer,
            run.train_set,
            run.pp,
            plan,
            recipe,
            dist,
            run.epoch + 1,
            run.step,
            run.partial,
            lambda st, stats: _mid_epoch_checkpoint(run, st, stats),
            workers,
            progress,
        )
        va = evaluate(run.model, run.val_set, run.pp, dist=dist, workers=workers)
        run.epoch, run.step, run.partial = run.epoch + 1, 0, None
        end_of_epoch(run, lr, tr, va, started, on_logs)
    # final: Table 2's columns with a centre crop and with 10 crops
    final_c = evaluate(run.model, run.val_set, run.pp, dist=dist, workers=workers)
    final_10 = evaluate(run.model, run.val_set, run.pp, ten_crop=True, dist=dist, workers=workers)
    for ds in (run.train_set, run.val_set):
        ds.check_readable()
    last = run.history[-1] if run.history else {}
    result = {
        "model": recipe.model,
        "data": recipe.data,
        "epochs": recipe.epochs,
        "train_top1_err": last.get("train_top1_err"),
        "val": {"centre": final_c, "ten_crop": final_10},
        "train_wall_seconds": sum(r["train_seconds"] for r in run.history),
        "recipe": recipe.to_dict(),
        "run": options.to_dict(),
        "environment": environment(dist.device),
        "processes": dist.world,
        "preprocess": run.pp.to_dict(),
        "skipped": {"train": run.train_set.skipped_report(), "val": run.val_set.skipped_report()},
    }
    if dist.main:
        save_weights(
            run.model,
            os.path.join(out, "model.safetensors"),
            run.pp,
            recipe=recipe.dumps(),
            metrics=json.dumps({k: result[k] for k in ("train_top1_err", "val")}),
            classes=json.dumps(run.train_set.classes),
        )
        atomic_write_json(os.path.join(out, "metrics.json"), result)
    teardown(dist)
    return result


def write_logs(out: str, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole from the history (so resumes never duplicate rows)."""

    atomic_write_text(os.path.join(out, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in r.items()} for r in history)
    atomic_write_text(os.path.join(out, "metrics.csv"), buf.getvalue())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)
