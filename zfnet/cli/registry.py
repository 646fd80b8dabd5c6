"""The command registry and the one-line-error parser; each cli/<concept>.py registers its commands here."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    locks_out: bool = False  # --out is a folder this run holds (zfnet.io.folder_lock) while it writes
    output: str = ""  # how --out is written (zfnet.outputs): "fresh" | "reuse" (staged), "" (the command guards it)
    legacy: tuple[str, ...] = ()  # files that show a folder from before markers is this command's
    uri_out: bool = False  # --out may be a pyarrow file-system URI (scheme://...): written there, not staged


COMMANDS: Registry[Command] = Registry("command")


def command(
    name: str,
    help: str,
    example: str,
    arguments: Callable[[argparse.ArgumentParser], None],
    locks_out: bool = False,
    output: str = "",
    legacy: tuple[str, ...] = (),
    uri_out: bool = False,
):
    """Register the decorated `run(args)` as subcommand `name`, with its argument builder and an example;
    `locks_out`: a second run into the same --out folder is refused while this one runs; `output`: --out is
    staged (`zfnet.outputs.staged`; "reuse" when the command skips what is on disk): `run` writes into
    `args.work` and names `args.out` to the user."""

    def wrap(run):
        COMMANDS.register(name, Command(help, example, arguments, run, locks_out, output, legacy, uri_out))
        return run

    return wrap


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
