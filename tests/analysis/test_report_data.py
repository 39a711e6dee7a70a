"""The report's data: each trial's own split, loaded once per split; images spread over the set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

import caetune.analysis
import caetune.analysis._figures
import caetune.models._data
from caetune.analysis import write_report
from caetune.models import read_checkpoint
from tests import fixtures

N_CLASSES = 10
PER_CLASS = 100


def _set_config(run: Path, trial_id: str, **values) -> None:
    """Changes fields of a trial's recorded config, in its checkpoint and its config.yaml."""
    folder = run / "trials" / trial_id
    state = read_checkpoint(folder / "model.pt")
    state["config"] = {**state["config"], **values}
    torch.save(state, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(state["config"]), encoding="utf-8")


def _spy_loads(monkeypatch) -> list[dict]:
    """Records the options of every dataset load (``seed`` is the split's seed)."""
    calls: list[dict] = []
    real = caetune.models._data.load_dataset

    def spy(spec, **options):
        calls.append({"spec": spec, **options})
        return real(spec, **options)

    monkeypatch.setattr(caetune.models._data, "load_dataset", spy)
    return calls


def test_datasets_are_cached_by_the_data_fields_split_seed_included(
    run_copy, tmp_path, monkeypatch
):
    # t0000 and t0001 differ in the training seed only: one dataset. t0002 was split
    # with another split_seed: its own dataset, split as it was trained.
    _set_config(run_copy, "t0001", seed=1)
    _set_config(run_copy, "t0002", split_seed=5)
    calls = _spy_loads(monkeypatch)
    write_report(run_copy, top=3, out=tmp_path / "report")
    assert sorted(call["seed"] for call in calls) == [0, 5]


def _class_sorted_npz(path: Path) -> Path:
    """10 classes of 28x28 grey images, sorted by class; class ``k``'s pixels all equal 25 k."""
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    images = np.broadcast_to((25 * labels).astype(np.uint8)[:, None, None], (len(labels), 28, 28))
    return fixtures.make_npz(path, images.copy(), labels=labels)


def test_report_images_are_spread_over_a_class_sorted_set(run_copy, tmp_path, monkeypatch):
    spec = f"npz:{_class_sorted_npz(tmp_path / 'sorted.npz')}"
    for trial_id in ("t0000", "t0001", "t0002"):
        _set_config(run_copy, trial_id, dataset=spec, subset=None)
    figures = []
    real = caetune.analysis._figures.plot_reconstructions

    def spy(*args, **kwargs):
        figures.append(real(*args, **kwargs))
        return figures[-1]

    for module in (caetune.analysis, caetune.analysis._figures):
        monkeypatch.setattr(module, "plot_reconstructions", spy)
    write_report(run_copy, top=1, out=tmp_path / "report")

    (figure,) = figures
    inputs = [ax for ax in figure.axes if ax.images][: len(figure.axes) // 2]  # the top row
    shown = {round(float(np.mean(ax.images[0].get_array())) * 255 / 25) for ax in inputs}
    assert len(inputs) == 10 and len(shown) >= 5, shown
