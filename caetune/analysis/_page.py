"""The page of ``caetune report``: one self-contained ``index.html``.

It links only to files inside the report folder (no CDN, no absolute
paths), so the folder can be moved, zipped or served as it is.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caetune._runs import EXPERIMENT_FILE, RUNNING, TrialCheckpoint

N_IMAGES = 256  # validation images run through each reported model
MARKER = "caetune-report"  # in index.html: lets a later report replace this folder safely
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
class ReportedTrial:
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


def page(*, run_name, results, trials, summary, study_note, objective, experiment, confirm) -> str:
    import yaml

    esc = html.escape
    counts = results["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    running = counts.get(RUNNING, 0)
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


def _trial_section(trial: ReportedTrial) -> list[str]:
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
