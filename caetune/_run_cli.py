"""What ``caetune report`` and ``caetune export`` share on the command line: a run and its best K.

Both read a finished search run (``RUN``, a folder or ``s3://`` URL) and take
its best K trials by the run's one ranking (:func:`caetune._runs.rank_trials`).
Imported by ``--help``: no torch, ray or pandas at module level.
"""

from __future__ import annotations

import argparse

from caetune._renamed_flags import add_renamed, spelled


def add_run_command(
    subparsers, name: str, *, help: str, description: str, run_help: str, top_k: int
) -> argparse.ArgumentParser:
    """Adds the sub-command ``name`` with its ``RUN`` argument and ``--top-k`` (old: ``--top``).

    Args:
        subparsers: What ``ArgumentParser.add_subparsers`` returned.
        name: The sub-command.
        help: Its line in ``caetune --help``.
        description: Its ``--help`` text.
        run_help: What ``RUN`` is, for this command.
        top_k: The default K.
    """
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument("run", metavar="RUN", help=run_help)
    flag = parser.add_argument(
        "--top-k",
        type=int,
        default=top_k,
        metavar="K",
        help=f"how many of the best trials (default {top_k})",
    )
    add_renamed(parser, "--top", flag)
    return parser


def top_k_of(args: argparse.Namespace) -> int:
    """The parsed K, checked; an error names the flag as it was typed (``--top`` or ``--top-k``)."""
    from caetune._runs import check_top_k

    return check_top_k(args.top_k, field=spelled(args, "--top-k"))
