"""Devices, processes and modes shared by training, scans and every analysis.

Single process, or the process group `torchrun` describes in RANK / WORLD_SIZE / LOCAL_RANK (gloo on CPU,
nccl on GPU). `eval_mode` puts a model in eval mode for a block and gives every module its mode back on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from .errors import UsageError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, process count, device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N' -> a device; anything else is a one-line error."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec or "auto"
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}; pass --device auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {spec!r} is not supported; pass --device auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} asked for but CUDA is not available; pass --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {spec!r} does not exist ({torch.cuda.device_count()} GPUs); pick another index")
    return dev


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_processes(device: str = "auto", threads: int | None = None, batch_size: int | None = None) -> Dist:
    """Join the process group torchrun describes (or stay single); `batch_size`, when given, must split evenly."""
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world == 1:
        return Dist(0, 1, dev)
    if batch_size is not None and batch_size % world:
        raise UsageError(
            f"batch_size {batch_size} does not split over {world} processes; pick a multiple of the process count"
        )
    if not torch_dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), dev)


def teardown(dist: Dist) -> None:
    """End the process group a torchrun run opened, all processes together (a barrier, then destroy): one that
    destroys its group while a peer still works can abort in gloo's threads at exit. Called right after a
    command's last collective, so the barrier waits only for that step, never for rank 0's writing (which may
    outlast the group's timeout); a second call does nothing."""
    if dist.world > 1 and torch_dist.is_initialized():
        try:
            torch_dist.barrier()
        finally:
            torch_dist.destroy_process_group()


def abandon_processes() -> None:
    """On an error, end the process group without waiting for the peers (which may never arrive), so the
    process exits with its one-line error rather than an abort in gloo's threads."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


class PeakMemory:
    """The process's peak anonymous memory (heap, tensors, arrays: Linux's RssAnon, sampled every `every`
    seconds on a thread) over a `with` block - unlike the peak RSS it leaves out file pages a memory map has
    read, which the kernel can drop at any time. `peak_mb` is None where /proc is not there."""

    def __init__(self, every: float = 0.05):
        import threading

        self.every = every
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def anon_mb() -> float | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def _sample(self) -> None:
        now = self.anon_mb()
        if now is not None:
            self.peak_mb = max(self.peak_mb or 0.0, now)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def barrier(dist: Dist) -> None:
    """Wait for every process of a torchrun run (nothing in a single process)."""
    if dist.world > 1 and torch_dist.is_initialized():
        torch_dist.barrier()


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sum over processes (float64); identity in a single process."""
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t)
    return t.tolist()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating type of the model's first floating parameter or buffer (float32 for a model with none):
    what its input is cast to."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives (the CPU for a model with none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextmanager
def weights_fixed(model: nn.Module) -> Iterator[None]:
    """No gradient for the model's parameters in the block (an input is optimized: backward skips every weight's
    gradient); on exit each parameter gets back its `requires_grad` (also on errors)."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, was in saved:
            p.requires_grad_(was)


@contextmanager
def channels_last_weights(model: nn.Module) -> Iterator[None]:
    """The model's 4-D parameters in channels-last for the block (convolutions on channels-last inputs then need
    no reorder); on exit each gets back its own tensor (also on errors). For fixed weights: nothing is written."""
    saved = [(p, p.data) for p in model.parameters() if p.dim() == 4]
    try:
        for p, data in saved:
            p.data = data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for p, data in saved:
            p.data = data


def fast_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively: a CUDA GPU that supports it, a CPU with AMX tiles
    (where bfloat16 convolutions run several times faster than float32 ones)."""
    if device.type == "cuda":  # natively: an emulated bfloat16 (before Ampere) is slower than float32
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # an older torch: no emulation to leave out
            return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent means no
    return device.type == "cpu" and probe is not None and bool(probe())


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode for the block; on exit every module gets back the mode it had (also on errors)."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, was in saved:
            m.training = was
