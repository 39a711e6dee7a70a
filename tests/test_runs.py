"""caetune._runs: the one ranking of a run's best trials, and the readers every command shares."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from caetune import InputError
from caetune._runs import best_first, check_top_k, rank_trials, read_confirm, score_key


def row(trial_id, status="complete", objective=None, val_mse=None, **extra):
    return {
        "trial_id": trial_id,
        "status": status,
        "objective": objective,
        "val_mse": val_mse,
        **extra,
    }


RESULTS = [
    row("t0004", objective=0.30, val_mse=0.20),
    row("t0000", objective=0.20, val_mse=0.25),
    row("t0003", objective=0.20, val_mse=0.10),  # ties t0000: the lower trial id first
    row("t0001", "pruned", objective=0.01, val_mse=0.01),  # stopped short of its Ne
    row("t0002", "failed"),
    row("t0005", "running", objective=0.05, val_mse=0.05),
    row("t0006", objective=math.nan, val_mse=0.01),  # no finite score: never among the best
    row("t0007", objective=math.inf, val_mse=0.01),
    row("t0008", objective="n/a", val_mse=0.01),
]


def ids(ranked) -> list[str]:
    return [r.trial_id for r in ranked]


def test_complete_trials_by_objective_ties_by_trial_id_the_rest_dropped():
    assert ids(rank_trials(RESULTS)) == ["t0000", "t0003", "t0004"]
    assert ids(rank_trials(pd.DataFrame(RESULTS))) == ["t0000", "t0003", "t0004"]
    assert {r.ranked_by for r in rank_trials(RESULTS)} == {"results.csv: objective"}


def test_val_mse_when_no_complete_trial_has_an_objective():
    # A run without a scalar objective (or an older one): val_mse ranks.
    pareto = [{**r, "objective": None} for r in RESULTS]
    assert score_key(pareto) == "val_mse"
    assert ids(rank_trials(pareto)) == ["t0006", "t0007", "t0008", "t0003", "t0004", "t0000"]
    assert ids(rank_trials(RESULTS, key="val_mse"))[:4] == ["t0006", "t0007", "t0008", "t0003"]


def test_confirmed_trials_come_first_in_confirm_order():
    confirm = [
        {"rank": 1, "trial_id": "t0004", "seeds": "0 1 2"},
        {"rank": 2, "trial_id": "t0001", "seeds": "0 1 2"},  # no longer complete: skipped
        {"rank": 3, "trial_id": "t0000", "seeds": "0 1 2"},
    ]
    ranked = rank_trials(RESULTS, confirm=confirm)
    assert ids(ranked) == ["t0004", "t0000", "t0003"]
    assert ranked[0].confirm == confirm[0] and ranked[2].confirm is None
    assert ranked[0].ranked_by == "confirm.csv: mean objective over seeds 0 1 2"


def test_best_first_coerces_numbers_and_drops_what_cannot_be_compared():
    rows = [
        {"trial_id": "b", "m": "0.5"},
        {"trial_id": "a", "m": 0.5},
        {"trial_id": "c", "m": None},
        {"trial_id": "d", "m": True},
        {"trial_id": "e", "m": 0.1},
        {"trial_id": "f"},
    ]
    assert [r["trial_id"] for r in best_first(rows, "m")] == ["e", "a", "b"]


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2", None])
def test_k_must_be_a_positive_integer(k):
    with pytest.raises(InputError, match=r"^--top-k: expected an integer K >= 1"):
        check_top_k(k)
    assert check_top_k(2) == 2


def test_confirm_csv_is_read_strictly(tmp_path):
    assert read_confirm(tmp_path) == []
    (tmp_path / "confirm.csv").write_text("rank,trial_id,seeds\n2,t0002,0 1\n1,t0001,0\n")
    assert [r["trial_id"] for r in read_confirm(tmp_path)] == ["t0001", "t0002"]
    assert read_confirm(tmp_path)[0]["seeds"] == "0"
    (tmp_path / "confirm.csv").write_text("trial_id\nt0001\n")
    with pytest.raises(InputError, match="lacks the columns rank and trial_id"):
        read_confirm(tmp_path)
