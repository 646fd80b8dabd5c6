"""Where results go: one guard for every output path, and staged folders so that nothing the user had is lost.

An output folder is either new, or one zfnet made for the same command (it holds `MARKER`); anything else is
refused. It is never equal to, inside, or around an input (`--data`, `--image`, `--weights`, the package).
A multi-file result is written into a sibling work folder (`.NAME.zfnet-partial`) and swapped into place when
complete, so a refusal, a crash or a full disk leaves the earlier result byte for byte as it was; a resumable
command's interrupted work stays in that sibling and the same command continues from it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .errors import UsageError
from .io import DiskFull, atomic_write_json, write_error

MARKER = ".zfnet-output.json"
NAME_MAX = 255
PACKAGE = os.path.dirname(os.path.abspath(__file__))


def check_name(path: str, flag: str = "--out") -> None:
    """Refuse a path that no file system call could take: bytes that are not UTF-8, a part over 255 bytes, a
    symbolic link to nothing."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{flag} {path!r} holds bytes that are not UTF-8; pass a name in plain text") from None
    if "\0" in path:
        raise UsageError(f"{flag} {path!r} holds a NUL character; pass another name")
    for part in path.split(os.sep):
        if len(part.encode()) > NAME_MAX:
            raise UsageError(
                f"{flag}: the name {part[:24]!r}... is {len(part.encode())} bytes; file names are at most "
                f"{NAME_MAX}: pass a shorter one"
            )
    parts = os.path.normpath(path).split(os.sep)
    for k in range(1, len(parts) + 1):  # at any depth: writing through it would create its target
        head = os.sep.join(parts[:k]) or os.sep
        if os.path.islink(head) and not os.path.exists(head):
            what = "is" if k == len(parts) else f"passes through {head!r}, which is"
            raise UsageError(
                f"{flag} {path!r} {what} a symbolic link to {os.readlink(head)!r}, which does not exist; create "
                "the target or pass another path"
            )


def real(path: str) -> str:
    """The real path of `path`, also when its last parts do not exist yet."""
    head, tail = os.path.abspath(path), []
    while not os.path.lexists(head) and os.path.dirname(head) != head:
        head, part = os.path.split(head)
        tail.append(part)
    return os.path.join(os.path.realpath(head), *reversed(tail))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def input_paths(args) -> list[tuple[str, str]]:
    """(flag, path) of every file or folder a command reads, from its parsed arguments."""
    from .data import parse_spec

    found: list[tuple[str, str]] = []

    def add(flag: str, value) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str) and v and os.path.lexists(v):
                found.append((flag, v))

    for name in ("data", "set_a", "set_b"):
        spec = getattr(args, name, None)
        flag = "--data" if name == "data" else name.upper()
        if isinstance(spec, str):
            add(flag, spec)
            try:
                add(flag, parse_spec(spec)[1])
            except UsageError:
                pass
    for name in ("image", "weights", "compare_weights", "parts", "exclude", "snapshots", "include", "classes"):
        add("--" + name.replace("_", "-"), getattr(args, name, None))
    if getattr(args, "evolution", None) not in (None, "pretrained"):
        add("--evolution", args.evolution)
    if isinstance(getattr(args, "mean", None), str) and args.mean not in ("data", "none"):
        add("--mean", args.mean)
    return found


def check_not_input(path: str, inputs: Iterable[tuple[str, str]], flag: str = "--out") -> None:
    """Refuse an output equal to, inside or containing an input, or the zfnet package."""
    where = real(path)
    for what, p in [*inputs, ("the zfnet package", PACKAGE)]:
        rp = real(p)
        name = what if what.startswith("the ") else f"{what} {p!r}"
        if where == rp:
            raise UsageError(f"{flag} {path!r} is {name} itself: it would be overwritten; pass another {flag}")
        if _within(where, rp) and os.path.isdir(rp):
            raise UsageError(f"{flag} {path!r} is inside {name}: results would mix with it; pass another {flag}")
        if _within(rp, where):
            raise UsageError(f"{flag} {path!r} contains {name}: it would be replaced; pass another {flag}")


def read_marker(folder: str) -> dict | None:
    """The folder's marker ({"command": ...}), None when there is none; a damaged one is one line."""
    from .readback import read_json

    path = os.path.join(folder, MARKER)
    if not os.path.isfile(path):
        return None
    return read_json(path, {"command": str}, fix=f"delete {path} if the folder holds zfnet results")


def user_files(folder: str) -> list[str]:
    """The entries of `folder` other than zfnet's marker."""
    return sorted(n for n in os.listdir(folder) if n != MARKER) if os.path.isdir(folder) else []


def check_folder(out: str, command: str, inputs: Iterable[tuple[str, str]] = (), legacy: tuple[str, ...] = ()) -> None:
    """The output guard for a folder: new, empty, or made by `zfnet <command>` (its marker, or for folders from
    before markers one of the `legacy` files it writes); never an input. Else one line, before any work."""
    check_name(out)
    check_not_input(out, inputs)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a file; pass a folder")
    parent = real(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write --out {out!r} ({parent!r} is not a writable folder); pick another place")
    if not user_files(out):
        return
    marker = read_marker(out)
    if marker is not None:
        if marker["command"] != command:
            raise UsageError(
                f"--out {out!r} holds the results of `zfnet {marker['command']}`, not of `zfnet {command}`; "
                "pass a new --out"
            )
        return
    if any(os.path.exists(os.path.join(out, f)) for f in legacy):
        return
    raise UsageError(
        f"--out {out!r} is a folder that zfnet {command} did not make and it is not empty; pass a new or empty "
        "--out (nothing in it was touched)"
    )


def check_file(out: str, inputs: Iterable[tuple[str, str]] = (), flag: str = "--out", extensions=()) -> None:
    """The output guard for a single file: writable, of a known type, never an input."""
    from .io import check_output_file

    check_name(out, flag)
    check_output_file(out, flag, extensions)
    check_not_input(out, inputs, flag)


def _mark(folder: str, command: str) -> None:
    from ._version import __version__

    path = os.path.join(folder, MARKER)
    if not os.path.isfile(path):
        atomic_write_json(path, {"command": command, "zfnet": __version__})


def claim(out: str, command: str, inputs: Iterable[tuple[str, str]] = (), legacy: tuple[str, ...] = ()) -> None:
    """Guard `out` and mark it as `command`'s, for the commands whose folder is their own resume state (train,
    ablation, archselect, layerprobe: each file written atomically, the tables last)."""
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 guards and marks the folder
        return
    check_folder(out, command, inputs, legacy)
    try:
        os.makedirs(out, exist_ok=True)
        _mark(out, command)
    except OSError as e:
        raise write_error(out, e) from None


def sibling(out: str, what: str) -> str:
    """`.NAME.zfnet-<what>` beside `out` (a long NAME is shortened, with a hash, to fit 255 bytes)."""
    head, name = os.path.split(real(out).rstrip(os.sep))
    suffix = f".zfnet-{what}"
    if len(name.encode()) + len(suffix) + 1 > NAME_MAX:
        name = name.encode()[:180].decode(errors="ignore") + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return os.path.join(head, f".{name}{suffix}")


def _link_tree(src: str, dst: str) -> None:
    """`dst` as a copy of `src` made of hard links (every zfnet write replaces a file by a rename, so the
    linked originals are never written through); plain copies where links are not possible."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=link)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def _swap_in(work: str, out: str) -> None:
    if not os.path.lexists(out):
        os.rename(work, out)
        return
    if _exchange(work, out):
        shutil.rmtree(work, ignore_errors=True)  # now the earlier result
        return
    old = sibling(out, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    os.rename(work, out)
    shutil.rmtree(old, ignore_errors=True)


def _recover(out: str) -> None:
    """A run killed between the two renames of `_swap_in` left the earlier result as the `old` sibling."""
    old = sibling(out, "old")
    if os.path.isdir(old):
        if os.path.lexists(out):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, out)


@contextmanager
def staged(
    out: str,
    command: str,
    *,
    inputs: Iterable[tuple[str, str]] = (),
    reuse: bool = False,
    legacy: tuple[str, ...] = (),
) -> Iterator[str]:
    """Guard `out`, then yield the work folder the command writes into; on success it replaces `out` in one
    step. `reuse`: the command skips what is already on disk (atlas, report), so the work folder starts as a
    hard-link copy of the earlier result and an interrupted run's work folder is continued; otherwise it
    starts empty and a failure removes it. A refusal (`UsageError`) of a first run removes it too; a crash,
    an interrupt or a full disk keeps a resumable command's work for the rerun."""
    work = sibling(out, "partial")
    if os.environ.get("RANK", "0") != "0":
        # torchrun: rank 0 prepares the folder before the process group forms, the others write their
        # shards into it only after joining the group, so they never touch it first
        yield work
        return
    check_folder(out, command, list(inputs), legacy)
    target = real(out)
    _recover(target)
    if os.path.isdir(work) and not reuse:
        shutil.rmtree(work)
    fresh = not os.path.isdir(work)
    try:
        if fresh:
            if reuse and os.path.isdir(target):
                _link_tree(target, work)
            else:
                os.makedirs(work, exist_ok=True)
        _mark(work, command)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise write_error(out, e) from None
    try:
        yield work
        _swap_in(work, target)
    except BaseException as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            e = write_error(out, e)
        refused = isinstance(e, UsageError) and not isinstance(e, DiskFull)
        if not reuse or (fresh and refused):
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, UsageError) and work in str(e):  # name the folder the user gave, not the work folder
            raise type(e)(str(e).replace(work, out)) from None
        if isinstance(e, UsageError):
            raise e from None
        raise


def stage_of(args, command: str, reuse: bool = False, legacy: tuple[str, ...] = ()):
    """`staged` for a command's parsed arguments (`args.out`, the inputs its flags name)."""
    return staged(args.out, command, inputs=input_paths(args), reuse=reuse, legacy=legacy)


__all__ = ["MARKER", "check_file", "check_folder", "claim", "input_paths", "stage_of", "staged"]
