"""The on-disk layout of a search run: the contract between search and analysis.

``caetune search`` writes it, ``caetune report``/``export`` read it; neither
imports the other. A run lives at ``STORAGE/NAME/`` where STORAGE is a local
folder or ``s3://bucket/prefix``::

    NAME/
      experiment.yaml        search settings: space, objective, weight, dataset, seed ...
      study.db               the Optuna study (SQLite), unless an RDB URL was given
      results.csv            one row per trial (also results.parquet)
      results.parquet
      confirm.csv            top configs re-trained with extra seeds (mean, sd)
      trials/<trial_id>/
        config.yaml          the trial's full TrainConfig (caetune.models.TrainConfig)
        metrics.json         {"history": [EpochMetrics...], "val_mse": ..., "utilisation": {...}}
        model.pt             the final Trainer checkpoint (Trainer.load_checkpoint)
      report/                written by ``caetune report`` (index.html + figures)

Columns of results.csv that every reader may rely on: ``trial_id``, ``status``
(``complete``, ``pruned``, ``failed``, ``running``), ``error``, ``recovery``
(empty, or which checkpoint of the trial was unreadable, why, and whether it
resumed from an older one or restarted from epoch 0), the
searched params by their TrainConfig names (``n_neurons``, ``n_maps``,
``n_epochs``, ``model``, ``lr``, ``batch_size`` ...), ``val_mse`` (last epoch),
``best_val_mse``, ``utilisation`` (U), ``objective``, ``epochs_run`` (the
epochs its model was trained), ``epochs_trained`` (by this trial itself),
``seconds`` (this trial's own), and the per-layer metrics ``layer3_*`` /
``layer4_*``. ``warm_start`` names the trial whose model a trial continued
(the column is there once any trial did).
"""

EXPERIMENT_FILE = "experiment.yaml"
STUDY_FILE = "study.db"
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
CONFIRM_CSV = "confirm.csv"
TRIALS_DIR = "trials"
TRIAL_CONFIG = "config.yaml"
TRIAL_METRICS = "metrics.json"
TRIAL_MODEL = "model.pt"
REPORT_DIR = "report"

# A trial's ``status`` in results.csv (and what every reader filters on).
COMPLETE = "complete"
PRUNED = "pruned"
FAILED = "failed"
RUNNING = "running"
STATUSES = (COMPLETE, PRUNED, FAILED, RUNNING)
