"""The names of the Optuna user attributes a search writes on its study's trials.

The study is what a resumed search, the warm start, the explorer and the
summary read back, so each key is named once, here, and every module imports
it from this one (which imports nothing). A trial's attributes:

* while it runs: :data:`TRIAL_ATTR` (caetune's id, ``t0007``; never Ray's,
  which changes from session to session), :data:`CHECKPOINT_ATTR`, and, when it
  continued another trial, :data:`WARM_ATTR` and :data:`WARM_EPOCHS_ATTR`;
* when it ends: :data:`STATUS_ATTR`, :data:`EPOCHS_RUN_ATTR`,
  :data:`EPOCHS_TRAINED_ATTR`, :data:`SECONDS_ATTR`, :data:`UTILISATION_ATTR`
  and :data:`VAL_MSE_ATTR` (as in its results row), :data:`FAILED_ATTR` when
  it failed;
* :data:`RECOVERY` and :data:`RERUNS_ATTR` once it got past a damaged
  checkpoint; :data:`START_POINT_ATTR` on a preset's enqueued start point.

The study's own: :data:`WEIGHTS_ONLY_ATTR` and :data:`DROPPED_ATTR`
(:mod:`caetune.search._lean`).
"""

TRIAL_ATTR = "trial_id"  # caetune's stable trial id, t0007 (the Optuna trial number)
CHECKPOINT_ATTR = "checkpoint"  # its latest Ray checkpoint, relative to the run folder
STATUS_ATTR = "status"  # how it ended: one of caetune._runs.STATUSES
FAILED_ATTR = "failed_reason"  # why it failed
EPOCHS_RUN_ATTR = "epochs_run"  # the epochs its model was trained, a warm start's included
EPOCHS_TRAINED_ATTR = "epochs_trained"  # ... by the trial itself
SECONDS_ATTR = "seconds"  # its own wall-clock seconds
UTILISATION_ATTR = "utilisation"  # U of its final model
VAL_MSE_ATTR = "val_mse"  # its last epoch's validation MSE
WARM_ATTR = "warm_start"  # the trial id it continued from
WARM_EPOCHS_ATTR = "warm_epochs"  # ... and that trial's epochs, which this one did not train
# The damaged checkpoints it got past, and what it did instead. The same key names the entry in
# the trial's config, its results and its results row.
RECOVERY = "recovery"
RERUNS_ATTR = "reruns"  # how often it ran again because its final checkpoint was damaged
START_POINT_ATTR = "start_point"  # enqueued from the space's start points (the paper's choice)

# Of the study: the trials whose model.pt no longer holds optimizer state (never continued).
WEIGHTS_ONLY_ATTR = "weights_only"
# ... and those whose model.pt is gone (never continued; config.yaml and metrics.json stay).
DROPPED_ATTR = "models_dropped"
