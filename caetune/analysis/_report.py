"""``caetune report``: the figures and one self-contained HTML page of a search.

Reads a run laid out as :mod:`caetune._runs` describes, from a local
folder or ``s3://bucket/prefix/NAME``, finished or still running, and writes::

    OUT/
      index.html            the page: results, the objective, the figures per trial
      results.csv           the run's full results table (copied)
      experiment.yaml       the search settings (copied, when the run has them)
      configs/<trial>.yaml  each reported trial's TrainConfig
      figures/*.png         summary, Optuna views and per-trial figures

The page links only to files inside ``OUT`` (no CDN, no absolute paths), so
the folder can be moved, zipped or served as it is. Every check of the input
happens before the first byte is written, and the report is built in a
temporary folder and moved into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from caetune import _runs
from caetune._errors import InputError
from caetune._publish import publish
from caetune._runs import EXPERIMENT_FILE, REPORT_DIR, RESULTS_CSV, STUDY_FILE
from caetune.analysis._page import MARKER, N_IMAGES, ReportedTrial
from caetune.analysis._page import page as render_page

N_RECONSTRUCTIONS = 10
INDEX = "index.html"


def write_report(
    run: str | os.PathLike, *, top: int = 3, out: str | os.PathLike | None = None
) -> Path | str:
    """Writes the report of a search run: figures and ``index.html``.

    Args:
        run: The run folder ``RUN_ROOT/NAME`` (local) or ``s3://bucket/prefix/NAME``.
        top: How many of the best completed trials get their models rebuilt
            and drawn (the run's ranking, :func:`caetune._runs.rank_trials`:
            confirmed trials first, then by ``objective``; fewer when fewer
            are complete).
        out: Where the report goes; default ``RUN/report``. An ``s3://`` URL
            uploads it there.

    Returns:
        The report folder (a local :class:`~pathlib.Path`, or the ``s3://``
        URL as a string).

    Raises:
        InputError: ``run`` is not a run (no ``results.csv``) or has no
            completed trial, ``top < 1``, a chosen trial's checkpoint cannot
            be read or does not fit its config, or ``out`` is not writable;
            always before anything is written.
    """
    from caetune._storage import parse_storage

    top = _runs.check_top_k(top)
    storage = parse_storage(run, field="RUN")
    target = parse_storage(out, field="--out") if out is not None else storage.child(REPORT_DIR)
    with tempfile.TemporaryDirectory(prefix="caetune-report-") as tmp:
        work = Path(tmp)
        local_run, results, confirm = _runs.read_run(storage, work / "run", extra=(STUDY_FILE,))
        chosen = top_trials(results, top, confirm=confirm).to_dict("records")
        checkpoints = _runs.load_trials(local_run, storage, [row["trial_id"] for row in chosen])
        trials = [
            ReportedTrial(checkpoint.trial_id, rank, row, checkpoint)
            for rank, (row, checkpoint) in enumerate(zip(chosen, checkpoints, strict=True), 1)
        ]
        if target.local_path is None:
            target.check_reachable()
        else:
            _check_report_target(target.local_path)
        # Trials of one search share their data: load each split once.
        datasets: dict[tuple, Any] = {}
        # Bad data or shapes fail here, before writing.
        models = [_rebuild(trial, datasets) for trial in trials]

        stage = work / "report"
        _build(stage, local_run, results, confirm, trials, models, run_name=str(storage))
        publish(stage, target, last=INDEX, field="--out")
        return target.url if target.local_path is None else target.local_path


# -- reading the run -------------------------------------------------------------------


def top_trials(results, top: int, *, confirm=()):
    """The ``top`` best completed trials, best first, as the run ranks them.

    Args:
        results: ``results.csv`` (:func:`caetune._runs.read_results`).
        top: How many.
        confirm: ``confirm.csv``'s rows (the search's confirmed trials come first).

    Raises:
        InputError: No trial has completed yet.
    """
    import pandas as pd

    ranked = _runs.rank_trials(results, confirm=confirm)[:top]
    if not ranked:
        raise InputError("RUN", "the run has no completed trial yet (nothing to report)")
    return pd.DataFrame([r.row for r in ranked])


def _rebuild(trial: ReportedTrial, datasets: dict[tuple, Any]):
    """The trial's CAE with its trained weights, and the validation images it was judged on."""
    from caetune.models import DATA_FIELDS, load_data

    key = tuple(getattr(trial.config, f) for f in DATA_FIELDS)
    if key not in datasets:
        datasets[key] = load_data(trial.config)
    data = datasets[key]
    model = trial.checkpoint.model(in_channels=data.channels, image_size=data.image_size)
    return model, data.val  # val: uint8 [M, C, H, W]


# -- checks ---------------------------------------------------------------------------


def _check_report_target(path: Path) -> None:
    """``path`` must be new, empty, or an earlier report, in a writable place."""
    from caetune._storage import check_writable_dir

    check_writable_dir(path, field="--out")
    if path.is_dir() and any(path.iterdir()):
        index = path / "index.html"
        if not (
            index.is_file() and MARKER in index.read_text(encoding="utf-8", errors="replace")[:2000]
        ):
            raise InputError(
                "--out",
                f"{path} holds other files; give a new or empty folder, or an earlier report",
            )


# -- writing ---------------------------------------------------------------------------


def _build(
    stage: Path,
    run: Path,
    results,
    confirm: list[dict],
    trials: list[ReportedTrial],
    models: list,
    *,
    run_name: str,
) -> None:
    """Every file of the report, into ``stage``."""
    import pandas as pd

    # From the modules, not the package: caetune.analysis imports this module.
    from caetune.analysis._activations import collect_activations, sample_indices
    from caetune.analysis._curves import fit_mse_curve
    from caetune.analysis._figures import (
        plot_histogram,
        plot_local_entropy,
        plot_mse_curve,
        plot_reconstructions,
        plot_stacked_map,
        plot_trials_summary,
        save_figure,
    )
    from caetune.analysis._metrics import utilisation

    figures = stage / "figures"
    (stage / "configs").mkdir(parents=True)
    figures.mkdir()
    shutil.copyfile(run / RESULTS_CSV, stage / RESULTS_CSV)
    if (run / EXPERIMENT_FILE).is_file():
        shutil.copyfile(run / EXPERIMENT_FILE, stage / EXPERIMENT_FILE)

    def save(fig, stem: str) -> str:
        save_figure(fig, figures / stem)
        return f"figures/{stem}.png"

    summary = [("Trials summary", save(plot_trials_summary(results), "summary"))]
    study, study_note = _load_study(run, work=stage.parent, name=Path(run_name).name)
    if study is not None:
        summary += _study_figures(study, save)

    for trial, (model, val_images) in zip(trials, models, strict=True):
        stem = f"{trial.trial_id}-"
        (stage / "configs" / f"{trial.trial_id}.yaml").write_text(
            trial.config.to_yaml(), encoding="utf-8"
        )
        # A seeded sample spread over the set: the split keeps the source's order (one class
        # first on a class-sorted folder), and every figure below shows the sample's images.
        sample = val_images[sample_indices(len(val_images), N_IMAGES)]
        acts = collect_activations(model, sample, n_images=N_IMAGES)  # layer3, layer4
        trial.metrics = utilisation(acts)
        if trial.history:
            epochs = [h["epoch"] for h in trial.history]
            trial.fit = fit_mse_curve(epochs, [h["val_mse"] for h in trial.history])
            trial.figures.append(
                (
                    "MSE over epochs",
                    save(
                        plot_mse_curve(
                            trial.history, fit=trial.fit, title=f"{trial.trial_id}: MSE vs epochs"
                        ),
                        stem + "mse",
                    ),
                )
            )
        trial.figures.append(
            (
                "Reconstructions",
                save(
                    plot_reconstructions(acts.images, acts.reconstructions, n=N_RECONSTRUCTIONS),
                    stem + "reconstructions",
                ),
            )
        )
        for layer in ("layer3", "layer4"):
            trial.figures += [
                (
                    f"{layer}: stacked map",
                    save(plot_stacked_map(acts, layer), f"{stem}{layer}-map"),
                ),
                (
                    f"{layer}: histogram",
                    save(plot_histogram(acts, layer), f"{stem}{layer}-histogram"),
                ),
                (
                    f"{layer}: local entropy",
                    save(plot_local_entropy(acts, layer), f"{stem}{layer}-entropy"),
                ),
            ]

    experiment = _runs.read_experiment(run)
    page = render_page(
        run_name=run_name,
        results=results,
        trials=trials,
        summary=summary,
        study_note=study_note,
        objective=_objective_text(experiment, study),
        experiment=experiment,
        confirm=pd.DataFrame(confirm) if confirm else None,
    )
    (stage / INDEX).write_text(page, encoding="utf-8")


def _study_figures(study, save) -> list[tuple[str, str]]:
    from caetune.analysis._figures import plot_study

    kinds = ["history", "importances"] + (["pareto"] if len(study.directions) > 1 else [])
    names = {
        "history": "Optimisation history",
        "importances": "Parameter importances",
        "pareto": "Pareto front",
    }
    return [(names[k], save(plot_study(study, k), f"study-{k}")) for k in kinds]


def _load_study(run: Path, *, work: Path, name: str):
    """The run's Optuna study from a snapshot of ``study.db`` (never the live file), or why not."""
    import optuna

    from caetune._study import sqlite_snapshot

    path = run / STUDY_FILE
    if not path.is_file():
        return None, "No study.db in the run (its Optuna study lives in an external database)."
    copy = work / "study-snapshot.db"
    try:
        copy.write_bytes(sqlite_snapshot(path))
        url = f"sqlite:///{copy}"
        names = optuna.get_all_study_names(url)
    except Exception as err:  # a corrupt or foreign file: report it on the page, not as a crash
        return None, f"study.db could not be opened: {_runs.first_line(err)}"
    if not names:
        return None, "study.db holds no study."
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name if name in names else names[0], storage=url), None


def _find(mapping: Any, keys: tuple[str, ...]) -> Any:
    """The first value under any of ``keys``, searching nested mappings."""
    if not isinstance(mapping, dict):
        return None
    for key in keys:
        if key in mapping and not isinstance(mapping[key], dict):
            return mapping[key]
    for value in mapping.values():
        found = _find(value, keys)
        if found is not None:
            return found
    return None


def _objective_text(experiment: dict, study) -> str:
    """The objective's formula, as the search recorded it (or as its study implies)."""
    from caetune.analysis._metrics import objective_formula

    formula = _find(experiment, ("formula",))
    if formula:
        return str(formula)
    kind = _find(experiment, ("kind", "objective"))
    weight = _find(experiment, ("utilisation_weight", "weight"))
    if kind == "pareto" or (study is not None and len(study.directions) > 1):
        return objective_formula("pareto")
    if kind == "mse" or weight in (0, 0.0):
        return objective_formula("mse")
    if kind == "combined" and weight is not None:
        return objective_formula("combined", float(weight))
    return f"{objective_formula('combined')} (weight not recorded in the run)"
