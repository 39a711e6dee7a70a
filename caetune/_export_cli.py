"""``caetune export``: the best K trials of a run as retrainable configs, weights and a manifest."""

from __future__ import annotations

import argparse

from caetune._renamed_flags import add_renamed, spelled

# Imported by `caetune export --help`: keep module-level imports light (no torch, ray, pandas).


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the best K trials of a run: configs, weights, manifest",
        description=(
            "Export the best K finished trials of a search run to "
            "DEST/<rank>-<trial_id>/{config.yaml,model.pt} plus DEST/manifest.json (sha256 and "
            "size of every file). The best: the trials the search confirmed with extra seeds "
            "first, then the others by objective. `caetune train --config "
            "DEST/1-<trial_id>/config.yaml` retrains a trial; from Python, "
            "caetune.search.load_exported(DEST) returns the best trained CAE."
        ),
    )
    parser.add_argument(
        "run", metavar="RUN", help="the run folder RUN_ROOT/NAME, local or s3://bucket/prefix/NAME"
    )
    top_k = parser.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="how many of the best trials (default 1)"
    )
    add_renamed(parser, "--top", top_k)
    parser.add_argument(
        "--to",
        required=True,
        metavar="DIR|s3://bucket/prefix",
        help="the export folder: new, empty, or an earlier export (replaced whole)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caetune._export import EXPORT_CONFIG, export_run
    from caetune._runs import check_top_k

    result = export_run(
        args.run, top=check_top_k(args.top_k, field=spelled(args, "--top-k")), to=args.to
    )
    for trial in result.trials:
        objective = "-" if trial.objective is None else f"{trial.objective:.6g}"
        print(
            f"{trial.rank}. {trial.trial_id}  val_mse {trial.val_mse:.6g}  "
            f"objective {objective}  -> {trial.folder}/"
        )
    best = f"{result.url}/{result.trials[0].folder}"
    print(
        f"exported {len(result.trials)} to {result.url} (manifest.json lists every file's sha256)"
    )
    if result.url.startswith("s3://"):
        print(
            f"load: caetune.search.load_exported({best!r}); "
            "retrain: download it, then caetune train --config ..."
        )
    else:
        print(f"retrain: caetune train --config {best}/{EXPORT_CONFIG}")
    return 0
