"""The precision field: how ``auto`` resolves, bf16 training, its determinism and its records."""

from __future__ import annotations

import pytest
import torch

from caetune import InputError
from caetune.models import ImageData, TrainConfig, Trainer, _precision, load_dataset
from caetune.models._precision import bf16_native, resolve_precision

TINY = dict(n_maps=4, n_neurons=16, batch_size=32, lr=3e-3, device="cpu", n_epochs=2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset("mnist-10k", subset=200, seed=0)


def fake_cpu(monkeypatch, *, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_cpu_bf16_is_native_with_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, native):
    fake_cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert bf16_native(CPU) is native


def test_cuda_bf16_is_asked_of_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
    assert bf16_native(torch.device("cuda")) is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    assert bf16_native(torch.device("cuda")) is False


def test_auto_takes_bf16_only_for_allowed_uses_on_native_devices(monkeypatch):
    fake_cpu(monkeypatch, amx=True, avx512_bf16=False)
    for use in _precision.USES:
        expected = "bf16" if use in _precision.AUTO_BF16_USES else "fp32"
        assert resolve_precision("auto", CPU, use=use) == expected
    # What a person trains, and the confirmation seeds, are the product: fp32.
    assert resolve_precision("auto", CPU, use="train") == "fp32"
    assert resolve_precision("auto", CPU, use="confirmation") == "fp32"
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    for use in _precision.USES:
        assert resolve_precision("auto", CPU, use=use) == "fp32"


def test_explicit_precision_is_kept_whatever_the_device(monkeypatch):
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    for use in _precision.USES:
        assert resolve_precision("bf16", CPU, use=use) == "bf16"
        assert resolve_precision("fp32", CPU, use=use) == "fp32"


def test_bad_precision_is_one_input_error():
    with pytest.raises(InputError) as err:
        TrainConfig(precision="fp16")
    assert err.value.field == "precision" and "auto, fp32, bf16" in str(err.value)
    with pytest.raises(InputError, match="use"):
        resolve_precision("auto", CPU, use="export")


def test_trainer_resolves_auto_per_use(monkeypatch, digits):
    fake_cpu(monkeypatch, amx=True, avx512_bf16=False)
    config = TrainConfig(**{**TINY, "n_epochs": 1})
    assert Trainer(config, digits, use="screening").precision == "bf16"
    assert Trainer(config, digits, use="confirmation").precision == "fp32"
    assert Trainer(config, digits).precision == "fp32"
    assert config.precision == "auto"  # the config itself is left as written


def test_bf16_runs_the_forward_pass_in_bf16_with_fp32_weights(digits):
    trainer = Trainer(TrainConfig(**TINY, precision="bf16"), digits)
    with trainer._autocast():
        recon, acts = trainer.model(trainer.x_val[:4])
    assert recon.dtype == torch.bfloat16 and acts["layer4"].dtype == torch.bfloat16
    trainer.fit()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())


def test_bf16_and_fp32_agree_on_a_small_model(digits):
    fp32 = Trainer(TrainConfig(**TINY, precision="fp32"), digits)
    bf16 = Trainer(TrainConfig(**TINY, precision="bf16"), digits)
    fp32.fit()
    bf16.fit()
    for a, b in zip(fp32.history, bf16.history, strict=True):
        assert b.train_mse == pytest.approx(a.train_mse, rel=0.02)
        assert b.val_mse == pytest.approx(a.val_mse, rel=0.02)
    assert fp32.history[-1].val_mse != bf16.history[-1].val_mse  # bf16 really ran


def test_bf16_is_deterministic_on_the_cpu(digits):
    runs = []
    for _ in range(2):
        trainer = Trainer(TrainConfig(**TINY, precision="bf16", seed=5), digits)
        trainer.fit()
        runs.append((trainer.history, [p.detach().clone() for p in trainer.model.parameters()]))
    (first, weights_a), (second, weights_b) = runs
    assert [(m.train_mse, m.val_mse) for m in first] == [(m.train_mse, m.val_mse) for m in second]
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))


def test_checkpoint_records_precision_and_a_resume_keeps_it(monkeypatch, digits, tmp_path):
    straight = Trainer(TrainConfig(**{**TINY, "n_epochs": 3}, precision="bf16"), digits)
    straight.fit()
    first = Trainer(TrainConfig(**TINY, precision="bf16"), digits)
    first.fit()
    first.save_checkpoint(tmp_path / "model.pt")
    # An auto run resumed on a machine where auto means fp32 goes on in bf16, as it started.
    fake_cpu(monkeypatch, amx=False, avx512_bf16=False)
    resumed = Trainer(TrainConfig(**{**TINY, "n_epochs": 3}), digits)
    assert resumed.precision == "fp32"
    resumed.load_checkpoint(tmp_path / "model.pt")
    assert resumed.precision == "bf16"
    resumed.fit()
    assert [m.val_mse for m in resumed.history] == [m.val_mse for m in straight.history]
    # An explicit other precision is refused, not silently mixed.
    forced = Trainer(TrainConfig(**{**TINY, "n_epochs": 3}, precision="fp32"), digits)
    with pytest.raises(InputError, match="precision bf16"):
        forced.load_checkpoint(tmp_path / "model.pt")
