"""The one typed config of a training run, shared by the CLI, YAML files and the search.

Field names are the project's names for each idea: Nn, Nm and Ne of the paper
are ``n_neurons``, ``n_maps`` and ``n_epochs`` everywhere (CLI flags use the
same names with dashes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from caetune._errors import InputError
from caetune.models._cae import ACTIVATIONS, MODEL_DEPTHS
from caetune.models._precision import PRECISIONS

DEVICES = ("auto", "cpu", "cuda")
# The fields that shape the dataset (what load_data reads), split_seed among them: two configs
# equal on these train on the same images. A search shares one dataset, so it fixes them; the
# report caches datasets by them.
DATA_FIELDS = (
    "dataset",
    "data_dir",
    "download",
    "image_size",
    "grayscale",
    "val_fraction",
    "subset",
    "split_seed",
)
EXPORT_KEY = "export"  # metadata of an exported config, not a field
# torch seeds take 64 bits and results tables store int64: a larger seed would fail mid-run.
MAX_SEED = 2**63 - 1
# Configs, spaces and experiment files are a few KB; /dev/zero must not be read to the end.
MAX_YAML_BYTES = 10_000_000


@dataclass
class TrainConfig:
    """Everything needed to train one CAE reproducibly.

    Attributes:
        dataset: A registry name (``mnist-10k``, ``mnist``, ``cifar10``, ...),
            ``npz:PATH`` or ``folder:PATH``.
        data_dir: Where torchvision datasets live (``DATA_DIR/MNIST/raw/...``).
        download: Let torchvision download a missing dataset.
        image_size: Resize images to this square size; ``None`` keeps the
            dataset's own size (Caltech-101 and folders have a default).
        grayscale: ``True`` converts to 1 channel, ``False`` to 3, ``None``
            keeps the dataset's own channels.
        val_fraction: Share of images held out for validation when the
            dataset has no validation split of its own.
        subset: Use only this many images (before the split); ``None``: all.
        split_seed: Seeds the subset and the train/validation split. Kept
            apart from ``seed`` so that re-training a config with other seeds
            is judged on the same validation images.
        model: ``model1`` (one conv/pool stage) or ``model2`` (three).
        n_neurons: Nn, neurons in the fully connected bottleneck.
        n_maps: Nm, feature maps of each conv layer.
        n_epochs: Ne, training epochs.
        activation: Hidden-layer activation (see ``ACTIVATIONS``).
        batch_size: Images per optimizer step.
        lr: Adam's learning rate.
        seed: Seeds the weights and the batch order.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` (autocast over the forward pass and the
            loss; float32 weights and Adam) or ``auto`` (bf16 only where the
            device has it natively and the use allows it; see
            :mod:`caetune.models._precision`).
    """

    dataset: str = "mnist-10k"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    grayscale: bool | None = None
    val_fraction: float = 0.2
    subset: int | None = None
    split_seed: int = 0
    model: str = "model1"
    n_neurons: int = 2560
    n_maps: int = 32
    n_epochs: int = 20
    activation: str = "relu"
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_conv(self) -> int:
        return MODEL_DEPTHS[self.model]

    def validate(self) -> None:
        """Raises :class:`InputError` naming the first bad field."""
        hints = _field_types()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            setattr(self, field.name, _coerce(field.name, value, hints[field.name]))
        _at_least("n_neurons", self.n_neurons, 1)
        _at_least("n_maps", self.n_maps, 1)
        _at_least("n_epochs", self.n_epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _seed("seed", self.seed)
        _seed("split_seed", self.split_seed)
        if self.subset is not None:
            _at_least("subset", self.subset, 2)
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 4)
        if not (0.0 < self.val_fraction < 1.0):
            raise InputError(
                "val_fraction",
                f"expected a number between 0 and 1 (exclusive), got {self.val_fraction}",
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError("lr", f"expected a positive learning rate, got {self.lr}")
        _one_of("model", self.model, MODEL_DEPTHS)
        _one_of("activation", self.activation, ACTIVATIONS)
        _one_of("device", self.device, DEVICES)
        _one_of("precision", self.precision, PRECISIONS)
        if not self.dataset:
            raise InputError("dataset", "expected a dataset name, npz:PATH or folder:PATH")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Builds a config from a mapping, rejecting unknown keys.

        Args:
            values: Field names to values, as in a YAML file.
            source: Named in the error for an unknown key.
        """
        if not isinstance(values, dict):
            raise InputError(
                source, f"expected a mapping of field: value, got {type(values).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise InputError(
                    f"{source}.{key}", f"unknown field; expected one of {', '.join(sorted(known))}"
                )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Reads a YAML file of fields; ``overrides`` (not ``None``) win.

        A top-level ``export:`` mapping is metadata that ``caetune export``
        records beside the fields (version, metrics, source run, checksums);
        it is ignored, so an exported config trains as it is.
        """
        values = read_yaml_mapping(path, field="config")
        if isinstance(values.get(EXPORT_KEY), dict):
            del values[EXPORT_KEY]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_yaml_mapping(path: str | Path, *, field: str) -> dict[str, Any]:
    """Reads a YAML file that must hold a mapping; one-line errors otherwise."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # opening a FIFO would wait for a writer forever
            raise InputError(field, f"{str(path)!r} is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise InputError(
                field, f"{str(path)!r} is larger than {MAX_YAML_BYTES:,} bytes; not a config"
            )
        text = data.decode("utf-8")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(field, f"file not found: {path}") from None
    except (OSError, ValueError) as err:  # ValueError: undecodable text, or a NUL in the path
        raise InputError(field, f"cannot read {str(path)!r}: {err}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(field, f"{path} is not valid YAML{where}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise InputError(field, f"{path} nests collections too deeply to be a config") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(
            field, f"{path} must hold a mapping of field: value, not a {type(values).__name__}"
        )
    return values


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, hint: str) -> Any:
    """Checks a value against its field's annotation (as a string)."""
    optional = "None" in hint
    if value is None:
        if optional:
            return None
        raise InputError(name, "a value is required")
    base = hint.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise InputError(name, f"expected true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(name, f"expected an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(name, f"expected a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise InputError(name, f"expected a string, got {value!r}")
        return value
    return value


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise InputError(name, f"expected an integer >= {low}, got {value}")


def _seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise InputError(name, f"expected an integer from 0 to 2**63-1, got {value}")


def _one_of(name: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(name, f"expected one of {', '.join(choices)}, got {value!r}")
