"""``caetune export``: layout, checksums, retraining, loading, S3, bad input, secrets.

Most tests read a small run folder written here the way ``caetune search``
writes one (:mod:`caetune._runs`): tiny CAEs trained for real on 60
vendored MNIST digits. One slow test exports from a real ``caetune search``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import caetune
from caetune import InputError
from caetune._export import RTOL_OTHER_MACHINE, RTOL_SAME_MACHINE
from caetune.cli import main
from caetune.models import CAE, TrainConfig, Trainer, build_model, load_data
from caetune.search import export_run, load_exported, verify_export
from tests._helpers import write_space
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (pytest fixtures)

REPO = Path(__file__).resolve().parents[2]
BASE = dict(
    dataset="mnist-10k", subset=60, n_maps=4, n_epochs=2, batch_size=16, seed=0, device="cpu"
)
# trial id -> (status, config overrides, epochs actually trained)
TRIALS = {
    "t0000": ("complete", dict(n_neurons=8, lr=1e-3), 2),
    "t0001": ("complete", dict(n_neurons=32, lr=3e-3), 2),
    "t0002": ("pruned", dict(n_neurons=64, lr=1e-3), 1),
    "t0003": ("failed", dict(n_neurons=16, lr=1e-2), 0),
}
FAKE_KEY_ID = "AKIAFAKEFAKEFAKE1234"
FAKE_SECRET = "fakeSecretKey/0123456789abcdefghijklmnopqr"


def write_run(root: Path) -> Path:
    """Trains the TRIALS and lays them out as a search run; returns the run folder."""
    run = root / "tiny"
    rows = []
    for trial_id, (status, overrides, epochs) in TRIALS.items():
        row = {
            "trial_id": trial_id,
            "status": status,
            "error": None,
            **overrides,
            "n_epochs": BASE["n_epochs"],
        }
        if status != "failed":
            config = TrainConfig(**BASE, **overrides)
            trainer = Trainer(config, load_data(config))
            for _ in range(epochs):
                trainer.run_epoch()
            folder = run / "trials" / trial_id
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text(config.to_yaml())
            trainer.save_checkpoint(folder / "model.pt")
            history = [m.to_dict() for m in trainer.history]
            (folder / "metrics.json").write_text(
                json.dumps({"history": history, "val_mse": history[-1]["val_mse"]})
            )
            val = history[-1]["val_mse"]
            row.update(
                val_mse=val,
                best_val_mse=min(h["val_mse"] for h in history),
                objective=val,
                epochs_run=epochs,
            )
        rows.append(row)
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    experiment = {
        "name": "tiny",
        "objective": {
            "objective": "mse",
            "utilisation_weight": 0.0,
            "formula": "objective = val_mse",
        },
        "dataset": {"name": "mnist-10k", "channels": 1, "image_size": [28, 28]},
    }
    (run / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the run a test may damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "runcopy"))


def ranked(run: Path) -> list[str]:
    """Complete trials by objective, computed independently of the exporter."""
    frame = pd.read_csv(run / "results.csv", dtype={"trial_id": str})
    return list(frame[frame["status"] == "complete"].sort_values("objective")["trial_id"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exit_code(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the exported config -------------------------------------------------------------


def test_train_config_ignores_the_export_section(tmp_path):
    config = TrainConfig(**BASE, n_neurons=8)
    path = tmp_path / "c.yaml"
    path.write_text(
        config.to_yaml() + "export:\n  caetune_version: 0.1.0\n  metrics: {val_mse: 0.1}\n"
    )
    assert TrainConfig.from_yaml(path) == config
    path.write_text(
        config.to_yaml() + "export: 3\n"
    )  # not a mapping: not metadata, an unknown field
    with pytest.raises(InputError, match="export"):
        TrainConfig.from_yaml(path)
    path.write_text(config.to_yaml() + "exported: {}\n")
    with pytest.raises(InputError, match="unknown field"):
        TrainConfig.from_yaml(path)


def test_export_top_k_layout_config_weights_and_manifest(tiny_run, tmp_path, capsys):
    dest = tmp_path / "exports" / "tiny"
    assert main(["export", str(tiny_run), "--top-k", "2", "--to", str(dest)]) == 0
    out = capsys.readouterr().out
    best, second = ranked(tiny_run)
    assert f"1. {best}" in out and "caetune train --config" in out
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"1-{best}", f"2-{second}", "manifest.json"]
    )

    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["k"] == 2 and manifest["caetune_version"] == caetune.__version__
    assert [t["trial_id"] for t in manifest["trials"]] == [best, second]
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert set(manifest["files"]) == files
    for rel, entry in manifest["files"].items():
        assert entry == {"sha256": sha256(dest / rel), "size": (dest / rel).stat().st_size}

    for rank, trial_id in enumerate([best, second], 1):
        folder = dest / f"{rank}-{trial_id}"
        doc = yaml.safe_load((folder / "config.yaml").read_text())
        meta = doc.pop("export")
        checkpoint = torch.load(tiny_run / "trials" / trial_id / "model.pt", weights_only=False)
        # The trial's config, with precision: auto resolved to what it trained in (issue 15).
        trained = TrainConfig.from_yaml(
            tiny_run / "trials" / trial_id / "config.yaml", precision=checkpoint["precision"]
        )
        assert doc["precision"] == checkpoint["precision"] in ("fp32", "bf16")
        assert TrainConfig.from_dict(doc) == trained
        assert meta["caetune_version"] == caetune.__version__ and meta["trial_id"] == trial_id
        assert meta["metrics"]["val_mse"] == checkpoint["history"][-1]["val_mse"]
        assert meta["objective"]["objective"] == "mse" and meta["input_shape"] == [1, 28, 28]
        assert meta["weights"]["sha256"] == sha256(folder / "model.pt")
        # Plain weights: loadable without unpickling objects, and no optimizer state.
        weights = torch.load(folder / "model.pt", weights_only=True)
        assert set(weights) == set(checkpoint["model"])
        assert all(torch.equal(weights[k], checkpoint["model"][k]) for k in weights)
    assert verify_export(dest)["k"] == 2


def test_load_exported_rebuilds_the_trained_model(tiny_run, tmp_path):
    dest = tmp_path / "ex"
    export_run(tiny_run, top=2, to=dest)
    best, second = ranked(tiny_run)

    model = load_exported(dest)  # the README's three lines, minus the import
    assert isinstance(model, CAE) and not model.training
    config = TrainConfig.from_yaml(dest / f"1-{best}" / "config.yaml")
    trainer = Trainer(config, load_data(config))
    trainer.model = model
    exported = yaml.safe_load((dest / f"1-{best}" / "config.yaml").read_text())["export"][
        "metrics"
    ]["val_mse"]
    assert trainer.evaluate() == pytest.approx(exported, rel=1e-6)

    by_rank = load_exported(dest, rank=2).state_dict()
    by_folder = load_exported(dest / f"2-{second}").state_dict()
    assert all(torch.equal(by_rank[k], by_folder[k]) for k in by_rank)
    with pytest.raises(InputError, match="rank"):
        load_exported(dest, rank=3)

    weights = dest / f"1-{best}" / "model.pt"
    state = torch.load(weights, weights_only=True)
    state["to_bottleneck.1.bias"] += 1.0
    torch.save(state, weights)  # a tampered or damaged file
    with pytest.raises(InputError, match="sha256"):
        load_exported(dest)
    with pytest.raises(InputError, match="differs from the manifest"):
        verify_export(dest)


def retrain(config: Path, out: Path, **env: str) -> float:
    """``caetune train --config``; in a fresh process when ``env`` is given. Returns the val_mse."""
    if env:
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **env}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "caetune.cli",
                "train",
                "--config",
                str(config),
                "--out",
                str(out),
            ],
            check=True,
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=300,
        )
    else:
        assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())["val_mse"]


def test_retraining_an_exported_config_lands_within_the_stated_tolerance(tiny_run, tmp_path):
    dest = tmp_path / "ex"
    result = export_run(tiny_run, top=1, to=dest)
    config = dest / result.trials[0].folder / "config.yaml"
    exported = yaml.safe_load(config.read_text())["export"]["reproduce"]["val_mse"]

    same_machine = retrain(config, tmp_path / "again")
    assert same_machine == pytest.approx(exported, rel=RTOL_SAME_MACHINE, abs=0)
    # Another machine, emulated: generic ATen kernels and oneDNN held to SSE4.1 round differently.
    other = retrain(
        config, tmp_path / "other", ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41"
    )
    assert other == pytest.approx(exported, rel=RTOL_OTHER_MACHINE, abs=0)


def test_confirmed_ranking_comes_first(run_copy, tmp_path):
    best, second = ranked(run_copy)
    # The search's seed confirmation found the single-seed runner-up better on average.
    confirm = pd.DataFrame(
        [
            {
                "rank": 1,
                "trial_id": second,
                "seeds": "0 1 2",
                "n_seeds": 3,
                "objective_mean": 0.1,
                "val_mse_mean": 0.1,
            }
        ]
    )
    confirm.to_csv(run_copy / "confirm.csv", index=False)
    result = export_run(run_copy, top=2, to=tmp_path / "ex")
    assert [t.trial_id for t in result.trials] == [second, best]
    assert (
        "confirm.csv" in result.trials[0].ranked_by and "results.csv" in result.trials[1].ranked_by
    )
    meta = yaml.safe_load((tmp_path / "ex" / f"1-{second}" / "config.yaml").read_text())["export"]
    assert meta["confirm"]["n_seeds"] == 3 and meta["confirm"]["seeds"] == "0 1 2"


def test_an_earlier_export_is_replaced_whole(tiny_run, tmp_path):
    dest = tmp_path / "ex"
    export_run(tiny_run, top=2, to=dest)
    export_run(tiny_run, top=1, to=dest)
    best = ranked(tiny_run)[0]
    assert sorted(p.name for p in dest.iterdir()) == [f"1-{best}", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == [
        "ex"
    ]  # no staging or old folders left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask  # as mkdir would have made it
    assert verify_export(dest)["k"] == 1


# -- bad input: one line, exit 2, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    "top, expected",
    [
        ("0", "--top-k: expected an integer K >= 1"),
        ("3", "has only 2 finished trials, cannot export 3"),
    ],
)
def test_bad_k(tiny_run, tmp_path, capsys, top, expected):
    code, err = exit_code(
        ["export", str(tiny_run), "--top-k", top, "--to", str(tmp_path / "ex")], capsys
    )
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "ex").exists()


def test_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for run in (tmp_path / "empty", tmp_path / "missing"):
        code, err = exit_code(["export", str(run), "--to", str(tmp_path / "ex")], capsys)
        assert code == 2 and err.startswith("caetune export: error: RUN:") and err.count("\n") == 1
    assert listing(tmp_path) == ["empty"]


def test_unwritable_destinations(tiny_run, tmp_path, capsys):
    (tmp_path / "file").write_text("in the way")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    before = listing(tmp_path)
    for dest, expected in (
        (tmp_path / "file", "exists and is not a folder"),
        (tmp_path / "file" / "below", "is not a folder"),
        (tmp_path / "full", "holds other files"),
        ("/sys/caetune-export", "cannot write to /sys/caetune-export"),
    ):
        code, err = exit_code(["export", str(tiny_run), "--to", str(dest)], capsys)
        assert code == 2 and err.startswith("caetune export: error: --to:") and expected in err, err
        assert err.count("\n") == 1
    assert (
        listing(tmp_path) == before and (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    )


def test_a_broken_trial_stops_the_export_before_writing(run_copy, tmp_path, capsys):
    second = ranked(run_copy)[1]
    (run_copy / "trials" / second / "model.pt").unlink()
    code, err = exit_code(
        ["export", str(run_copy), "--top-k", "2", "--to", str(tmp_path / "ex")], capsys
    )
    assert code == 2 and f"trials/{second}" in err and "model.pt is missing" in err
    assert not (tmp_path / "ex").exists()

    # Weights that do not fit the config they would be exported with.
    config = TrainConfig.from_yaml(run_copy / "trials" / ranked(run_copy)[0] / "config.yaml")
    other = build_model(
        TrainConfig(**{**config.to_dict(), "n_neurons": 5}), in_channels=1, image_size=(28, 28)
    )
    checkpoint = run_copy / "trials" / ranked(run_copy)[0] / "model.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = other.state_dict()
    torch.save(state, checkpoint)
    code, err = exit_code(["export", str(run_copy), "--to", str(tmp_path / "ex")], capsys)
    assert code == 2 and "does not fit config.yaml" in err and not (tmp_path / "ex").exists()


# -- secrets ---------------------------------------------------------------------------------


def s3_files(server, bucket: str, prefix: str) -> list[str]:
    """Object keys, less pyarrow's empty folder markers (``prefix/``)."""
    return [key for key in server.keys(bucket, prefix) if not key.endswith("/")]


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_credential_reaches_an_export(tiny_run, tmp_path, s3_env, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("CAETUNE_TEST_API_TOKEN", "tok-0123456789abcdef")
    bucket = s3_env.create_bucket()
    local = tmp_path / "ex"
    export_run(tiny_run, top=2, to=local)
    export_run(tiny_run, top=2, to=f"s3://{bucket}/ex")
    from caetune._storage import download_dir, parse_storage

    download_dir(parse_storage(f"s3://{bucket}/ex"), "", tmp_path / "from-s3")
    for folder in (local, tmp_path / "from-s3"):
        blob = all_bytes(folder)
        assert blob and FAKE_KEY_ID.encode() not in blob and FAKE_SECRET.encode() not in blob
        assert b"tok-0123456789abcdef" not in blob and not re.search(rb"AKIA[A-Z0-9]{16}", blob)

    # A destination URL carrying credentials is refused without echoing them.
    code, err = exit_code(
        ["export", str(tiny_run), "--to", f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{bucket}/x"], capsys
    )
    assert code == 2 and FAKE_SECRET not in err and FAKE_KEY_ID not in err


@pytest.mark.parametrize(
    "data_dir, what",
    [
        ("https://reader:hunter2hunter2@data.example.com/mnist", "a URL with a password"),
        (f"/data/{FAKE_KEY_ID}", "an AWS access key id"),
        ("/data/tok-0123456789abcdef", "the value of $CAETUNE_TEST_API_TOKEN"),
    ],
)
def test_a_trial_config_holding_a_credential_is_refused(
    run_copy, tmp_path, capsys, monkeypatch, data_dir, what
):
    monkeypatch.setenv("CAETUNE_TEST_API_TOKEN", "tok-0123456789abcdef")
    best = ranked(run_copy)[0]
    for name in ("config.yaml", "model.pt"):  # both, or the exporter rightly finds them disagreeing
        path = run_copy / "trials" / best / name
        if name == "config.yaml":
            doc = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump({**doc, "data_dir": data_dir}, sort_keys=False))
        else:
            state = torch.load(path, weights_only=False)
            state["config"]["data_dir"] = data_dir
            torch.save(state, path)
    code, err = exit_code(["export", str(run_copy), "--to", str(tmp_path / "ex")], capsys)
    assert code == 2 and what in err and "nothing was exported" in err
    assert "hunter2" not in err and "tok-0123" not in err
    assert not (tmp_path / "ex").exists()


# -- S3 ----------------------------------------------------------------------------------------


def test_s3_destination_and_source(tiny_run, tmp_path, s3_bucket, s3_env, capsys):
    url = f"s3://{s3_bucket}/exports/tiny"
    export_run(tiny_run, top=2, to=url)
    manifest = verify_export(url)
    expected = sorted(f"exports/tiny/{k}" for k in [*manifest["files"], "manifest.json"])
    assert s3_files(s3_env, s3_bucket, "exports/") == expected
    local_model = load_exported(url)
    assert local_model.shape.image_size == (28, 28)

    export_run(tiny_run, top=1, to=url)  # the earlier export's second trial goes, folder and all
    best, second = ranked(tiny_run)
    expected = [
        f"exports/tiny/1-{best}/config.yaml",
        f"exports/tiny/1-{best}/model.pt",
        "exports/tiny/manifest.json",
    ]
    assert s3_files(s3_env, s3_bucket, "exports/") == expected
    assert not any(
        key.startswith(f"exports/tiny/2-{second}") for key in s3_env.keys(s3_bucket, "exports/")
    )

    # The run itself on S3, exported to a local folder.
    for path in sorted(p for p in tiny_run.rglob("*") if p.is_file()):
        s3_env.client().upload_file(
            str(path), s3_bucket, f"runs/tiny/{path.relative_to(tiny_run).as_posix()}"
        )
    result = export_run(f"s3://{s3_bucket}/runs/tiny", top=1, to=tmp_path / "ex")
    assert result.trials[0].trial_id == best
    same = load_exported(tmp_path / "ex").state_dict()
    assert all(torch.equal(same[k], v) for k, v in local_model.state_dict().items())

    missing = f"s3://{s3_bucket}-missing/x"
    code, err = exit_code(["export", str(tiny_run), "--to", missing], capsys)
    assert (
        code == 2
        and "--to: cannot reach" in err
        and "no such bucket" in err
        and err.count("\n") == 1
    )
    assert s3_env.keys(s3_bucket, "other/") == []


# -- from a real search ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", ["0", "1"])  # any --seed: trials split with split_seed, not seed
def test_export_of_a_real_search_retrains_within_tolerance(tmp_path, seed):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the search trains with --cpus-per-trial 1
    # The fault tests' tiny space (Nn <= 32) on 120 digits: the default space's start point (about
    # 28 M weights) cost over a minute per search and retrain and tested nothing more here.
    space = write_space(tmp_path, subset=120, epochs=(1, 2))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "caetune.cli",
            "search",
            "--space",
            str(space),
            "--max-epochs",
            "2",
            "--num-samples",
            "2",
            "--seed",
            seed,
            "--confirm-seeds",
            "0",
            "--no-report",
            "--run-root",
            str(tmp_path / "runs"),
            "--name",
            "tiny",
        ],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )
    result = export_run(tmp_path / "runs" / "tiny", top=1, to=tmp_path / "ex")
    config = tmp_path / "ex" / result.trials[0].folder / "config.yaml"
    again = retrain(
        config, tmp_path / "again", OMP_NUM_THREADS="1"
    )  # a fresh process, as the trial had
    assert again == pytest.approx(result.trials[0].val_mse, rel=RTOL_SAME_MACHINE, abs=0)


def test_the_old_top_flag_still_works_with_one_deprecation_line(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--top", "1", "--to", str(tmp_path / "ex")]) == 0
    assert capsys.readouterr().err == "caetune export: warning: --top is deprecated; use --top-k\n"
    code, err = exit_code(
        ["export", str(tiny_run), "--top", "0", "--to", str(tmp_path / "ex2")], capsys
    )
    # Errors name the flag as it was typed.
    assert code == 2 and err.count("\n") == 2
    assert "caetune export: error: --top: expected an integer K >= 1" in err
    assert not (tmp_path / "ex2").exists()
