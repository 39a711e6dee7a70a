"""Seed confirmation: re-train the best configs with other seeds, rank them by the mean.

The seed-to-seed spread of val_mse can be as large as the effect of a
searched parameter (the README has the measurements), so one lucky seed can
win a search. After the search, the top ``top_k`` complete trials (the run's
ranking, :func:`caetune._runs.rank_trials`; for ``pareto`` the Pareto front,
by val_mse) are trained again, each for its full Ne with no
early stopping, with seeds ``seed+1 .. seed+K`` (``--confirm-seeds K``). Each
config's search run counts as one more seed. The configs are ranked by their
mean objective; the spread is the sample standard deviation over the seeds.

Runs are Ray tasks sharing the dataset already in the object store. One
config's missing seeds are one task: its K seeds have the same shape, so
they train fused, as one batched model (:class:`caetune.models.FusedTrainer`;
each seed's numbers equal a separate run's to float rounding); if that fails
(one seed diverged), each seed trains alone, so each gets its own row. The
runs resolve ``precision: auto`` for the confirmation use (float32 unless
bf16 is shown safe there). Each finished run is a row of
``confirm_runs.csv`` at once, so a resumed search only trains the runs that
are missing; ``confirm.csv`` holds the ranking.
"""

from __future__ import annotations

import io
import math
import sys
import time
from typing import Any, TextIO

from caetune._runs import COMPLETE, CONFIRM_CSV, FAILED, best_first, rank_trials

CONFIRM_RUNS_CSV = "confirm_runs.csv"


def confirm_seeds(trial_id: str, trains: list, factory, data: dict[str, Any]) -> list[dict]:
    """Trains one config's seeds (TrainConfigs alike but for the seed) fused; a Ray task.

    Returns one row per seed, in order; a fused run that fails trains each
    seed alone (:func:`confirm_run`), so a failure is the row of its own seed.
    """
    import torch

    from caetune.models import FusedTrainer
    from caetune.models._precision import CONFIRMATION
    from caetune.search._trainable import epoch_metrics, image_data

    torch.set_num_threads(int(factory.threads))
    start, cpu = time.perf_counter(), time.process_time()
    try:
        fused = FusedTrainer(trains, image_data(data), use=CONFIRMATION)
        fused.fit()
        rows = [
            {
                "trial_id": trial_id,
                "seed": member.config.seed,
                "status": COMPLETE,
                "error": None,
                **epoch_metrics(member, factory.objective, util_images=int(factory.util_images)),
            }
            for member in fused.members()
        ]
    except Exception:  # noqa: BLE001 -- one seed's failure must not take the others' rows
        return [confirm_run(trial_id, train, factory, data) for train in trains]
    for row in rows:  # the fused run's clocks, shared out evenly
        row["seconds"] = (time.perf_counter() - start) / len(rows)
        row["cpu_seconds"] = (time.process_time() - cpu) / len(rows)
        row["fused"] = len(rows)
    return rows


def confirm_run(trial_id: str, train, factory, data: dict[str, Any]) -> dict[str, Any]:
    """Trains one config (a TrainConfig) to its full Ne alone. A failure is a row."""
    import torch

    from caetune.models import Trainer
    from caetune.models._precision import CONFIRMATION
    from caetune.search._trainable import epoch_metrics, failure_reason, image_data

    torch.set_num_threads(int(factory.threads))
    start, cpu = time.perf_counter(), time.process_time()
    row: dict[str, Any] = {"trial_id": trial_id, "seed": train.seed}
    try:
        trainer = Trainer(train, image_data(data), use=CONFIRMATION)
        trainer.fit()
        metrics = epoch_metrics(trainer, factory.objective, util_images=int(factory.util_images))
        row.update(status=COMPLETE, error=None, **metrics)
    except Exception as err:  # noqa: BLE001 -- a failed seed is part of the evidence
        row.update(status=FAILED, error=failure_reason(err))
    row["seconds"] = time.perf_counter() - start
    row["cpu_seconds"] = time.process_time() - cpu
    return row


def candidates(frame, *, top_k: int, pareto: bool) -> list[str]:
    """Trial ids of the configs to confirm, best first (the run's one ranking).

    For ``pareto`` only the Pareto front, by val_mse.
    """
    ranked = rank_trials(frame, key="val_mse" if pareto else "objective")
    if pareto and "pareto" in frame.columns:
        ranked = [r for r in ranked if r.row.get("pareto")]
    return [r.trial_id for r in ranked[:top_k]]


def run_confirm(
    *,
    files,
    table,
    factory,
    data_ref,
    seeds: list[int],
    top_k: int,
    pareto: bool,
    resources: dict[str, float],
    stream: TextIO | None = None,
):
    """Runs the missing confirmation runs and writes ``confirm_runs.csv`` and ``confirm.csv``.

    Args:
        files: The run folder.
        table: The search's results table.
        factory: The search's TrialFactory (each run's TrainConfig, with its seed).
        data_ref: The dataset's object ref.
        seeds: The extra seeds.
        top_k: How many configs to confirm.
        pareto: Confirm the Pareto front (by val_mse) instead of the best objectives.
        resources: Ray resources of one run (``num_cpus``, ``num_gpus``).
        stream: Where progress lines go.

    Returns:
        The ranking (a DataFrame), or ``None`` when no trial completed.
    """
    import pandas as pd
    import ray

    stream = stream or sys.stderr
    frame = table.frame()
    chosen = candidates(frame, top_k=top_k, pareto=pareto)
    if not chosen:
        print("  confirm: no complete trial to confirm", file=stream)
        return None
    runs = _load_runs(files)
    done = {(r["trial_id"], int(r["seed"])) for r in runs}
    rows = {r["trial_id"]: r for r in frame.to_dict(orient="records")}
    task = ray.remote(confirm_seeds).options(**resources)
    pending, n_runs = [], 0
    for trial_id in chosen:
        params = {k: rows[trial_id][k] for k in factory.space.params}
        trains = [factory.train(params, seed=s) for s in seeds if (trial_id, s) not in done]
        if trains:  # one task per config: its seeds train fused
            pending.append(task.remote(trial_id, trains, factory, data_ref))
            n_runs += len(trains)
    if pending:
        print(
            f"  confirm: {n_runs} runs ({len(chosen)} configs x {len(seeds)} seeds, "
            "each config's seeds fused)",
            file=stream,
            flush=True,
        )
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for row in ray.get(ready[0]):
            runs.append(row)
            value = row.get("objective")
            shown = f"objective {value:.4g}" if row["status"] == COMPLETE else row["error"]
            print(
                f"  confirm {row['trial_id']} seed {row['seed']}: {shown}", file=stream, flush=True
            )
        _write_csv(files, CONFIRM_RUNS_CSV, pd.DataFrame(runs))

    ranking = rank(frame, runs, chosen, params=list(factory.space.params))
    _write_csv(files, CONFIRM_CSV, ranking)
    return ranking


def rank(frame, runs: list[dict], chosen: list[str], *, params: list[str]):
    """One row per config, by mean objective: its search run and confirmation runs, mean, sd."""
    import pandas as pd

    search_rows = {r["trial_id"]: r for r in frame.to_dict(orient="records")}
    out = []
    for trial_id in chosen:
        first = search_rows[trial_id]
        samples = [first] + [
            r for r in runs if r["trial_id"] == trial_id and r["status"] == COMPLETE
        ]
        row = {"trial_id": trial_id, **{p: first.get(p) for p in params}}
        row["seeds"] = " ".join(str(int(s["seed"])) for s in samples)
        row["n_seeds"] = len(samples)
        row["failed_seeds"] = sum(
            1 for r in runs if r["trial_id"] == trial_id and r["status"] != COMPLETE
        )
        for key in ("objective", "val_mse", "utilisation"):
            mean, sd = _mean_sd([s.get(key) for s in samples])
            row[f"{key}_mean"], row[f"{key}_sd"] = mean, sd
        row["search_objective"] = first.get("objective")
        out.append(row)
    # The one ranking's rule on the configs' means (every chosen config has a finite one).
    ranking = pd.DataFrame(best_first(out, "objective_mean"))
    ranking.insert(0, "rank", range(1, len(ranking) + 1))
    return ranking


def _mean_sd(values: list[Any]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, sd


def _load_runs(files) -> list[dict]:
    if not files.exists(CONFIRM_RUNS_CSV):
        return []
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(files.read_bytes(CONFIRM_RUNS_CSV)))
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict(orient="records")


def _write_csv(files, rel: str, frame) -> None:
    files.write_text(rel, frame.to_csv(index=False))
