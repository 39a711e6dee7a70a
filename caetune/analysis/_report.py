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
import pickle
import re
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
    TRIAL_METRICS,
    TRIAL_MODEL,
    TRIALS_DIR,
)

N_IMAGES = 256  # validation images run through each reported model
N_RECONSTRUCTIONS = 10
MARKER = "caetune-report"  # in index.html: lets a later report replace this folder safely
# A trial id names a folder to read and files to write: one safe path component, as caetune search makes them.
_TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
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
    "U = mean over layers 3 and 4 of (1 − dead fraction) × local entropy, the local entropy being that of the "
    "8-bit stacked activation map over 13×13 neighbourhoods, divided by 8 bits; U lies in [0, 1]."
)


@dataclass
class _Trial:
    """One reported trial, loaded and checked before anything is written."""

    trial_id: str
    rank: int
    row: dict[str, Any]
    folder: Path
    config: Any  # TrainConfig
    model_state: dict
    history: list[dict]
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, relative path)
    metrics: dict[str, float] = field(default_factory=dict)
    fit: Any = None


def write_report(
    run: str | os.PathLike, *, top: int = 3, out: str | os.PathLike | None = None
) -> Path | str:
    """Writes the report of a search run: figures and ``index.html``.

    Args:
        run: The run folder ``STORAGE/NAME`` (local) or ``s3://bucket/prefix/NAME``.
        top: How many of the best completed trials get their models rebuilt
            and drawn (by ``objective``, else ``val_mse``; fewer when fewer
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

    top = _check_top(top)
    storage = parse_storage(run, field="RUN")
    target = parse_storage(out, field="--out") if out is not None else storage.child(REPORT_DIR)
    with tempfile.TemporaryDirectory(prefix="caetune-report-") as work:
        work = Path(work)
        local_run = storage.local_path or _download(
            storage, work / "run", [RESULTS_CSV, EXPERIMENT_FILE, STUDY_FILE, CONFIRM_CSV]
        )
        results = read_results(local_run, name=str(storage))
        chosen = top_trials(results, top)
        _check_trial_ids(chosen["trial_id"], run_name=str(storage))
        if storage.is_s3:
            _download(storage, local_run, [f"{TRIALS_DIR}/{t}/*" for t in chosen["trial_id"]])
        trials = [
            _load_trial(local_run, row, rank)
            for rank, row in enumerate(chosen.to_dict("records"), 1)
        ]
        if target.is_s3:
            target.check_reachable()
        else:
            _check_report_target(target.local_path)
        datasets: dict[
            tuple, Any
        ] = {}  # trials of one search share their data: load each split once
        models = [
            _rebuild(trial, datasets) for trial in trials
        ]  # bad data or shapes fail here, before writing

        stage = work / "report"
        _build(stage, local_run, results, trials, models, run_name=str(storage))
        if target.is_s3:
            _upload(stage, target)
            return target.url
        _move_into_place(stage, target.local_path)
        return target.local_path


# -- reading the run -------------------------------------------------------------------


def read_results(run: Path, *, name: str | None = None):
    """The run's ``results.csv`` as a DataFrame, ``trial_id`` as text.

    Raises:
        InputError: ``run`` is not a run folder or the table is unreadable.
    """
    import pandas as pd

    label = name or str(run)
    path = Path(run) / RESULTS_CSV
    if not Path(run).is_dir():
        raise InputError("RUN", f"expected a search run folder, but {label} is not a folder")
    if not path.is_file():
        raise InputError("RUN", f"{label} is not a search run (no {RESULTS_CSV})")
    try:
        results = pd.read_csv(path, dtype={"trial_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError("RUN", f"cannot read {path}: {_first_line(err)}") from None
    missing = [c for c in ("trial_id", "status") if c not in results]
    if missing or not ({"objective", "val_mse"} & set(results.columns)):
        need = ", ".join(missing or ["objective or val_mse"])
        raise InputError("RUN", f"{path} lacks the column(s) {need}")
    return results


def top_trials(results, top: int):
    """The ``top`` best completed trials, best first (lowest ``objective``, else ``val_mse``).

    Raises:
        InputError: No trial has completed yet.
    """
    import pandas as pd

    done = results[results["status"] == "complete"].copy()
    score = pd.Series(math.nan, index=done.index, dtype=float)
    for column in ("objective", "val_mse"):  # a pareto search has no scalar objective: fall back
        if column in done:
            score = score.fillna(pd.to_numeric(done[column], errors="coerce"))
    done["_score"] = score
    done = done[done["_score"].map(math.isfinite)]
    if done.empty:
        raise InputError("RUN", "the run has no completed trial yet (nothing to report)")
    return (
        done.sort_values(["_score", "trial_id"])
        .head(top)
        .drop(columns="_score")
        .reset_index(drop=True)
    )


def _check_trial_ids(trial_ids, *, run_name: str) -> None:
    """A hostile ``results.csv`` (``../../x``, ``/abs``) must not steer reads or writes out of their folders."""
    for trial_id in trial_ids:
        if not _TRIAL_ID.fullmatch(str(trial_id)):
            raise InputError(
                "RUN",
                f"{run_name}/{RESULTS_CSV} names a trial {str(trial_id)!r} that is not a folder name",
            )


def _load_trial(run: Path, row: dict, rank: int) -> _Trial:
    from caetune.models import TrainConfig, read_checkpoint

    trial_id = str(row["trial_id"])
    folder = run / TRIALS_DIR / trial_id
    path = folder / TRIAL_MODEL
    if not path.is_file():
        raise InputError(str(path), "checkpoint not found")
    try:
        # A checkpoint from someone else's run (a shared bucket) must not run code when read.
        state = read_checkpoint(path)
    except pickle.UnpicklingError:
        raise InputError(
            str(path), "refused: the checkpoint holds Python objects beyond tensors and plain data"
        ) from None
    except Exception as err:  # torch.load raises many kinds (zip, EOF, OS) for one cause
        raise InputError(
            str(path), f"unreadable checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(state, dict) or not {"config", "model"} <= set(state):
        raise InputError(
            str(path), "not a caetune checkpoint (expected a Trainer state with config and model)"
        )
    try:
        config = TrainConfig.from_dict(dict(state["config"]), source=f"{path}: config")
    except (TypeError, ValueError) as err:
        raise InputError(str(path), f"bad config in checkpoint: {_first_line(err)}") from None
    history = list(state.get("history") or _metrics_history(folder))
    return _Trial(trial_id, rank, row, folder, config, state["model"], history)


def _metrics_history(folder: Path) -> list[dict]:
    import json

    try:
        return json.loads((folder / TRIAL_METRICS).read_text(encoding="utf-8")).get("history") or []
    except (OSError, ValueError, AttributeError):
        return []


def _rebuild(trial: _Trial, datasets: dict[tuple, Any]):
    """The trial's CAE with its trained weights, and the validation images it was judged on."""
    from caetune.models import DATA_FIELDS, build_model, load_data

    key = tuple(getattr(trial.config, f) for f in DATA_FIELDS)
    if key not in datasets:
        datasets[key] = load_data(trial.config)
    data = datasets[key]
    model = build_model(trial.config, in_channels=data.channels, image_size=data.image_size)
    try:
        model.load_state_dict(trial.model_state)
    except RuntimeError as err:
        path = trial.folder / TRIAL_MODEL
        raise InputError(
            str(path), f"checkpoint does not fit its config: {_first_line(err)}"
        ) from None
    return model.eval(), data.val  # val: uint8 [M, C, H, W]


# -- checks ---------------------------------------------------------------------------


def _check_top(top: int) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError("--top", f"expected an integer K >= 1, got {top!r}")
    return top


def _check_report_target(path: Path) -> None:
    """``path`` must be new, empty, or an earlier report, in a writable place."""
    from caetune.models._cli import check_writable_dir

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
    from caetune.analysis import (
        collect_activations,
        fit_mse_curve,
        plot_histogram,
        plot_local_entropy,
        plot_mse_curve,
        plot_reconstructions,
        plot_stacked_map,
        plot_trials_summary,
        sample_indices,
        save_figure,
        utilisation,
    )

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

    for trial, (model, val_images) in zip(trials, models):
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

    experiment = _read_experiment(run)
    confirm = _read_confirm(run)
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
    (stage / "index.html").write_text(page, encoding="utf-8")


def _study_figures(study, save) -> list[tuple[str, str]]:
    from caetune.analysis import plot_study

    kinds = ["history", "importances"] + (["pareto"] if len(study.directions) > 1 else [])
    names = {
        "history": "Optimisation history",
        "importances": "Parameter importances",
        "pareto": "Pareto front",
    }
    return [(names[k], save(plot_study(study, k), f"study-{k}")) for k in kinds]


def _load_study(run: Path, *, work: Path, name: str):
    """The run's Optuna study from a snapshot of ``study.db`` (never the live file), or a note why not."""
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
        return None, f"study.db could not be opened: {_first_line(err)}"
    if not names:
        return None, "study.db holds no study."
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name if name in names else names[0], storage=url), None


def _read_experiment(run: Path) -> dict:
    from caetune.models import read_yaml_mapping

    path = run / EXPERIMENT_FILE
    if not path.is_file():
        return {}
    try:
        return read_yaml_mapping(path, field=EXPERIMENT_FILE)
    except InputError:
        return {}


def _read_confirm(run: Path):
    import pandas as pd

    path = run / CONFIRM_CSV
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (OSError, ValueError, pd.errors.ParserError):
        return None


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
    formula = _find(experiment, ("formula",))
    if formula:
        return str(formula)
    kind = _find(experiment, ("kind", "objective"))
    weight = _find(experiment, ("utilisation_weight", "weight"))
    if kind == "pareto" or (study is not None and len(study.directions) > 1):
        return "two objectives: minimise val_mse, maximise U (Pareto front)"
    if kind == "mse" or weight in (0, 0.0):
        return "objective = val_mse"
    if kind == "combined" and weight is not None:
        return f"objective = val_mse * (1 + {float(weight):g} * (1 - U))"
    return (
        "objective = val_mse * (1 + utilisation_weight * (1 - U)) (weight not recorded in the run)"
    )


def _move_into_place(stage: Path, target: Path) -> None:
    """Replaces ``target`` by ``stage`` with renames only (an old report is swapped out whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    moved = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    os.chmod(moved, 0o755)  # mkdtemp makes it private; a report is meant to be read by others
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    try:
        shutil.copytree(stage, moved, dirs_exist_ok=True)  # stage may be on another filesystem
        if target.exists():
            os.replace(target, old)
        os.replace(moved, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the earlier report back
        shutil.rmtree(moved, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _download(storage, local: Path, patterns: list[str]) -> Path:
    from caetune._storage import download_dir

    storage.check_reachable()
    try:
        download_dir(storage, "", local, include=patterns)
    except OSError as err:
        raise InputError("RUN", f"cannot read {storage}: {_first_line(err)}") from None
    local.mkdir(parents=True, exist_ok=True)
    return local


def _upload(stage: Path, target) -> None:
    from caetune._storage import upload_file

    files = sorted(p for p in stage.rglob("*") if p.is_file())
    # index.html last: a reader never finds a page whose figures are still on their way.
    for path in sorted(files, key=lambda p: p.name == "index.html"):
        upload_file(target, path, path.relative_to(stage).as_posix())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- the page -------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; } .wide { overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; } tr.top td { background: #eef6ff; }
code, pre { background: #f6f6f6; padding: .1em .3em; } pre { padding: .6em; overflow-x: auto; }
.formula { font-size: 1.1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; max-width: 100%; } figure img { width: 100%; border: 1px solid #eee; }
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
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<meta name="generator" '
        f'content="{MARKER}">\n<title>caetune report: {esc(Path(run_name).name)}</title>\n<style>{_CSS}</style>\n'
        f"</head>\n<body>\n<h1>caetune report: {esc(Path(run_name).name)}</h1>",
        f"<p>Run <code>{esc(run_name)}</code>: {esc(status)}. Generated {esc(time.strftime('%Y-%m-%d %H:%M'))}."
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
        "Lower objective is better; the reported trials are the best completed ones by objective "
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
        f"<p>{esc(config.model)}, Nn = {config.n_neurons}, Nm = {config.n_maps}, Ne = {config.n_epochs}, "
        f"lr = {config.lr:g}, batch size = {config.batch_size}, seed = {config.seed}, dataset "
        f"<code>{esc(config.dataset)}</code>. From results.csv: {esc(score)}. "
        f'Config: <a href="configs/{esc(trial.trial_id)}.yaml">configs/{esc(trial.trial_id)}.yaml</a>.</p>',
        f"<p>{esc(fit_text)}</p>",
        util,
        _figure_block(trial.figures),
    ]
