"""Search spaces: presets, YAML files, validation, caps and overrides (no Ray)."""

from __future__ import annotations

import pytest
import yaml

from caetune import InputError
from caetune.models import TrainConfig
from caetune.search import SearchSpace, load_space, preset_names, space_from_dict
from caetune.search._objective import Objective


def write_space(tmp_path, doc, name="space.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def test_presets_ship_with_the_package():
    assert {"paper-mnist", "cifar10", "caltech101"} <= set(preset_names())


@pytest.mark.parametrize("name", ["paper-mnist", "cifar10", "caltech101"])
def test_presets_start_from_the_papers_choice(name):
    space = load_space(name)
    assert space.name == name and space.source == f"preset:{name}"
    (start,) = space.start
    expected = {
        "paper-mnist": (2560, 32, 20),
        "cifar10": (2560, 256, 400),
        "caltech101": (2560, 32, 20),
    }[name]
    assert (start["n_neurons"], start["n_maps"], start["n_epochs"]) == expected
    # Every start point is a valid config of its space.
    config = space.train_config(start)
    assert isinstance(config, TrainConfig) and config.dataset == space.dataset


def test_paper_mnist_ranges():
    space = load_space("paper-mnist")
    nn, nm, ne = space.params["n_neurons"], space.params["n_maps"], space.params["n_epochs"]
    assert (nn.kind, nn.low, nn.high, nn.log) == ("int", 40, 4096, True)
    assert (nm.low, nm.high, ne.low, ne.high) == (8, 64, 1, 30)
    assert space.params["model"].choices == ("model1", "model2")
    assert space.params["lr"].kind == "float" and space.params["lr"].log
    assert space.dataset == "mnist-10k"
    assert space.max_epochs() == 30


def test_cifar10_preset_is_colour_32px():
    space = load_space("cifar10")
    assert space.fixed["image_size"] == 32 and space.fixed["grayscale"] is False
    assert space.params["n_maps"].high == 256 and space.params["n_epochs"].high == 400


def test_distributions_are_optunas():
    import optuna.distributions as od

    dists = load_space("paper-mnist").distributions()
    assert isinstance(dists["n_neurons"], od.IntDistribution) and dists["n_neurons"].log
    assert isinstance(dists["lr"], od.FloatDistribution)
    assert isinstance(dists["model"], od.CategoricalDistribution)


def test_max_epochs_caps_range_and_start_point():
    space = load_space("paper-mnist").capped(5)
    assert space.params["n_epochs"].high == 5 and space.max_epochs() == 5
    assert space.start[0]["n_epochs"] == 5
    assert load_space("paper-mnist").capped(None).max_epochs() == 30


def test_max_epochs_below_the_range_is_refused(tmp_path):
    path = write_space(
        tmp_path, {"params": {"n_epochs": {"low": 3, "high": 9}, "n_neurons": [8, 16]}}
    )
    with pytest.raises(InputError, match="--max-epochs"):
        load_space(path).capped(2)


def test_fixed_n_epochs_is_capped(tmp_path):
    path = write_space(tmp_path, {"fixed": {"n_epochs": 9}, "params": {"n_neurons": [8, 16]}})
    space = load_space(path).capped(4)
    assert space.fixed["n_epochs"] == 4 and space.max_epochs() == 4


def test_with_fixed_overrides_the_dataset():
    space = load_space("paper-mnist").with_fixed(dataset="npz:/x.npz", subset=300)
    assert space.dataset == "npz:/x.npz" and space.fixed["subset"] == 300
    with pytest.raises(InputError, match="subset"):
        load_space("paper-mnist").with_fixed(subset=1)


def test_space_round_trips_through_its_dict():
    space = load_space("paper-mnist").capped(6)
    again = space_from_dict(
        yaml.safe_load(yaml.safe_dump(space.to_dict())), name=space.name, source="x"
    )
    assert (
        again.params == space.params and again.start == space.start and again.fixed == space.fixed
    )


def test_a_yaml_space_file(tmp_path):
    path = write_space(
        tmp_path,
        {
            "description": "tiny",
            "fixed": {"dataset": "mnist-10k", "subset": 300},
            "params": {
                "n_neurons": {"low": 4, "high": 64, "log": True},
                "n_maps": {"low": 2, "high": 8, "step": 2},
            },
            "start": {"n_neurons": 16},
        },
        name="tiny.yaml",
    )
    space = load_space(path)
    assert isinstance(space, SearchSpace) and space.name == "tiny"
    assert space.params["n_maps"].distribution().step == 2
    assert space.start == ({"n_neurons": 16},)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (
            {"params": {"n_neurons": {"low": 0, "high": 64}}},
            "n_neurons.low: expected an integer >= 1",
        ),
        ({"params": {"n_neurons": {"low": 64, "high": 8}}}, "empty range"),
        ({"params": {"n_neurons": {"low": 4, "high": 8.5}}}, "integer"),
        ({"params": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"params": {"n_neurons": {"low": 4}}}, "both low and high"),
        ({"params": {"n_neurons": {"low": 4, "high": 8, "size": 3}}}, "unknown key"),
        ({"params": {"n_neurons": []}}, "at least one choice"),
        ({"params": {"model": ["model1", "model9"]}}, "model9"),
        ({"params": {"model": {"low": 1, "high": 2}}}, "list of choices"),
        ({"params": {"n_nuerons": [8]}}, "unknown or not searchable"),
        ({"params": {"subset": [100, 200]}}, "data fields are fixed"),
        ({"params": {"seed": [0, 1]}}, "not searchable"),
        ({"params": {}}, "non-empty mapping"),
        ({"fixed": {"colour": True}, "params": {"n_neurons": [8]}}, "fixed.colour"),
        ({"fixed": {"n_neurons": 8}, "params": {"n_neurons": [8]}}, "also fixed"),
        ({"params": {"n_neurons": [8, 16]}, "start": [{"n_neurons": 32}]}, "outside"),
        ({"params": {"n_neurons": [8, 16]}, "start": [{"n_maps": 4}]}, "not a searched field"),
        ({"params": {"n_neurons": [8]}, "epochs": 3}, "unknown key"),
    ],
)
def test_bad_spaces_are_one_clear_input_error(tmp_path, doc, match):
    path = write_space(tmp_path, doc)
    with pytest.raises(InputError, match=match) as info:
        load_space(path)
    assert "\n" not in str(info.value)


def test_split_seed_is_a_data_field_fixed_not_searched(tmp_path):
    # The search loads its data once: a searched split_seed would be recorded but never applied.
    path = write_space(tmp_path, {"params": {"n_neurons": [8], "split_seed": [0, 1, 2]}})
    with pytest.raises(InputError, match="params.split_seed: data fields are fixed") as info:
        load_space(path)
    assert "\n" not in str(info.value) and "split_seed" not in str(info.value).split("expected")[1]
    path = write_space(tmp_path, {"fixed": {"split_seed": 3}, "params": {"n_neurons": [8, 16]}})
    assert load_space(path).train_config({"n_neurons": 8}, seed=1).split_seed == 3


def test_unknown_preset_lists_the_presets():
    with pytest.raises(InputError, match="unknown preset 'paper-mnsit'.*paper-mnist"):
        load_space("paper-mnsit")


def test_malformed_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="not valid YAML at line"):
        load_space(write_space(tmp_path, "params: {n_neurons: [8, 16\n"))
    with pytest.raises(InputError, match="file not found"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(InputError, match="mapping"):
        load_space(write_space(tmp_path, "- 1\n- 2\n"))


def test_objectives():
    assert Objective("mse").evaluate(0.02, {"utilisation": 0.1}) == 0.02
    combined = Objective("combined", 1.0)
    assert combined.evaluate(0.02, {"utilisation": 0.5}) == pytest.approx(0.02 * 1.5)
    assert Objective("combined", 0.0).evaluate(0.02, {"utilisation": 0.0}) == pytest.approx(0.02)
    assert combined.evaluate(float("nan"), {"utilisation": 0.5}) == float("inf")
    pareto = Objective("pareto")
    assert pareto.directions == ["minimize", "maximize"] and pareto.scheduler_metric == "val_mse"
    assert pareto.values({"val_mse": 0.03, "utilisation": 0.4}) == [0.03, 0.4]
    with pytest.raises(InputError, match="--objective"):
        Objective("mae")
    with pytest.raises(InputError, match="--utilisation-weight"):
        Objective("combined", -1.0)
