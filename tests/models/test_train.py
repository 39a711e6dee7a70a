"""The training loop: learning, determinism, exact resume, divergence, checkpoints."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from caetune import InputError
from caetune.models import (
    EpochMetrics,
    ImageData,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    load_dataset,
)

# Small enough for a shared 2-core machine: Model 1 with a few maps and neurons.
TINY = dict(n_maps=4, n_neurons=16, batch_size=32, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def digits() -> ImageData:
    """200 real MNIST test digits (160 train / 40 validation), seeded split."""
    return load_dataset("mnist-10k", subset=200, seed=0)


def make_trainer(data: ImageData, **overrides) -> Trainer:
    return Trainer(TrainConfig(**{**TINY, **overrides}), data)


def losses(history: list[EpochMetrics]) -> list[tuple[float, float]]:
    return [(m.train_mse, m.val_mse) for m in history]


def parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(parameters(a), parameters(b), strict=True))


def test_mse_falls_on_real_digits(digits):
    trainer = make_trainer(digits, n_epochs=4)
    history = trainer.fit()
    val = [m.val_mse for m in history]
    train = [m.train_mse for m in history]
    assert val[-1] < 0.8 * val[0], val
    assert train[-1] < train[0], train
    assert all(0.0 < v < 1.0 for v in val + train)


def test_same_seed_same_run_other_seed_differs(digits):
    first = make_trainer(digits, n_epochs=2, seed=3)
    second = make_trainer(digits, n_epochs=2, seed=3)
    other = make_trainer(digits, n_epochs=2, seed=4)
    for trainer in (first, second, other):
        trainer.fit()
    assert losses(first.history) == losses(second.history)
    assert all(
        torch.equal(a, b) for a, b in zip(parameters(first), parameters(second), strict=True)
    )
    assert losses(first.history) != losses(other.history)


def test_resume_from_checkpoint_is_bit_identical(digits, tmp_path):
    # n_images % batch_size != 0 (160 % 48), so the short last batch is resumed too.
    straight = make_trainer(digits, n_epochs=4, batch_size=48)
    straight.fit()

    interrupted = make_trainer(digits, n_epochs=2, batch_size=48)
    interrupted.fit()
    interrupted.save_checkpoint(tmp_path / "model.pt")
    # Anything drawn from the global RNGs after the save must not leak into the resumed run.
    torch.rand(10)

    resumed = make_trainer(digits, n_epochs=4, batch_size=48)
    resumed.load_checkpoint(tmp_path / "model.pt")
    assert resumed.epoch == 2
    resumed.fit()

    assert losses(resumed.history) == losses(straight.history)
    assert [m.epoch for m in resumed.history] == [1, 2, 3, 4]
    assert all(
        torch.equal(a, b) for a, b in zip(parameters(resumed), parameters(straight), strict=True)
    )


def test_nan_loss_raises_training_diverged(digits):
    trainer = make_trainer(digits, n_epochs=3)
    trainer.x_train[5, 0, 10, 10] = math.nan  # one poisoned pixel poisons its batch's loss
    calls = []
    with pytest.raises(TrainingDiverged, match=r"nan in epoch 1"):
        trainer.fit(callback=lambda metrics, _: calls.append(metrics))
    assert calls == []
    assert trainer.epoch == 0 and trainer.history == []


def test_callback_once_per_epoch_with_sane_metrics(digits):
    trainer = make_trainer(digits, n_epochs=3)
    seen = []
    trainer.fit(callback=lambda metrics, t: seen.append((metrics, t.epoch)))
    assert [m.epoch for m, _ in seen] == [1, 2, 3]
    assert [epoch for _, epoch in seen] == [1, 2, 3]  # called after the epoch is counted
    for metrics, _ in seen:
        assert math.isfinite(metrics.train_mse) and math.isfinite(metrics.val_mse)
        assert metrics.train_seconds > 0 and metrics.eval_seconds > 0
        assert metrics.images_per_second == pytest.approx(160 / metrics.train_seconds)
    assert seen[-1][0].val_mse == trainer.evaluate()
    assert trainer.history == [m for m, _ in seen]


def test_evaluate_takes_uint8_and_float_images(digits):
    trainer = make_trainer(digits, n_epochs=1)
    as_float = digits.val.float() / 255.0
    assert trainer.evaluate(digits.val) == pytest.approx(trainer.evaluate(as_float), rel=1e-6)
    assert trainer.evaluate(digits.val) == pytest.approx(trainer.evaluate(), rel=1e-6)


def test_checkpoint_save_is_atomic_and_overwrites(digits, tmp_path, monkeypatch):
    trainer = make_trainer(digits, n_epochs=2)
    trainer.fit()
    path = tmp_path / "model.pt"
    trainer.save_checkpoint(path)
    assert trainer.save_checkpoint(path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    def disk_full(obj, file):
        with open(file, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    state = torch.load(path, weights_only=False)  # the previous checkpoint, whole
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_checkpoint_of_another_model_is_refused(digits, tmp_path):
    make_trainer(digits, n_epochs=1).save_checkpoint(tmp_path / "model.pt")
    other = make_trainer(digits, n_epochs=1, n_neurons=8)
    with pytest.raises(InputError, match="n_neurons=16"):
        other.load_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize(("option", "value"), [("threads", 0), ("threads", 1.5), ("use", "export")])
def test_bad_options_are_input_errors(digits, option, value):
    with pytest.raises(InputError) as err:
        Trainer(TrainConfig(**TINY), digits, **{option: value})
    assert err.value.field == option


def test_cpu_path_uses_fused_adam_and_channels_last(digits):
    trainer = make_trainer(digits, n_epochs=1)
    assert trainer.optimizer.defaults["fused"] is True
    conv = trainer.model.encoder[0].weight  # [Nm, 1, 3, 3]
    # With one input channel both layouts are "contiguous"; the strides tell them apart,
    # and they are what picks the oneDNN kernels.
    assert conv.stride() == (9, 1, 3, 1)


# Page faults per 64 MiB allocation (above glibc's largest default mmap threshold), allocated,
# touched and freed like a step's gradient, in a fresh process so the suite's own heap history
# plays no part.
_FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from caetune.models import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator() is True
    assert tune_allocator() is True  # once per process, then cached
n = 64 * 2**20 // 4
# The heap settles first: memalign leaves odd-sized holes, so up to the 5th block may still
# be freshly mapped (seen on glibc 2.36, varying with thread timing); from the 6th on, none.
for _ in range(8):
    torch.ones(n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(n)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_keeps_big_blocks_in_the_heap():
    def faults(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_ALLOCATION, mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    tuned, untuned = faults("tuned"), faults("untuned")
    # Untuned, each allocation is a fresh mmap: all of its 16 k pages fault in again.
    assert untuned > 8000, untuned
    assert tuned < 1000, (tuned, untuned)
