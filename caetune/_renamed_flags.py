"""Old spellings of renamed command-line flags: they keep working, with one line saying the new one.

A flag is renamed when its name misleads (``--top`` beside the search's
``--top-k`` for the same K). Scripts that use the old spelling go on
working; each use prints ``<prog>: warning: --old is deprecated; use
--new`` on stderr, and errors name the flag as it was typed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _Renamed(argparse.Action):
    """Stores into the new flag's ``dest``, after a one-line warning."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)
        setattr(namespace, _spelling(self.dest), option_string)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Accepts ``old`` as a hidden, deprecated spelling of the flag ``new`` (its Action).

    Args:
        parser: The sub-command's parser.
        old: The old spelling (``--top``).
        new: What ``parser.add_argument`` returned for the new flag.
    """
    options: dict[str, Any] = {"type": new.type} if new.type is not None else {}
    parser.add_argument(
        old,
        dest=new.dest,
        metavar=new.metavar,
        default=argparse.SUPPRESS,
        action=_Renamed,
        new=new.option_strings[0],
        help=argparse.SUPPRESS,
        **options,
    )


def spelled(args: argparse.Namespace, new: str) -> str:
    """The flag as the user typed it: ``new``, or its old spelling when that was used."""
    dest = new.lstrip("-").replace("-", "_")
    return getattr(args, _spelling(dest), new)


def _spelling(dest: str) -> str:
    return f"_{dest}_typed_as"
