"""The end of a search: the analysis report and the summary printed on stdout."""

from __future__ import annotations

import math
from typing import Any

from caetune._errors import InputError
from caetune._runs import COMPLETE, FAILED, PRUNED, RESULTS_CSV, STUDY_FILE, rank_trials
from caetune.search._settings import display_url


def write_run_report(files, top_k: int, stream) -> str | None:
    try:
        from caetune.analysis import write_report
    except ImportError:
        print("  report: skipped (caetune.analysis.write_report is not available)", file=stream)
        return None
    try:
        path = write_report(files.url, top=top_k)
    except InputError as err:  # e.g. no trial completed: the search itself still stands
        print(f"  report: skipped ({err})", file=stream)
        return None
    return str(path)


def print_summary(out, files, table, ranking, space, values, study_url, report) -> None:
    counts = table.counts()
    params = list(space.params)
    print("", file=out)
    if ranking is not None and len(ranking):
        n = int(ranking["n_seeds"].max())
        print(f"Top configs, ranked by the mean over up to {n} seeds (mean ± sd):", file=out)
        for row in ranking.to_dict(orient="records"):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {row['rank']}. {row['trial_id']}  {described}\n"
                f"     objective {_pm(row['objective_mean'], row['objective_sd'])}  "
                f"val_mse {_pm(row['val_mse_mean'], row['val_mse_sd'])}  "
                f"U {_pm(row['utilisation_mean'], row['utilisation_sd'])}  seeds {row['seeds']}",
                file=out,
            )
    else:
        done = [r.row for r in rank_trials(table.frame())]
        print("Top configs (one seed each):", file=out)
        for i, row in enumerate(done[: values["top_k"]], 1):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {i}. {row['trial_id']}  {described}  objective {_fmt(row['objective'])}",
                file=out,
            )
    frame = table.frame()
    if "pareto" in frame.columns:
        front = frame[frame["pareto"].fillna(False).astype(bool)].sort_values("val_mse")
        print("\nPareto front (min val_mse, max U), one seed each:", file=out)
        for row in front.to_dict(orient="records"):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {row['trial_id']}  val_mse {_fmt(row['val_mse'])}  "
                f"U {_fmt(row['utilisation'])}  {described}",
                file=out,
            )
    print(
        f"\nTrials: {counts[COMPLETE]} complete, {counts[PRUNED]} pruned, "
        f"{counts[FAILED]} failed. Written:",
        file=out,
    )
    print(f"  {files.url}/{RESULTS_CSV} (and .parquet), trials/<id>/", file=out)
    if ranking is not None:
        print(f"  {files.url}/confirm.csv", file=out)
    print(
        f"  study: {display_url(study_url)}  (optuna-dashboard {display_url(study_url)})",
        file=out,
    )
    if files.storage.is_s3 and study_url.startswith("sqlite:"):
        print(f"         a copy at {files.url}/{STUDY_FILE}", file=out)
    if report:
        print(f"  report: {report}", file=out)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pm(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.4g} ± {sd:.2g}"
