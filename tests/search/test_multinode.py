"""A search on a three-node Ray cluster that loses a worker node mid-trial.

``ray.cluster_utils.Cluster`` starts a head (no CPUs, so trials must run on
the workers) and two one-CPU worker nodes on this machine; ``run_search``
joins it. Once both workers run a trial half-way, one worker node is removed.
Ray must restart its trial (``FailureConfig``) on the surviving node from the
trial's last checkpoint, and the search must end with every trial accounted
for: ``--num-samples`` rows, each complete, pruned or failed.

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

from tests.search.test_resume_kill import FINISHED, write_space

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 4
SCENARIO_TIMEOUT_S = 400


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 60)
def test_search_survives_losing_a_worker_node(tmp_path):
    import pandas as pd

    # Ne 6-7: both trials are half-way (epochs 1 to Ne-2) for several epochs at once, on a loaded machine too.
    space = write_space(tmp_path, subset=1500, epochs=(6, 7))
    storage = tmp_path / "runs"
    facts_file = tmp_path / "facts.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "scenario.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.search.test_multinode", str(space), str(storage), str(facts_file)],
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
    status = dict(zip(table["trial_id"], table["status"]))
    for trial_id in facts["recovered"]:
        assert status[trial_id] == "complete", table
        final = json.loads((storage / "exp" / "trials" / trial_id / "metrics.json").read_text())
        trained = facts["checkpoints"][trial_id]
        assert trained and final["history"][: len(trained)] == trained
        assert len(final["history"]) == final["n_epochs"]


class RemoveNodeMidway(Callback):
    """Removes ``node`` once two trials (one per worker) have a checkpoint and epochs to go.

    Records each running trial's checkpointed history at that moment, and
    the trials Ray then recovers.
    """

    def __init__(self, cluster, node) -> None:
        self.cluster = cluster
        self.node = node
        self.removed = False
        self.checkpoints: dict[str, list] = {}
        self.recovered: list[str] = []

    def __getstate__(self) -> dict:
        # Tuner pickles its callbacks for Tuner.restore (unused); a cluster cannot be pickled.
        return {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        running = [t for t in trials if t.status == "RUNNING"]
        if self.removed or len(running) < 2 or not all(_midway(t) for t in running):
            return
        for t in running:
            path = Path(t.checkpoint.path) / "metrics.json"
            self.checkpoints[t.config["trial_id"]] = json.loads(path.read_text())["history"]
        self.cluster.remove_node(self.node)
        self.removed = True

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.recovered.append(trial.config["trial_id"])


def _midway(trial) -> bool:
    epoch = (trial.last_result or {}).get("epoch", 0)
    return trial.checkpoint is not None and 1 <= epoch <= trial.config["n_epochs"] - 2


def _scenario(space: str, storage: str, facts_file: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from caetune.search import SearchSettings, run_search

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        remover = RemoveNodeMidway(cluster, workers[1])
        settings = SearchSettings(
            space=space,
            storage=storage,
            name="exp",
            num_samples=NUM_SAMPLES,
            max_concurrent=2,
            grace_period=10,  # no ASHA stops: every trial runs all its epochs
            seed=2,
            util_images=16,
            confirm_seeds=0,
            report=False,
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


if __name__ == "__main__":
    start = time.monotonic()
    _scenario(*sys.argv[1:4])
    print(f"scenario done in {time.monotonic() - start:.0f} s")
