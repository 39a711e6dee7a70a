"""``caetune reproduce``: verdicts computed from the data, a tiny real run, resume and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from caetune import cli
from caetune.analysis._findings import FINDINGS, VERDICTS, analyse
from caetune.analysis._reproduce import GRIDS, reproduce

N_EPOCHS = 20


def _curves(
    finals: dict[tuple, float], *, sd: float, shape, seeds: int = 2, sds: dict | None = None
) -> pd.DataFrame:
    """Synthetic per-epoch curves: ``finals[config] + shape(epoch) - shape(last)``, seeds spread by
    ``sd``
    (or ``sds[config]``)."""
    rows = []
    epochs = np.arange(1, N_EPOCHS + 1)
    tail = shape(epochs) - shape(N_EPOCHS)
    for (model, n_neurons, n_maps), final in finals.items():
        for seed in range(seeds):
            offset = (sds or {}).get((model, n_neurons, n_maps), sd) * (
                1 if seed % 2 else -1
            )  # sample sd of the finals: sd * sqrt(2) for two seeds
            for epoch, extra in zip(epochs, tail, strict=True):
                rows.append(
                    {
                        "model": model,
                        "n_neurons": n_neurons,
                        "n_maps": n_maps,
                        "seed": seed,
                        "epoch": int(epoch),
                        "val_mse": final + extra + offset,
                        "seconds": 1.0,
                    }
                )
    return pd.DataFrame(rows)


def _verdicts(curves: pd.DataFrame) -> dict[str, str]:
    findings = analyse(curves).findings
    return dict(zip(findings["finding"], findings["verdict"], strict=True))


def _grid(nn: dict[int, float], nm: dict[int, float], model2: float) -> dict[tuple, float]:
    """Model 1 along Nn at Nm=32 and along Nm at Nn=640, Model 2 at (2560, 32): the small grid's
    shape.
    """
    finals = {("model1", n, 32): v for n, v in nn.items()}
    finals.update({("model1", 640, m): v for m, v in nm.items() if m != 32})
    finals[("model2", 2560, 32)] = model2
    return finals


def fast_decay(epochs):
    return 0.05 * np.exp(-0.3 * np.asarray(epochs, dtype=float))


def straight_line(epochs):
    return 0.002 * (N_EPOCHS - np.asarray(epochs, dtype=float))


def test_the_paper_like_data_agrees_where_the_paper_says_so():
    finals = _grid(
        {40: 0.030, 160: 0.020, 640: 0.012, 2560: 0.010}, {8: 0.0125, 16: 0.0122}, model2=0.020
    )
    verdicts = _verdicts(_curves(finals, sd=0.0003, shape=fast_decay))
    assert verdicts == {
        "nn_effect": "agree",
        "model1_vs_model2": "agree",
        "exponential_fit": "disagree",  # k = 0.05 < 0.4 but a = 0.3 is not < 0.1
        "plateau": "agree",
        "nm_effect": "agree",
    }


def test_the_reverse_data_disagrees():
    finals = _grid(
        {40: 0.010, 160: 0.012, 640: 0.020, 2560: 0.030}, {8: 0.080, 16: 0.050}, model2=0.005
    )
    verdicts = _verdicts(_curves(finals, sd=0.0003, shape=straight_line))
    assert verdicts["nn_effect"] == "disagree"
    assert verdicts["model1_vs_model2"] == "disagree"
    assert (
        verdicts["plateau"] == "disagree"
    )  # a straight line gains 5/19 of its drop after epoch 15
    assert verdicts["nm_effect"] == "disagree"


def test_effects_inside_the_seed_spread_are_inconclusive():
    finals = _grid(
        {40: 0.030, 160: 0.020, 640: 0.012, 2560: 0.010}, {8: 0.0125, 16: 0.0122}, model2=0.020
    )
    verdicts = _verdicts(_curves(finals, sd=0.02, shape=fast_decay))
    assert (
        verdicts["nn_effect"]
        == verdicts["model1_vs_model2"]
        == verdicts["nm_effect"]
        == "inconclusive"
    )


def test_an_unstable_configuration_blurs_only_its_own_comparison():
    finals = _grid(
        {40: 0.030, 160: 0.020, 640: 0.012, 2560: 0.010}, {8: 0.0125, 16: 0.0122}, model2=0.020
    )
    verdicts = _verdicts(
        _curves(finals, sd=0.0003, shape=fast_decay, sds={("model2", 2560, 32): 0.05})
    )
    assert verdicts["nn_effect"] == verdicts["nm_effect"] == "agree"
    assert verdicts["model1_vs_model2"] == "inconclusive"


def test_a_slow_shallow_curve_matches_the_papers_fit():
    finals = _grid(
        {40: 0.030, 160: 0.020, 640: 0.012, 2560: 0.010}, {8: 0.0125, 16: 0.0122}, model2=0.020
    )
    # k = 0.02, a = 0.05; every asymptote c = final - 0.02 * exp(-1) stays positive, as a fit
    # requires.
    result = analyse(
        _curves(finals, sd=0.0003, shape=lambda e: 0.02 * np.exp(-0.05 * np.asarray(e, float)))
    )
    assert (
        dict(zip(result.findings["finding"], result.findings["verdict"], strict=True))[
            "exponential_fit"
        ]
        == "agree"
    )
    assert np.allclose(result.fits["a"], 0.05, rtol=0.05) and np.allclose(
        result.fits["k"], 0.02, rtol=0.1
    )


def test_the_grids_test_every_finding():
    for name in ("small", "paper"):
        points = GRIDS[name]
        assert len(set(points)) == len(points)
        models = {p.model for p in points}
        assert models == {"model1", "model2"}
        nn_levels = {p.n_neurons for p in points if p.model == "model1" and p.n_maps == 32}
        nm_levels = {p.n_maps for p in points if p.model == "model1" and p.n_neurons == 640}
        assert len(nn_levels) >= 4 and len(nm_levels) >= 3


def test_a_tiny_real_reproduction_writes_every_finding_and_resumes(tmp_path, capsys):
    out = tmp_path / "repro"
    args = [
        "reproduce",
        "--out",
        str(out),
        "--grid",
        "tiny",
        "--seeds",
        "2",
        "--n-epochs",
        "2",
        "--subset",
        "500",
    ]

    assert cli.main(args) == 0

    printed = capsys.readouterr().out
    findings = pd.read_csv(out / "findings.csv")
    assert list(findings["finding"]) == list(FINDINGS)
    assert set(findings["verdict"]) <= set(VERDICTS)
    assert (
        findings.set_index("finding").loc["plateau", "verdict"] == "inconclusive"
    )  # 2 epochs < 15
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * len(GRIDS["tiny"]) and set(runs["seed"]) == {0, 1}
    assert runs["val_mse"].map(math.isfinite).all() and (runs["val_mse"] > 0).all()
    assert len(pd.read_csv(out / "curves.csv")) == 2 * len(runs)
    page = (out / "findings.md").read_text(encoding="utf-8")
    for key, claim in FINDINGS.items():
        assert key in page and claim in page and key in printed
    assert (out / "findings.png").stat().st_size > 10_000

    trained: list[str] = []
    again = reproduce(out=out, seeds=2, n_epochs=2, subset=500, grid="tiny", log=trained.append)
    assert trained == []  # every run was already in curves.csv
    assert list(again.findings["verdict"]) == list(findings["verdict"])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seeds", "1"], "seeds"),
        (["--grid", "huge"], "--grid"),
        (["--n-epochs", "0"], "n_epochs"),
        (["--subset", "1"], "subset"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "repro"
    assert cli.main(["reproduce", "--out", str(out), "--grid", "tiny", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("caetune reproduce: error: ") and needle in err
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["reproduce", "--out", str(blocker), "--grid", "tiny"]) == 2
    assert "--out" in capsys.readouterr().err and blocker.read_text() == "x"
