"""The ``caetune`` command line: one sub-command per job.

Each sub-command lives beside the code it drives (``caetune.models._cli`` for
``train``, ``caetune.search._cli`` for ``search`` ...) and exposes
``register(subparsers)``; this file only dispatches. Bad input anywhere is an
:class:`~caetune.InputError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from caetune import __version__
from caetune._errors import InputError

# sub-command -> module with register(subparsers); imported lazily so that
# `caetune --help` does not import torch or ray.
COMMANDS: dict[str, str] = {
    "train": "caetune.models._cli",
    "search": "caetune.search._cli",
    "report": "caetune.analysis._cli",
    "reproduce": "caetune.analysis._cli",
    "submit": "caetune._cluster_cli",
    "status": "caetune._cluster_cli",
    "logs": "caetune._cluster_cli",
    "stop": "caetune._cluster_cli",
    "export": "caetune._export_cli",
}

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``caetune train: --n-neurons: ...``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="caetune", description="Hyperparameter search for convolutional autoencoders."
    )
    parser.add_argument("--version", action="version", version=f"caetune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    # dict.fromkeys: a module that serves several commands registers them all, once.
    for module in dict.fromkeys((commands or COMMANDS).values()):
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only import the module of the command asked for (keeps --help and errors fast).
    chosen = {name: mod for name, mod in COMMANDS.items() if name in argv[:1]} or COMMANDS
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        # Escaped so that a control character in a path (a newline) cannot split the one line.
        message = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(err))
        print(f"caetune {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"caetune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
