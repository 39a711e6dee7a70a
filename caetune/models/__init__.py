"""The CAE family, datasets and the training loop."""

from caetune.models._cae import ACTIVATIONS, CAE, MODEL_DEPTHS, CAEShape, cae_shape
from caetune.models._config import DATA_FIELDS, TrainConfig, read_yaml_mapping
from caetune.models._data import (
    DATASETS,
    DatasetEntry,
    ImageData,
    dataset_names,
    default_data_dir,
    load_data,
    load_dataset,
)
from caetune.models._fused import FusedCAE, FusedTrainer
from caetune.models._precision import PRECISIONS, bf16_native, resolve_precision
from caetune.models._seed import resolve_device, seed_everything
from caetune.models._train import (
    ALLOCATOR_TUNABLES,
    EpochMetrics,
    Trainer,
    TrainingDiverged,
    build_model,
    read_checkpoint,
    to_float_images,
    tune_allocator,
)

__all__ = [
    "ACTIVATIONS",
    "ALLOCATOR_TUNABLES",
    "CAE",
    "CAEShape",
    "DATASETS",
    "DATA_FIELDS",
    "DatasetEntry",
    "EpochMetrics",
    "FusedCAE",
    "FusedTrainer",
    "ImageData",
    "MODEL_DEPTHS",
    "PRECISIONS",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "bf16_native",
    "build_model",
    "cae_shape",
    "dataset_names",
    "default_data_dir",
    "load_data",
    "load_dataset",
    "read_checkpoint",
    "read_yaml_mapping",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
    "to_float_images",
    "tune_allocator",
]
