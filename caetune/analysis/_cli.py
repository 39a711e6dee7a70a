"""``caetune report`` and ``caetune reproduce``: the analysis sub-commands."""

from __future__ import annotations

import argparse

from caetune._run_cli import add_run_command, top_k_of

_REPRODUCE_FLAGS = ("out", "seeds", "n_epochs", "subset", "grid", "batch_size", "device")


def register(subparsers) -> None:
    """Adds both sub-commands (this module is listed once per command in ``caetune.cli``)."""
    report = add_run_command(
        subparsers,
        "report",
        help="write the figures and index.html of a search run",
        description=(
            "Rebuild the top-K models of a search run (local folder or s3://bucket/prefix/NAME) "
            "from their checkpoints and write all figures and one self-contained index.html. "
            "The top: the trials the search confirmed with extra seeds first, then the others "
            "by objective."
        ),
        run_help="the run: RUN_ROOT/NAME, a folder or s3:// URL",
        top_k=3,
    )
    report.add_argument(
        "--out", metavar="DIR", help="report folder or s3:// URL (default RUN/report)"
    )
    report.set_defaults(func=run_report)

    reproduce = subparsers.add_parser(
        "reproduce",
        help="check the paper's findings on mnist-10k at small scale",
        description=(
            "Train the paper's grid on mnist-10k with several seeds per configuration and write "
            "a table of each finding of Tang, Lim & Siebert beside what caetune measured "
            "(agree, disagree, inconclusive)."
        ),
    )
    reproduce.add_argument(
        "--out", required=True, metavar="DIR", help="folder for findings.md and the CSV tables"
    )
    reproduce.add_argument(
        "--seeds", type=int, default=2, help="seeds per configuration, >= 2 (default 2)"
    )
    reproduce.add_argument(
        "--n-epochs", type=int, default=20, metavar="NE", help="epochs per run (default 20)"
    )
    reproduce.add_argument(
        "--subset", type=int, metavar="N", help="use only N of the 10,000 images (default all)"
    )
    reproduce.add_argument(
        "--grid", default="small", help="tiny, small (default: 7 configurations) or paper (16)"
    )
    reproduce.add_argument(
        "--batch-size", type=int, default=256, help="images per optimizer step (default 256)"
    )
    reproduce.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    reproduce.set_defaults(func=run_reproduce)


def run_report(args: argparse.Namespace) -> int:
    from caetune.analysis._report import write_report

    where = write_report(args.run, top=top_k_of(args), out=args.out)
    print(f"{where}/index.html")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from caetune.analysis._reproduce import reproduce

    # The flags' names are reproduce()'s parameters.
    result = reproduce(**{name: getattr(args, name) for name in _REPRODUCE_FLAGS})
    for row in result.findings.itertuples():
        print(f"{row.verdict:12s} {row.finding}: {row._3}")
    print(f"{result.out}/findings.md")
    return 0
