"""`zfnet <command>` and `python -m zfnet`: argument wiring only, one small module per concept; the commands come
from a registry. Every user error is one line on stderr and exit code 2; notes (`zfnet.errors.note`) print
after a command has succeeded."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings

from .. import usercode
from ..errors import UsageError, ZfnetNote
from ..io import folder_lock, write_error
from ..outputs import check_name
from . import (  # noqa: F401  (each registers)
    analyses,
    atlas,
    dedupe,
    evidence,
    explore,
    index,
    models,
    occlusion,
    project,
    report,
    serve,
    train,
    transfer,
    visualize,
)
from .registry import COMMANDS, Parser


def build_parser() -> Parser:
    from .._version import __version__

    parser = Parser(
        prog="zfnet",
        description="Zeiler & Fergus (ECCV 2014) for any PyTorch CNN. "
        "Run `zfnet <command> --help` for each command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"zfnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for name in COMMANDS:
        c = COMMANDS.get(name)
        p = sub.add_parser(
            name,
            help=c.help,
            description=f"{c.help}.",
            epilog=f"example:\n  {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.add_arguments(p)
    return parser


@contextlib.contextmanager
def _staged(args, cmd):
    """A staged command writes into `args.work`, which replaces --out when it succeeds (`zfnet.outputs`)."""
    if not cmd.output:
        yield
        return
    from ..outputs import stage_of

    with stage_of(args, args.command, reuse=cmd.output == "reuse", legacy=cmd.legacy) as work:
        args.work = work
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        code = _run(args)
    finally:
        if torchrun:  # a torchrun process that failed: leave the group
            from ..runtime import abandon_processes

            abandon_processes()
    if torchrun:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End a torchrun process now, without the interpreter's finalization. Gloo's worker threads can outlive the
    destroyed process group holding finished work whose tensors refer to Python objects; freeing them while the
    interpreter is torn down aborts the process ("terminate called without an active exception", SIGABRT; seen
    here in 8 of 60 two-process atlas runs, either rank; pytorch/pytorch#179291 describes the mechanism), and
    torchrun then fails the whole run. Everything the process wrote is already closed (atomic writes); only the
    standard streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@contextlib.contextmanager
def _output(args, cmd):
    """--out held (`folder_lock`) and staged (`_staged`) while the command runs; a file-system URI (zfnet index,
    `uri_out`) is written there, shard by shard, neither staged nor locked."""
    if cmd.uri_out and "://" in str(getattr(args, "out", "") or ""):
        args.work = args.out
        yield
        return
    if isinstance(getattr(args, "out", None), str):
        check_name(args.out)  # before any path is built from it
    out = getattr(args, "out", None) if cmd.locks_out and os.environ.get("RANK", "0") == "0" else None
    with folder_lock(out) if out else contextlib.nullcontext(), _staged(args, cmd):
        yield


def _run(args) -> int:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZfnetNote)
            cmd = COMMANDS.get(args.command)
            with _output(args, cmd):
                code = cmd.run(args) or 0
    except UsageError as e:
        print(f"zfnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # a full or read-only disk: one line
            raise
        print(f"zfnet {args.command}: error: {write_error(e.filename or '?', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zfnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # the user's module, builder or forward (sys.exit too): one line, exit 2
        err = usercode.blame(e)
        if err is None:
            raise
        print(f"zfnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    if os.environ.get("RANK", "0") == "0":
        seen = set()
        for w in caught:
            if issubclass(w.category, ZfnetNote):
                if str(w.message) not in seen:
                    seen.add(str(w.message))
                    print(f"note: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code


if __name__ == "__main__":
    sys.exit(main())
