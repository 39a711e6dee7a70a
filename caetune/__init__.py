"""caetune: hyperparameter search for convolutional autoencoders.

The package is split three ways, with imports pointing one way only::

    caetune.models    <- caetune.analysis    <- caetune.search

``models`` holds the CAE family, datasets and the training loop; ``analysis``
the utilisation metrics, figures and report; ``search`` the Ray Tune + Optuna
service. Importing ``caetune`` itself is cheap (no torch, no ray).
"""

from caetune._cluster import JobClient, connect
from caetune._errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "JobClient", "__version__", "connect"]
