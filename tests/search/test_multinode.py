"""A search on a three-node Ray cluster that loses a worker node mid-trial.

``ray.cluster_utils.Cluster`` starts a head (no CPUs, so trials must run on
the workers) and two one-CPU worker nodes on this machine; ``run_search``
joins it. Once both workers run a trial half-way, one worker node is removed.
Ray must restart its trial (``FailureConfig``) on the surviving node from the
trial's last checkpoint, and the search must end with every trial accounted
for: ``--num-samples`` rows, each complete, pruned or failed.

"Both half-way" is made certain, not waited for: each trial holds after its
first epoch until the node is gone. The cluster's job has Ray's
``worker_process_setup_hook`` run :func:`hold_after_first_epoch` in every
worker, which wraps ``ray.tune.report`` there (nothing in caetune changes).
``report`` returns once the driver has taken the epoch's result, recorded
its checkpoint and asked for the next epoch; the wrapper then marks the
trial held (a file named by Ray's trial id) and waits for a ``go`` file.
:class:`RemoveNodeMidway`, a Tune callback in the driver, looks at every step
of Tune's loop: once two running trials hold (one per worker, as each worker
has one CPU), it records their checkpoints, removes a worker node and writes
``go``. A trial recovered from its epoch-1 checkpoint never reports epoch 1
again, and later trials find ``go`` written, so nothing holds twice.

The cluster runs in a subprocess (``python -m tests.search.test_multinode``)
so that it never meets a Ray another test started in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.tune import Callback

from tests._helpers import FINISHED, fault_settings, write_space

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 4
SCENARIO_TIMEOUT_S = 400
HOLD_DIR_ENV = "CAETUNE_TEST_HOLD_DIR"  # read by this test's worker hook only, never by caetune
GO = "go"


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 60)
def test_search_survives_losing_a_worker_node(tmp_path):
    import pandas as pd

    # Ne 3-4: a trial held after epoch 1 has two epochs or more to go.
    space = write_space(tmp_path, subset=300, epochs=(3, 4))
    storage = tmp_path / "runs"
    facts_file = tmp_path / "facts.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "scenario.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.search.test_multinode", str(space), str(storage),
             str(facts_file), str(tmp_path / "hold")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        proc.wait(SCENARIO_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the cluster's processes too
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-6000:]
    facts = json.loads(facts_file.read_text())

    assert facts["removed"], "no moment with two trials half-way: the node was never removed"
    assert facts["alive_nodes"] == 2  # the head and the surviving worker
    table = pd.read_csv(storage / "exp" / "results.csv")
    assert sorted(table["trial_id"]) == [f"t{i:04d}" for i in range(NUM_SAMPLES)], table
    assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]

    # Ray restarted the trial of the lost node, and it went on from its checkpoint.
    assert facts["recovered"], f"no trial was recovered:\n{log.read_text()[-4000:]}"
    status = dict(zip(table["trial_id"], table["status"], strict=True))
    for trial_id in facts["recovered"]:
        assert status[trial_id] == "complete", table
        final = json.loads((storage / "exp" / "trials" / trial_id / "metrics.json").read_text())
        trained = facts["checkpoints"][trial_id]
        assert trained and final["history"][: len(trained)] == trained
        assert len(final["history"]) == final["n_epochs"]


def hold_after_first_epoch() -> None:
    """Ray worker setup hook: once a trial's ``tune.report`` of epoch 1 returns, wait for ``go``."""
    from ray import tune

    hold_dir = Path(os.environ[HOLD_DIR_ENV])
    report = tune.report

    def report_then_hold(metrics, **kwargs) -> None:
        report(metrics, **kwargs)
        if metrics.get("epoch") != 1 or (hold_dir / GO).exists():
            return
        (hold_dir / tune.get_context().get_trial_id()).touch()
        deadline = time.monotonic() + SCENARIO_TIMEOUT_S
        while not (hold_dir / GO).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    tune.report = report_then_hold  # caetune's trainable calls tune.report through the module


class RemoveNodeMidway(Callback):
    """Removes ``node`` once two running trials hold after epoch 1, then lets them go on.

    Records each held trial's checkpointed history at that moment, and the
    trials Ray then recovers.
    """

    def __init__(self, cluster, node, hold_dir: Path) -> None:
        self.cluster = cluster
        self.node = node
        self.hold_dir = hold_dir
        self.removed = False
        self.checkpoints: dict[str, list] = {}
        self.recovered: list[str] = []

    def __getstate__(self) -> dict:
        # Tuner pickles its callbacks for Tuner.restore (unused); a cluster cannot be pickled.
        return {}

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.removed:
            return
        held = [t for t in trials if t.status == "RUNNING" and self._holds(t)]
        if len(held) < 2:
            return
        for t in held:
            path = Path(t.checkpoint.path) / "metrics.json"
            self.checkpoints[t.config["trial_id"]] = json.loads(path.read_text())["history"]
        self.cluster.remove_node(self.node)
        self.removed = True
        (self.hold_dir / GO).touch()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.recovered.append(trial.config["trial_id"])

    def _holds(self, trial) -> bool:
        return (self.hold_dir / trial.trial_id).exists()


def _scenario(space: str, run_root: str, facts_file: str, hold_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from caetune.search import run_search

    Path(hold_dir).mkdir()
    # No dashboard: nothing here reads it, and its fixed port may be taken by another Ray.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        # run_search uses the Ray this process joined, with the hook in every worker of the job;
        # the workers import it from this checkout.
        python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        ray.init(
            address=cluster.address,
            runtime_env={
                "worker_process_setup_hook": f"{_MODULE}.hold_after_first_epoch",
                "env_vars": {HOLD_DIR_ENV: hold_dir, "PYTHONPATH": python_path},
            },
        )
        remover = RemoveNodeMidway(cluster, workers[1], Path(hold_dir))
        settings = fault_settings(
            space,
            run_root,
            num_samples=NUM_SAMPLES,
            max_concurrent=2,
            seed=2,
            address=cluster.address,
        )
        run_search(settings, callbacks=[remover])
        facts = {
            "removed": remover.removed,
            "checkpoints": remover.checkpoints,
            "recovered": remover.recovered,
            "alive_nodes": sum(1 for node in ray.nodes() if node["Alive"]),
        }
        Path(facts_file).write_text(json.dumps(facts))
    finally:
        ray.shutdown()
        cluster.shutdown()


_MODULE = "tests.search.test_multinode"  # this file's name also when it runs as __main__

if __name__ == "__main__":
    start = time.monotonic()
    _scenario(*sys.argv[1:5])
    print(f"scenario done in {time.monotonic() - start:.0f} s")
