"""``caetune search``: run, or resume, a hyperparameter search."""

from __future__ import annotations

import argparse
import dataclasses
import sys

# Imported by `caetune search --help`: keep module-level imports light (no torch, ray, optuna).
from caetune.search._defaults import DEFAULT_RUN_ROOT, DEFAULTS, preset_names
from caetune.search._objective import OBJECTIVES


def _default(key: str) -> str:
    """``(default X)`` from :data:`DEFAULTS`, so help and behaviour cannot disagree."""
    value = DEFAULTS[key]
    if isinstance(value, bool):
        return "(default on)" if value else "(default off)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"(default {value})"


def _setting_flag(group, flag: str, kind: type, metavar: str, text: str) -> None:
    """A number flag for the setting of its name (``--top-k``: ``top_k``), default in the help."""
    group.add_argument(
        flag, type=kind, metavar=metavar, help=f"{text} {_default(flag[2:].replace('-', '_'))}"
    )


def register(subparsers) -> None:
    presets = ", ".join(preset_names())
    parser = subparsers.add_parser(
        "search",
        help="search Nn, Nm, Ne ... with Ray Tune + Optuna + ASHA",
        description=(
            "Search a CAE's hyperparameters: Optuna's TPE proposes, Ray Tune runs the trials, "
            "ASHA stops weak ones, the top configs are re-trained with extra seeds. Writes "
            "RUN_ROOT/NAME/ (results.csv, study.db, trials/, confirm.csv, report/). Running the "
            "same command again, or --resume NAME, continues it."
        ),
    )
    what = parser.add_argument_group("what to search")
    what.add_argument(
        "--space",
        metavar="PRESET|FILE.yaml",
        help=f"a preset ({presets}) or a space file {_default('space')}",
    )
    what.add_argument(
        "--dataset",
        help="override the space's dataset (mnist-10k, cifar10, npz:PATH, folder:PATH ...)",
    )
    what.add_argument("--subset", type=int, metavar="N", help="use only N images of the dataset")
    _setting_flag(what, "--max-epochs", int, "NE", "cap Ne, a trial's epochs")
    what.add_argument(
        "--objective", choices=OBJECTIVES, help=f"what to minimise {_default('objective')}"
    )
    what.add_argument(
        "--utilisation-weight",
        type=float,
        metavar="W",
        # In words: the formula's text (caetune.analysis.objective_formula) would import torch here.
        help="how much a low U raises the combined objective (the run's experiment.yaml and report "
        f"show its formula); 0 is pure MSE {_default('utilisation_weight')}",
    )
    what.add_argument(
        "--seed", type=int, help=f"seeds the sampler and the trials {_default('seed')}"
    )
    what.add_argument(
        "--start-point",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"evaluate the paper's own choice first {_default('start_point')}",
    )
    budget = parser.add_argument_group("budget and resources")
    _setting_flag(budget, "--num-samples", int, "N", "trials in total")
    budget.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="at most N trials at once (default: as CPUs/GPUs allow)",
    )
    _setting_flag(budget, "--cpus-per-trial", float, "C", "CPUs (and torch threads) per trial")
    _setting_flag(
        budget,
        "--gpus-per-trial",
        float,
        "G",
        "GPUs per trial, e.g. 0.25 to share one; > 0 trains on CUDA",
    )
    _setting_flag(budget, "--grace-period", int, "E", "ASHA: epochs before a trial may be stopped")
    _setting_flag(budget, "--reduction-factor", float, "R", "ASHA's reduction factor")
    _setting_flag(
        budget, "--max-failures", int, "N", "retries of a trial whose worker or node died"
    )
    _setting_flag(budget, "--util-images", int, "N", "validation images U is computed on")
    _setting_flag(
        budget, "--confirm-seeds", int, "K", "re-train the top configs with K more seeds, 0: off"
    )
    _setting_flag(budget, "--top-k", int, "K", "configs to confirm and show")
    where = parser.add_argument_group("where")
    where.add_argument("--name", help="the run's name, RUN_ROOT/NAME (default: the space's name)")
    where.add_argument(
        "--run-root",
        metavar="DIR|s3://bucket/prefix",
        help=f"the folder (or S3 prefix) runs live in (default {DEFAULT_RUN_ROOT})",
    )
    # The old name of --run-root, which Optuna users read as the study's database URL.
    where.add_argument("--storage", metavar="DIR|s3://bucket/prefix", help=argparse.SUPPRESS)
    where.add_argument(
        "--study-storage",
        metavar="URL",
        help="an Optuna RDB URL, e.g. postgresql://... (default: RUN_ROOT/NAME/study.db)",
    )
    where.add_argument(
        "--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)"
    )
    where.add_argument(
        "--resume", metavar="NAME", help="continue the run NAME (settings not given are kept)"
    )
    where.add_argument(
        "--break-lease",
        action="store_true",
        help="take the run over from a driver that holds its lease on S3 or in the study's "
        "database (only when that driver is dead)",
    )
    where.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the analysis report at the end (default on)",
    )
    where.add_argument(
        "--keep-all-state",
        action="store_true",
        help="keep every trial's whole model.pt (by default a finished search keeps the best "
        "trials' weights and optimizer state only where a later --resume may continue)",
    )
    track = parser.add_argument_group("experiment tracking")
    track.add_argument(
        "--log",
        action="append",
        metavar="LOGGER",
        help="log every trial's per-epoch metrics and params to tensorboard (RUN/tune/) or "
        "mlflow; repeat for both (default: none)",
    )
    track.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI for --log mlflow (default: sqlite:///RUN/logs/mlflow.db)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caetune._errors import InputError
    from caetune.search._run import run_search
    from caetune.search._settings import SearchSettings

    if args.resume and args.name and args.name != args.resume:
        raise InputError("--resume", f"names the run {args.resume!r} but --name says {args.name!r}")
    run_root = run_root_of(args)
    # A flag named like its setting (--max-epochs: max_epochs) passes on as given; these do not.
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(SearchSettings)
        if field.name in vars(args) and field.name not in NOT_AS_GIVEN
    }
    settings = SearchSettings(
        **given,
        name=args.resume or args.name,
        run_root=run_root,
        resume=bool(args.resume),
        log=tuple(args.log or ()),
    )
    outcome = run_search(settings)
    return 130 if outcome.interrupted else 0


# Settings whose flag does not pass on as given: --resume NAME (name and resume), --run-root or
# --storage (run_root), --log (a list, the setting a tuple).
NOT_AS_GIVEN = ("name", "resume", "run_root", "storage", "log")


def run_root_of(args: argparse.Namespace) -> str | None:
    """``--run-root``, or the deprecated ``--storage`` (with one line on stderr saying so)."""
    from caetune._errors import InputError

    if args.storage is None:
        return args.run_root
    if args.run_root not in (None, args.storage):
        raise InputError("--storage", "the old name of --run-root: give only --run-root")
    print("caetune search: warning: --storage is deprecated; use --run-root", file=sys.stderr)
    return args.storage
