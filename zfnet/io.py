"""Atomic writes (a crash or kill never leaves a half-written result) and safe reads."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .errors import UsageError


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
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file the user writes
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from None
        raise
    except Exception as e:  # writers that wrap the OS error (safetensors, PIL, matplotlib backends)
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            raise write_error(path, OSError(errno.ENOSPC, "No space left on device")) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class DiskFull(UsageError):
    """A write failed for want of space; what was finished is kept (`zfnet.outputs.staged`)."""


def write_error(path: str, e: OSError) -> UsageError:
    """A failed write as the user's one-line error; the file at `path` is still the previous one."""

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"disk full while writing {path!r}; free some space and rerun the same command "
            "(the previous version of the file is intact, finished work is kept)"
        )
    return UsageError(f"cannot write {path!r} ({e.strerror or e}); make the folder writable or pick another --out")


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.fspath(path))


def parse_safetensors_header(head: bytes, path: str) -> dict[str, str]:
    """The string metadata of a safetensors file from its first bytes (8-byte length, then a JSON header);
    ValueError when they are not a safetensors header."""
    if len(head) < 8:
        raise ValueError(f"{path!r} is too short for a safetensors file")
    n = int.from_bytes(head[:8], "little")
    if n <= 0 or n > 100_000_000 or len(head) < 8 + n:
        raise ValueError(f"{path!r} has no valid safetensors header")
    header = json.loads(head[8 : 8 + n])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path!r} has metadata that is not strings")
    return dict(meta or {})


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, reading its header only (one open, a few kB)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path!r} has no valid safetensors header")
        f.seek(0)
        head = f.read(8 + n)
    return parse_safetensors_header(head, path)


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """A whole safetensors file read with one open: (tensors, string metadata, sha256 of its bytes)."""

    from safetensors.torch import load

    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    meta = parse_safetensors_header(data, path)
    return load(data), meta, hashlib.sha256(data).hexdigest()


def cache_dir(*parts: str) -> str:
    """zfnet's folder in the user cache: $ZFNET_CACHE, else $XDG_CACHE_HOME/zfnet, else ~/.cache/zfnet. Nothing
    zfnet caches (mean images, converted datasets, locks) is ever written inside a dataset folder."""
    root = os.environ.get("ZFNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zfnet"
    )
    return os.path.join(os.path.expanduser(root), *parts)


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
    """Save a PIL image atomically (PNG at zlib level 1: as small for the atlas's upscaled tiles, twice as fast)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").upper() or "PNG"
    with atomic_path(path) as tmp:
        if fmt == "PNG":
            image.save(tmp, format="PNG", compress_level=1)
        else:
            image.save(tmp, format="JPEG" if fmt == "JPG" else fmt)


def check_output_file(path: str, flag: str = "--out", extensions: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file path that cannot be written: a folder, a missing or unwritable
    parent, or (with `extensions`) a type the writer does not know."""

    if os.path.isdir(path):
        example = os.path.join(path, "out" + (extensions or (".json",))[0])
        raise UsageError(f"{flag} {path!r} is a folder; pass a file name such as {example}")
    if extensions and not path.lower().endswith(extensions):
        raise UsageError(f"{flag} {path!r} must end in {' or '.join(extensions)}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path!r} ({parent!r} is not a writable folder); pick another place")


def check_output_dir(path: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""

    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a file; pass a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {flag} {path!r} ({parent!r} is not a writable folder); pick another place")


def _real(path: str) -> str:
    """The real path of `path`, also when its last parts do not exist yet."""
    head, tail = os.path.abspath(path), []
    while not os.path.exists(head) and os.path.dirname(head) != head:
        head, part = os.path.split(head)
        tail.append(part)
    return os.path.join(os.path.realpath(head), *reversed(tail))


def _lock_file(path: str) -> str | None:
    """`path` when a lock file can be created there, else None."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError:
        return None
    return path


def _lock_path(real: str, shown: str) -> str:
    """The lock file of the folder `real`: in the cache, else beside the folder; one line when neither works."""
    name = hashlib.sha1(real.encode()).hexdigest()[:20] + ".lock"
    lock = _lock_file(os.path.join(cache_dir("locks"), name))
    if lock is None:  # an unwritable cache: the lock goes beside the output folder instead
        head, tail = os.path.split(real.rstrip(os.sep))
        lock = _lock_file(os.path.join(head, "." + tail[:200] + ".zfnet-lock"))
    if lock is None:
        raise UsageError(
            f"cannot create a lock file in {cache_dir('locks')!r} nor beside {shown!r}; set ZFNET_CACHE "
            "to a writable folder"
        )
    return lock


@contextmanager
def folder_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the output folder `path` for one run: a second run into it refuses at once. The lock is an advisory
    `flock` on a file named after the folder's real path in ~/.cache/zfnet/locks ($ZFNET_CACHE), which the
    kernel drops when its process dies - a killed run never leaves it stuck; where the cache cannot be written,
    on `.NAME.zfnet-lock` beside the folder. (No-op where `fcntl` is missing.)"""

    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    real = _real(os.fspath(path))
    lock = _lock_path(real, os.fspath(path))
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").split()[0] if os.fstat(fd).st_size else "?"
            finally:
                os.close(fd)
            raise UsageError(
                f"another zfnet run (pid {holder}) is writing {os.fspath(path)!r}; wait for it to "
                "finish or pass another --out"
            ) from None
        try:  # the file we locked must still be the one at `lock` (a finishing run unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {real}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
