"""caetune.search._compat: the Ray and Optuna internals caetune relies on, there and unchanged.

Fast, with no Ray cluster: each test fails naming the internal when a Ray or
Optuna release moved it or changed what it does. The two security patches
(a local Ray on 127.0.0.1 only, no AWS keys in a trial's runtime env) are
checked here by what they achieve, besides the end-to-end tests in
tests/faults/test_security.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from caetune.search import _compat
from caetune.search._asha import AshaSettings
from caetune.search._compat import FrameworkChanged

ROOT = Path(__file__).resolve().parents[2]
AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00",
    "AWS_SECRET_ACCESS_KEY": "compat-test-secret",
    "AWS_SESSION_TOKEN": "compat-test-token",
}


# -- a local Ray on 127.0.0.1 only ---------------------------------------------------------


def test_a_local_ray_takes_the_loopback_address_in_this_process_and_its_children():
    # A fresh interpreter: this one may hold a Ray started by another test. Ray's Node asks
    # get_node_ip_address for the address a new local node's GCS, raylet and agents bind to.
    script = textwrap.dedent(
        """
        import subprocess, sys
        from caetune.search._compat import bind_local_ray_to_loopback
        bind_local_ray_to_loopback()
        from ray._private import services
        print(services.get_node_ip_address())
        # A process Ray starts sees only the environment variable.
        child = "from ray._private import services; print(services.get_node_ip_address())"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             check=True).stdout.strip())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE_WINDOWS")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["127.0.0.1", "127.0.0.1"], (
        f"{_compat.LOOPBACK_FLAG} / {_compat.LOOPBACK_ENV} no longer put a local Ray on "
        f"127.0.0.1: {done.stdout!r}"
    )


@pytest.mark.parametrize("name", ["ENABLE_RAY_CLUSTERS_ENV_VAR", "ENABLE_RAY_CLUSTER"])
def test_a_missing_loopback_switch_is_named(monkeypatch, name):
    from ray._private import ray_constants

    monkeypatch.delattr(ray_constants, name)
    with pytest.raises(FrameworkChanged, match=rf"ray\._private\.ray_constants\.{name}: is gone"):
        _compat.bind_local_ray_to_loopback()


# -- no AWS keys in a trial's runtime env -------------------------------------------------


def _trial_env_vars(monkeypatch) -> dict:
    """The ``env_vars`` of the runtime env Ray Tune gives a trial actor, built as Tune builds it."""
    from ray.tune.execution import class_cache, tune_controller

    # Tune makes trial actors through this cache: the propagation caetune patches happens there.
    assert tune_controller._ActorClassCache is class_cache._ActorClassCache, (
        f"Ray Tune makes trial actors elsewhere than the cache reading {_compat.PROPAGATED_ENV}"
    )
    seen: dict = {}

    def remote(**options):
        seen.update(options)
        return lambda cls: cls

    monkeypatch.setattr(class_cache.ray, "remote", remote)
    class_cache._ActorClassCache().get(type("Trainable", (), {}))
    return dict(seen["runtime_env"]["env_vars"])


def _pristine_propagation() -> set[str]:
    """Ray Tune's ENV_VARS_TO_PROPAGATE in a process that caetune has not patched."""
    code = (
        "import json; from ray.tune.execution import class_cache; "
        "print(json.dumps(sorted(class_cache.ENV_VARS_TO_PROPAGATE)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_aws_keys_stay_out_of_a_trials_runtime_env(monkeypatch):
    from ray.tune.execution import class_cache

    # Ray's own set, as a fresh process has it: an in-process search earlier in the session has
    # already patched this module global. Restored after the test.
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", _pristine_propagation())
    for key, value in AWS_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", "kept")  # propagated by Ray, and still
    propagated = {k for k in class_cache.ENV_VARS_TO_PROPAGATE if k.startswith("AWS_")}
    before = _trial_env_vars(monkeypatch)
    # Without the patch Tune copies the keys: the constant is what decides.
    assert propagated and set(AWS_KEYS) & set(before), (
        f"Ray Tune no longer propagates AWS keys through {_compat.PROPAGATED_ENV}: "
        "check where it does now"
    )
    _compat.keep_aws_keys_from_trials()
    after = _trial_env_vars(monkeypatch)
    assert not [k for k in after if k.startswith("AWS_")], (
        f"AWS keys reach a trial's runtime env despite the patch of {_compat.PROPAGATED_ENV}"
    )
    assert not {v for v in after.values() if v in AWS_KEYS.values()}
    assert {k: v for k, v in before.items() if not k.startswith("AWS_")} == after


def test_a_missing_propagation_set_is_named(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.delattr(class_cache, "ENV_VARS_TO_PROPAGATE")
    with pytest.raises(FrameworkChanged, match=r"class_cache\.ENV_VARS_TO_PROPAGATE: is gone"):
        _compat.keep_aws_keys_from_trials()
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", ("AWS_ACCESS_KEY_ID",), raising=False)
    with pytest.raises(FrameworkChanged, match=r"ENV_VARS_TO_PROPAGATE: is a tuple"):
        _compat.keep_aws_keys_from_trials()


# -- a Tune trial's results and folder ---------------------------------------------------


def _tune_trial(tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(
        storage_path=str(tmp_path), experiment_dir_name="tune", trial_dir_name="t0001-abc"
    )
    return Trial("caetune_compat_test", stub=True, storage=storage)


def test_forgetting_a_trials_results_empties_what_tune_keeps(tmp_path):
    trial = _tune_trial(tmp_path)
    for epoch in (1, 2, 3):
        trial.update_last_result(
            {"epoch": epoch, "objective": 1.0 / epoch, "big": list(range(100)), "trial_id": "x"}
        )
    assert trial.run_metadata.metric_analysis  # what Tune keeps, so what there is to drop
    size = len(trial.run_metadata.get_json_state())
    _compat.forget_trial_results(trial, keep={"epoch", "objective", "trial_id"})
    assert trial.last_result == {"epoch": 3, "objective": 1.0 / 3, "trial_id": "x"}
    # Tune's snapshot of the trial is written from this JSON: it must be rebuilt, smaller.
    state = trial.run_metadata.get_json_state()
    assert len(state) < size and '"big"' not in state and "last-5-avg" not in state


def test_a_trial_keeping_its_results_elsewhere_is_named(tmp_path):
    with pytest.raises(FrameworkChanged, match=r"Trial\.run_metadata: is gone"):
        _compat.forget_trial_results(SimpleNamespace(), keep=())
    trial = _tune_trial(tmp_path)
    trial.run_metadata.metric_n_steps = None
    with pytest.raises(FrameworkChanged, match=r"run_metadata\.metric_n_steps: is gone or no"):
        _compat.forget_trial_results(trial, keep=())


def test_a_trials_folder_is_its_folder_in_the_experiment(tmp_path):
    trial = _tune_trial(tmp_path)
    # The recorder looks for a trial's checkpoint_* folders beside it, in RUN/tune/.
    assert _compat.trial_folder(trial) == f"{tmp_path}/tune/t0001-abc"
    with pytest.raises(FrameworkChanged, match=r"Trial\.path: is gone"):
        _compat.trial_folder(SimpleNamespace())


# -- ASHA's rungs ------------------------------------------------------------------------------

ASHA_CASES = [
    (1, 2.0, 20),
    (1, 3.0, 20),
    (1, 3.0, 6),
    (1, 4.0, 6),
    (2, 2.5, 30),
    (1, 2.0, 16),
    (3, 2.0, 3),
    (1, 1.5, 9),
    (10, 3.0, 6),
]


def _epochs_ray_stops_at(asha: AshaSettings) -> set[int]:
    """The epochs at which Ray's scheduler stops a trial that turns bad, through its public API.

    One trial reports a good objective every epoch; then, for each epoch ``e``,
    a trial is good before ``e`` and bad from ``e`` on: ASHA stops it at the
    first rung it is judged at on or after ``e`` (or at ``max_t``).
    """
    from ray.tune.schedulers import TrialScheduler

    scheduler = asha.scheduler(metric="objective")
    good = SimpleNamespace(trial_id="good")
    scheduler.on_trial_add(None, good)
    for epoch in range(1, asha.max_t + 1):
        scheduler.on_trial_result(None, good, {"epoch": epoch, "objective": 0.0})
    stopped = set()
    for turn in range(1, asha.max_t + 1):
        trial = SimpleNamespace(trial_id=f"bad-from-{turn}")
        scheduler.on_trial_add(None, trial)
        for epoch in range(1, asha.max_t + 1):
            result = {"epoch": epoch, "objective": 0.0 if epoch < turn else 1.0}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                stopped.add(epoch)
                break
    return stopped


@pytest.mark.parametrize(("grace", "rf", "max_t"), ASHA_CASES)
def test_the_rung_formula_is_where_rays_asha_stops_trials(grace, rf, max_t):
    asha = AshaSettings(grace_period=grace, reduction_factor=rf, max_t=max_t)
    assert set(asha.rungs()) == _epochs_ray_stops_at(asha), (
        f"{_compat.ASHA_RUNGS} moved: Ray's ASHA now judges at other epochs than "
        f"{asha.rungs()} (grace {grace}, reduction factor {rf}, max_t {max_t})"
    )


# -- Optuna: a Trial for a trial number -------------------------------------------------------


def test_a_trial_handle_of_a_resumed_study_writes_to_that_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="s", storage=url)
    for _ in range(3):
        first.ask()
    other = optuna.create_study(study_name="other", storage=url)  # ids differ from numbers
    other.ask()
    study = optuna.load_study(study_name="s", storage=url)  # a later session
    assert isinstance(_compat.study_storage(study), optuna.storages.BaseStorage)
    handle = _compat.trial_handle(study, 1)
    handle.report(0.5, 2)
    handle.set_user_attr("trial_id", "t0002")
    study.tell(1, 0.25)
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trials[1].intermediate_values == {2: 0.5}
    assert trials[1].user_attrs == {"trial_id": "t0002"} and trials[1].value == 0.25
    assert not trials[0].user_attrs and not trials[2].intermediate_values


def test_a_study_keeping_its_storage_elsewhere_is_named():
    study = optuna.create_study()
    del study._storage
    with pytest.raises(FrameworkChanged, match=r"optuna\.study\.Study\._storage: is gone"):
        _compat.trial_handle(study, 0)
    study._storage = "sqlite:///x.db"
    with pytest.raises(FrameworkChanged, match=r"Study\._storage: is a str, not a BaseStorage"):
        _compat.study_storage(study)


# -- elsewhere in caetune ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    # caetune._cluster.connect turns these loggers down by name (the job SDK's chatter)
    [
        "ray._private.runtime_env.packaging",
        "ray.dashboard.modules.job.sdk",
        "ray.dashboard.modules.dashboard_sdk",
    ],
)
def test_the_ray_loggers_caetune_quiets_exist(module):
    import importlib
    import logging

    loaded = importlib.import_module(module)
    loggers = {v.name for v in vars(loaded).values() if isinstance(v, logging.Logger)}
    assert module in loggers, f"{module} no longer logs under its own name: {sorted(loggers)}"


def test_the_installed_ray_and_optuna_are_within_pyprojects_caps():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    capped = {Requirement(d).name: Requirement(d) for d in dependencies}
    for name in ("ray", "optuna"):
        spec = capped[name].specifier
        assert any(s.operator == "<" for s in spec), f"pyproject.toml does not cap {name}: {spec}"
        assert spec.contains(version(name)), (
            f"{name} {version(name)} is outside pyproject.toml's {spec}: run these tests on it, "
            "then move the cap"
        )
