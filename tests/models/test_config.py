import pytest

from caetune import InputError
from caetune.models import TrainConfig


def test_defaults_are_the_papers_best_for_mnist():
    config = TrainConfig()
    assert (config.n_neurons, config.n_maps, config.n_epochs) == (2560, 32, 20)
    assert config.dataset == "mnist-10k"


def test_yaml_round_trip(tmp_path):
    config = TrainConfig(n_neurons=160, n_maps=8, n_epochs=3, model="model2", lr=0.002)
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert TrainConfig.from_yaml(path) == config


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_neurons: 40\nn_maps: 8\n")
    config = TrainConfig.from_yaml(path, n_maps=16, seed=None)
    assert (config.n_neurons, config.n_maps, config.seed) == (40, 16, 0)


@pytest.mark.parametrize(
    "values,field",
    [
        ({"n_neurons": -1}, "n_neurons"),
        ({"n_neurons": 2.5}, "n_neurons"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_maps": "many"}, "n_maps"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"model": "model3"}, "model"),
        ({"download": "yes"}, "download"),
        ({"device": "tpu"}, "device"),
        ({"n_nerons": 5}, "config.n_nerons"),
    ],
)
def test_bad_fields_are_named(values, field):
    with pytest.raises(InputError) as err:
        TrainConfig.from_dict(values)
    assert err.value.field == field
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,needle",
    [("n_neurons: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping"), ("\x00\x01", "")],
)
def test_malformed_yaml_is_one_line(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        TrainConfig.from_yaml(path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")
