"""Helpers shared by the test packages, in one place.

- :mod:`~tests._helpers._search`: a tiny search through the CLI in its own
  process group (start it, watch its log and study, SIGKILL it, resume it:
  :class:`FaultSearch`), and the same search in-process
  (:func:`fault_settings`).
- :mod:`~tests._helpers._integrity`: :func:`check_integrity`, what every fault
  test asserts of the run it hurt.
- :mod:`~tests._helpers._ray_head`: a real ``ray start --head`` with token
  authentication (:func:`ray_head`), and finding and stopping one Ray's
  processes without ``ray stop``.

Fixtures stay in the ``conftest.py`` files and :mod:`tests.s3server`; tiny
datasets in their true formats are in :mod:`tests.fixtures`.
"""

from tests._helpers._integrity import check_integrity
from tests._helpers._ray_head import (
    PORT_FLAGS,
    RayHead,
    free_port,
    processes_of,
    ray_head,
    start_command,
    stop,
    stop_head,
    wait_for_head,
)
from tests._helpers._search import (
    DONE_STATES,
    FINISHED,
    NO_ASHA_STOP,
    QUICK,
    RUN_TIMEOUT_S,
    STUDY_STATE,
    TINY_SPACE,
    FaultSearch,
    dropped_models,
    fault_search,
    fault_settings,
    finished_files,
    kill_group,
    local_study,
    results,
    run_search_cli,
    safe_study,
    search_command,
    search_env,
    start_search,
    started_ids,
    study_trials,
    trial_metrics,
    wait_until,
    write_space,
)

__all__ = [
    "DONE_STATES",
    "FINISHED",
    "NO_ASHA_STOP",
    "PORT_FLAGS",
    "QUICK",
    "RUN_TIMEOUT_S",
    "STUDY_STATE",
    "TINY_SPACE",
    "FaultSearch",
    "RayHead",
    "check_integrity",
    "dropped_models",
    "fault_search",
    "fault_settings",
    "finished_files",
    "free_port",
    "kill_group",
    "local_study",
    "processes_of",
    "ray_head",
    "results",
    "run_search_cli",
    "safe_study",
    "search_command",
    "search_env",
    "start_command",
    "start_search",
    "started_ids",
    "stop",
    "stop_head",
    "study_trials",
    "trial_metrics",
    "wait_for_head",
    "wait_until",
    "write_space",
]
