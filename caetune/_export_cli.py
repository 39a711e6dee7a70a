"""``caetune export``: the best K trials of a run as retrainable configs, weights and a manifest."""

from __future__ import annotations

import argparse

from caetune._run_cli import add_run_command, top_k_of

# Imported by `caetune export --help`: keep module-level imports light (no torch, ray, pandas).


def register(subparsers) -> None:
    parser = add_run_command(
        subparsers,
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
        run_help="the run folder RUN_ROOT/NAME, local or s3://bucket/prefix/NAME",
        top_k=1,
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="DIR|s3://bucket/prefix",
        help="the export folder: new, empty, or an earlier export (replaced whole)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caetune._export import EXPORT_CONFIG, export_run

    result = export_run(args.run, top=top_k_of(args), to=args.to)
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
