"""Provenance written beside every result: versions, device, threads, seed, wall time."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from typing import Any

import numpy
import torch

from ._version import __version__


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:

    dev = torch.device(device)
    info: dict[str, Any] = {
        "zfnet": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception:  # pragma: no cover - torchvision is a dependency
        pass
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Timer:
    """Wall time of a block: `with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def changed_keys(old: dict, new: dict) -> list[str]:
    """The settings that differ between two runs (what a refusal to reuse a folder names)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def write_result(
    path: str,
    body: dict[str, Any],
    *,
    started: float,
    device: str | torch.device = "cpu",
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pipeline's result file, the envelope every command writes: the result (`body`, its settings inside),
    the model it was made with (`Opened.info()`), the wall time since `started` (`time.perf_counter()`) and the
    environment, written atomically. Returns what was written."""
    from .io import atomic_write_json

    result = {**body, **({"model": model} if model is not None else {})}
    result |= {"wall_seconds": time.perf_counter() - started, "environment": environment(device)}
    atomic_write_json(path, result)
    return result
