"""Fused trials: K same-shape configs trained as one model equal K separate runs."""

from __future__ import annotations

import pytest
import torch

from caetune import InputError
from caetune.models import ImageData, TrainConfig, Trainer, load_dataset
from caetune.models._fused import FusedTrainer

TINY = dict(n_maps=4, n_neurons=16, batch_size=48, device="cpu", n_epochs=3)
# Each trial owns its seed and lr.
OWN = [(0, 1e-3), (1, 3e-3), (7, 2e-3)]


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset("mnist-10k", subset=200, seed=0)


def configs(**overrides) -> list[TrainConfig]:
    return [TrainConfig(**{**TINY, **overrides}, seed=s, lr=lr) for s, lr in OWN]


def assert_same_as_separate(fused: FusedTrainer, data: ImageData, *, rel: float) -> None:
    for index, config in enumerate(fused.configs):
        alone = Trainer(config, data)
        alone.fit()
        for a, b in zip(alone.history, fused.histories[index], strict=True):
            assert b.train_mse == pytest.approx(a.train_mse, rel=rel)
            assert b.val_mse == pytest.approx(a.val_mse, rel=rel)
        member = fused.model.member_state(index)
        for name, weight in alone.model.state_dict().items():
            torch.testing.assert_close(member[name], weight, rtol=rel, atol=1e-5)


@pytest.mark.parametrize(("model", "activation"), [("model1", "relu"), ("model2", "elu")])
def test_fused_trials_equal_separate_runs(digits, model, activation):
    fused = FusedTrainer(configs(model=model, activation=activation), digits)
    fused.fit()
    assert fused.epoch == 3 and all(len(h) == 3 for h in fused.histories)
    assert_same_as_separate(fused, digits, rel=1e-4)


def test_fused_members_are_standalone_models(digits):
    fused = FusedTrainer(configs(n_epochs=1), digits)
    fused.fit()
    for index, member in enumerate(fused.members()):
        assert member.config.seed == OWN[index][0] and member.epoch == 1
        with torch.no_grad():
            recon, _ = member.model(member.x_val)
        mse = torch.nn.functional.mse_loss(recon, member.x_val).item()
        assert mse == pytest.approx(fused.histories[index][-1].val_mse, rel=1e-5)


def test_fused_checkpoint_resumes_exactly(digits, tmp_path):
    straight = FusedTrainer(configs(), digits)
    straight.fit()
    first = FusedTrainer(configs(n_epochs=1), digits)
    first.fit()
    first.save_checkpoint(tmp_path / "fused.pt")
    torch.rand(10)  # global RNG draws after the save must not leak into the resumed run
    resumed = FusedTrainer(configs(), digits)
    resumed.load_checkpoint(tmp_path / "fused.pt")
    assert resumed.epoch == 1
    resumed.fit()
    for a, b in zip(straight.histories, resumed.histories, strict=True):
        assert [(m.train_mse, m.val_mse) for m in a] == [(m.train_mse, m.val_mse) for m in b]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    other = FusedTrainer(configs(batch_size=32), digits)
    with pytest.raises(InputError, match="other fused configs"):
        other.load_checkpoint(tmp_path / "fused.pt")


def test_fused_bf16_matches_separate_bf16_runs(digits):
    fused = FusedTrainer(configs(precision="bf16", n_epochs=2), digits)
    fused.fit()
    assert fused.precision == "bf16"
    # bf16 rounds each kernel's output: grouped and single kernels agree to bf16's precision.
    assert_same_as_separate(fused, digits, rel=2e-2)


def test_configs_must_share_their_shape(digits):
    mixed = [TrainConfig(**TINY, seed=0), TrainConfig(**{**TINY, "n_neurons": 8}, seed=1)]
    with pytest.raises(InputError) as err:
        FusedTrainer(mixed, digits)
    assert err.value.field == "configs[1].n_neurons"
