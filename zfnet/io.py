"""Atomic writes (a crash or kill never leaves a half-written result) and safe reads."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file the user writes
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.fspath(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the path's extension)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Save a PIL image atomically."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").upper() or "PNG"
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG" if fmt == "JPG" else fmt)


def check_output_file(path: str, flag: str = "--out", extensions: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file path that cannot be written: a folder, a missing or unwritable
    parent, or (with `extensions`) a type the writer does not know."""
    from .errors import UsageError

    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; pass a file name such as {os.path.join(path, 'out' + (extensions or ('.json',))[0])}")
    if extensions and not path.lower().endswith(extensions):
        raise UsageError(f"{flag} {path!r} must end in {' or '.join(extensions)}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path!r} ({parent!r} is not a writable folder); pick another place")


def check_output_dir(path: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    from .errors import UsageError

    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a file; pass a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path!r} ({parent!r} is not a writable folder); pick another place")
