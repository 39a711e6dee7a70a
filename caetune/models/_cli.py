"""``caetune train``: train one CAE and write config.yaml, metrics.json, model.pt."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from caetune._errors import InputError
from caetune._storage import check_writable_dir

# Bytes per parameter while training with Adam: fp32 weights, gradients and two moments.
TRAIN_BYTES_PER_PARAMETER = 16

# One help line per TrainConfig field; flags are the field names with dashes.
FIELD_HELP = {
    "dataset": (
        "mnist-10k (default, offline), mnist, fashion-mnist, svhn, cifar10, caltech101, "
        "npz:PATH or folder:PATH"
    ),
    "data_dir": "torchvision dataset root (DATA_DIR/MNIST/raw/...)",
    "download": "let torchvision download a missing dataset",
    "image_size": "resize images to this square size",
    "grayscale": "convert to 1 channel (--no-grayscale: to 3 channels)",
    "val_fraction": "share held out for validation when the dataset has no split (default 0.2)",
    "subset": "use only this many images",
    "model": "model1 (one conv/pool stage) or model2 (three)",
    "n_neurons": "Nn, neurons in the bottleneck (default 2560)",
    "n_maps": "Nm, feature maps per conv layer (default 32)",
    "n_epochs": "Ne, training epochs (default 20)",
    "activation": "relu, leaky_relu, elu, tanh or sigmoid",
    "batch_size": "images per optimizer step (default 256)",
    "lr": "Adam learning rate (default 1e-3)",
    "split_seed": "seeds the subset and the train/validation split (default 0)",
    "seed": "seeds the weights and the batch order (default 0)",
    "device": "auto (CUDA when present), cpu or cuda",
    "precision": "fp32, bf16 (autocast; fp32 weights and Adam) or auto (default: bf16 only "
    "where the device has it natively and the use allows it; caetune train stays fp32)",
}


def add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Adds one ``--field-name`` flag per :class:`TrainConfig` field (default: unset)."""
    from caetune.models._config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = str(field.type).replace(" | None", "")
        kwargs: dict = {"dest": field.name, "default": None, "help": FIELD_HELP.get(field.name)}
        if hint == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(hint, str)
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace):
    """A validated TrainConfig: the ``--config`` file (if any), then flags on top."""
    from caetune.models._config import TrainConfig

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        return TrainConfig.from_yaml(args.config, **flags)
    return TrainConfig.from_dict(flags, source="flags")


def check_model_fits(config, data) -> None:
    """Raises when the model's training state alone exceeds the device's memory.

    A sanity bound for absurd sizes (``--n-neurons 100000000000``), which would
    otherwise fail inside torch's allocator, or be killed by the OS, with
    nothing said; it does not promise that smaller models fit.
    """
    import torch

    from caetune.models._cae import cae_shape
    from caetune.models._data import format_bytes, physical_memory
    from caetune.models._seed import resolve_device

    shape = cae_shape(
        in_channels=data.channels,
        image_size=data.image_size,
        n_maps=config.n_maps,
        n_neurons=config.n_neurons,
        n_conv=config.n_conv,
    )
    device = resolve_device(config.device)
    have = (
        torch.cuda.get_device_properties(device).total_memory
        if device.type == "cuda"
        else physical_memory()
    )
    needed = shape.parameter_count() * TRAIN_BYTES_PER_PARAMETER
    if have is not None and needed > have:
        where = "the GPU has" if device.type == "cuda" else "this machine has"
        raise InputError(
            "n_neurons, n_maps",
            f"{config.n_neurons} and {config.n_maps} on {data.image_size[0]}x{data.image_size[1]} "
            f"images make a model of {shape.parameter_count():.3g} parameters, which needs "
            f"{format_bytes(needed)} to train; {where} {format_bytes(have)} of memory",
        )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one CAE and print its validation MSE",
        description="Train one CAE; writes OUT/config.yaml, OUT/metrics.json and OUT/model.pt.",
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="a YAML file of the fields below; flags override it"
    )
    parser.add_argument(
        "--out", default="runs/train", metavar="DIR", help="output folder (default runs/train)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/model.pt if it exists"
    )
    add_config_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caetune.models._data import load_data
    from caetune.models._train import Trainer, TrainingDiverged

    config = config_from_args(args)
    out = Path(args.out)
    check_writable_dir(out, field="--out")
    data = load_data(config)  # bad dataset paths fail here, before anything is written
    check_model_fits(config, data)

    trainer = Trainer(config, data)
    checkpoint = out / "model.pt"
    if args.resume and checkpoint.exists():
        trainer.load_checkpoint(checkpoint)
        print(f"resumed from {checkpoint} at epoch {trainer.epoch}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    # The resolved precision, not auto: retraining from this file trains as this run did.
    resolved = dataclasses.replace(config, precision=trainer.precision)
    (out / "config.yaml").write_text(resolved.to_yaml(), encoding="utf-8")
    print(
        f"training {config.model} n_neurons={config.n_neurons} n_maps={config.n_maps} "
        f"n_epochs={config.n_epochs} on {data.name} ({len(data.train)} train / "
        f"{len(data.val)} val, {trainer.device}, {trainer.precision})",
        file=sys.stderr,
    )

    def save(_metrics, trainer: Trainer) -> None:
        # Every epoch, so a killed run loses at most one epoch (--resume).
        trainer.save_checkpoint(checkpoint)
        write_metrics(out / "metrics.json", trainer)

    try:
        trainer.fit(callback=save, progress=sys.stderr.isatty())
    except TrainingDiverged as err:
        # The config's lr (or batch size) is to blame; the epochs before stay saved.
        raise InputError("lr", f"{err}; try a smaller lr") from None
    write_metrics(out / "metrics.json", trainer)
    print(f"val_mse {trainer.history[-1].val_mse:.6f}")
    return 0


def write_metrics(path: Path, trainer) -> None:
    history = [m.to_dict() for m in trainer.history]
    payload = {
        "val_mse": history[-1]["val_mse"] if history else None,
        "epochs": len(history),
        "precision": trainer.precision,
        "history": history,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)
