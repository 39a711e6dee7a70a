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

import html
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caetune._errors import InputError
from caetune._runs import (
    CONFIRM_CSV,
    EXPERIMENT_FILE,
    REPORT_DIR,
    RESULTS_CSV,
    STUDY_FILE,
    TRIALS_DIR,
    TrialCheckpoint,
    check_top_k,
    check_trial_id,
    fetch_run,
    first_line,
    publish,
    rank_trials,
    read_confirm,
    read_experiment,
    read_results,
    read_trial,
)

N_IMAGES = 256  # validation images run through each reported model
N_RECONSTRUCTIONS = 10
MARKER = "caetune-report"  # in index.html: lets a later report replace this folder safely
INDEX = "index.html"
# Columns of the results table on the page (the CSV holds them all).
PAGE_COLUMNS = (
    "trial_id",
    "status",
    "model",
    "n_neurons",
    "n_maps",
    "n_epochs",
    "lr",
    "batch_size",
    "activation",
    "val_mse",
    "best_val_mse",
    "utilisation",
    "objective",
    "epochs_run",
    "seconds",
    "error",
)
UTILISATION_TEXT = (
    "U = mean over layers 3 and 4 of (1 − dead fraction) × local entropy, "
    "the local entropy being that of the "
    "8-bit stacked activation map over 13×13 neighbourhoods, divided by 8 bits; U lies in [0, 1]."
)


@dataclass
class _Trial:
    """One reported trial, loaded and checked before anything is written."""

    trial_id: str
    rank: int
    row: dict[str, Any]
    checkpoint: TrialCheckpoint
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, relative path)
    metrics: dict[str, float] = field(default_factory=dict)
    fit: Any = None

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def history(self) -> list[dict]:
        return self.checkpoint.history


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

    top = check_top_k(top)
    storage = parse_storage(run, field="RUN")
    target = parse_storage(out, field="--out") if out is not None else storage.child(REPORT_DIR)
    with tempfile.TemporaryDirectory(prefix="caetune-report-") as tmp:
        work = Path(tmp)
        local_run = fetch_run(
            storage, work / "run", [RESULTS_CSV, EXPERIMENT_FILE, STUDY_FILE, CONFIRM_CSV]
        )
        results = read_results(local_run, name=str(storage))
        chosen = top_trials(results, top, confirm=read_confirm(local_run))
        for trial_id in chosen["trial_id"]:
            check_trial_id(trial_id, run_name=str(storage))
        if storage.is_s3:
            fetch_run(storage, local_run, [f"{TRIALS_DIR}/{t}/*" for t in chosen["trial_id"]])
        trials = [
            _Trial(
                str(row["trial_id"]),
                rank,
                row,
                read_trial(local_run, str(row["trial_id"]), run_name=str(storage)),
            )
            for rank, row in enumerate(chosen.to_dict("records"), 1)
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
        _build(stage, local_run, results, trials, models, run_name=str(storage))
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

    ranked = rank_trials(results, confirm=confirm)[:top]
    if not ranked:
        raise InputError("RUN", "the run has no completed trial yet (nothing to report)")
    return pd.DataFrame([r.row for r in ranked])


def _rebuild(trial: _Trial, datasets: dict[tuple, Any]):
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
    stage: Path, run: Path, results, trials: list[_Trial], models: list, *, run_name: str
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

    experiment = read_experiment(run)
    rows = read_confirm(run)
    confirm = pd.DataFrame(rows) if rows else None
    page = _page(
        run_name=run_name,
        results=results,
        trials=trials,
        summary=summary,
        study_note=study_note,
        objective=_objective_text(experiment, study),
        experiment=experiment,
        confirm=confirm,
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
        return None, f"study.db could not be opened: {first_line(err)}"
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


# -- the page -------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
  color: #222; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; } .wide { overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; } tr.top td { background: #eef6ff; }
code, pre { background: #f6f6f6; padding: .1em .3em; } pre { padding: .6em; overflow-x: auto; }
.formula { font-size: 1.1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; max-width: 100%; }
figure img { width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; } .note { color: #a60; }
nav a { margin-right: 1em; }
"""


def _page(*, run_name, results, trials, summary, study_note, objective, experiment, confirm) -> str:
    import yaml

    esc = html.escape
    counts = results["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    running = counts.get("running", 0)
    table = _results_table(results, {t.trial_id for t in trials})
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{MARKER}">\n'
        f"<title>caetune report: {esc(Path(run_name).name)}</title>\n<style>{_CSS}</style>\n"
        f"</head>\n<body>\n<h1>caetune report: {esc(Path(run_name).name)}</h1>",
        f"<p>Run <code>{esc(run_name)}</code>: {esc(status)}. "
        f"Generated {esc(time.strftime('%Y-%m-%d %H:%M'))}."
        + (
            f' <span class="note">The search was still running ({running} trials).</span>'
            if running
            else ""
        )
        + "</p>",
        "<nav>"
        + "".join(f'<a href="#{esc(t.trial_id)}">#{t.rank} {esc(t.trial_id)}</a>' for t in trials)
        + '<a href="results.csv">results.csv</a>'
        + (f'<a href="{EXPERIMENT_FILE}">{EXPERIMENT_FILE}</a>' if experiment else "")
        + "</nav>",
        "<h2>Objective</h2>",
        f'<p class="formula"><code>{esc(objective)}</code></p><p>{esc(UTILISATION_TEXT)} '
        "Lower objective is better; the reported trials are the best completed ones: those the "
        "search confirmed with extra seeds first (by their mean), then the others by objective "
        "(by val_mse when there is no scalar objective).</p>",
        "<h2>Results</h2>",
        f"<p>{len(results)} trials; the {len(trials)} reported below are highlighted.</p>",
        f'<div class="wide">{table}</div>',
    ]
    if confirm is not None and len(confirm):
        parts += [
            "<h2>Confirmation runs</h2>",
            "<p>The best configurations re-trained with extra seeds.</p>",
            confirm.to_html(index=False, float_format=lambda v: f"{v:.5g}", na_rep="", border=0),
        ]
    parts += ["<h2>Across trials</h2>"]
    if study_note:
        parts.append(f'<p class="note">{esc(study_note)}</p>')
    parts.append(_figure_block(summary))
    for trial in trials:
        parts += _trial_section(trial)
    if experiment:
        parts += [
            "<h2>Search settings</h2>",
            f"<pre>{esc(yaml.safe_dump(experiment, sort_keys=False, allow_unicode=True))}</pre>",
        ]
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _results_table(results, reported: set[str]) -> str:
    """The main columns of ``results`` as HTML; reported trials link to their section, in bold."""
    esc = html.escape
    frame = results[[c for c in PAGE_COLUMNS if c in results]].copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: "" if v is None or v != v else esc(str(v)))
    frame["trial_id"] = [
        f'<a href="#{tid}"><b>{tid}</b></a>' if tid in reported else tid
        for tid in frame["trial_id"]
    ]
    return frame.to_html(
        index=False, escape=False, float_format=lambda v: f"{v:.5g}", na_rep="", border=0
    )


def _figure_block(figures: list[tuple[str, str]]) -> str:
    esc = html.escape
    items = "".join(
        f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(caption)}"></a>'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, src in figures
    )
    return f'<div class="figures">{items}</div>'


def _trial_section(trial: _Trial) -> list[str]:
    esc = html.escape
    config = trial.config
    fit = trial.fit
    fit_text = (
        f"Fit k·exp(−a·Ne) + c: k = {fit.k:.4g}, a = {fit.a:.4g}, c = {fit.c:.4g}, "
        f"levels off at Ne ≈ {fit.level_epoch}."
        if fit is not None and fit.ok
        else "No exponential fit (fewer than 3 epochs or no convergence)."
    )
    rows = "".join(
        f"<tr><th>{layer}</th>"
        + "".join(
            f"<td>{trial.metrics[f'{layer}_{key}']:.4g}</td>"
            for key in ("mean", "std", "dead_fraction", "entropy", "local_entropy", "utilisation")
        )
        + "</tr>"
        for layer in ("layer3", "layer4")
    )
    util = (
        "<table><tr><th></th><th>mean</th><th>std</th><th>dead fraction</th><th>entropy</th>"
        f"<th>local entropy</th><th>utilisation</th></tr>{rows}</table>"
        f"<p>U = {trial.metrics['utilisation']:.4g} (on a sample of {N_IMAGES} validation "
        "images, recomputed here).</p>"
    )
    row = trial.row
    score = ", ".join(
        f"{k} {row[k]:.5g}"
        for k in ("objective", "val_mse", "utilisation")
        if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])
    )
    return [
        f'<h2 id="{esc(trial.trial_id)}">#{trial.rank}: trial {esc(trial.trial_id)}</h2>',
        f"<p>{esc(config.model)}, Nn = {config.n_neurons}, Nm = {config.n_maps}, "
        f"Ne = {config.n_epochs}, "
        f"lr = {config.lr:g}, batch size = {config.batch_size}, seed = {config.seed}, dataset "
        f"<code>{esc(config.dataset)}</code>. From results.csv: {esc(score)}. "
        f'Config: <a href="configs/{esc(trial.trial_id)}.yaml">'
        f"configs/{esc(trial.trial_id)}.yaml</a>.</p>",
        f"<p>{esc(fit_text)}</p>",
        util,
        _figure_block(trial.figures),
    ]
