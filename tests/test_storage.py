"""caetune._storage against a local folder and a real S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from caetune import InputError
from caetune._storage import (
    download_dir,
    exists,
    parse_storage,
    read_bytes,
    sync_file_to,
    upload_file,
    write_bytes,
)
from caetune._study import StudySync, sqlite_snapshot
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

FAST = 10.0  # seconds within which an unusable storage must be reported


# --- parsing ------------------------------------------------------------------


def test_parse_local_paths_are_absolute_and_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rel = parse_storage("runs/x/")
    assert not rel.is_s3 and rel.bucket is None
    assert rel.local_path == tmp_path.resolve() / "runs" / "x"
    assert rel.url == rel.fs_path == str(rel.local_path)
    assert parse_storage("~/r").local_path == (tmp_path / "home" / "r").resolve()
    assert (
        parse_storage("a/../b").local_path == tmp_path.resolve() / "b"
    )  # local '..' is just a path
    assert parse_storage(tmp_path / "p").local_path == tmp_path.resolve() / "p"


@pytest.mark.parametrize(
    "url, bucket, prefix",
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my.bucket.1/runs/2024/", "my.bucket.1", "runs/2024"),
        ("S3://abc/x", "abc", "x"),
    ],
)
def test_parse_s3(url, bucket, prefix):
    storage = parse_storage(url)
    assert storage.is_s3 and storage.local_path is None
    assert (storage.bucket, storage.prefix) == (bucket, prefix)
    assert storage.url == (f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
    assert storage.fs_path == (f"{bucket}/{prefix}" if prefix else bucket)
    assert parse_storage(storage.url) == storage


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "gs://bucket/x",
        "http://example.com/x",
        "file:///tmp/x",
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://Upper/x",
        "s3://-bucket/x",
        "s3://bu..cket/x",
        "s3://bucket/../x",
        "s3://bucket/a/../../b",
        "s3://bucket/a/./b",
        "s3://bucket/a//b",
        "s3://bucket/x?versionId=1",
        "s3://bucket/x#frag",
    ],
)
def test_parse_rejects(url):
    with pytest.raises(InputError) as err:
        parse_storage(url, field="storage")
    assert err.value.field == "storage"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url", ["s3://AKIAEXAMPLE:wJalrSECRET@bucket/x", "s3://AKIAEXAMPLE:wJal/rSECRET@bucket/x"]
)
def test_parse_never_echoes_credentials_in_url(url):
    # AWS secret keys may hold '/', which moves the '@' out of the URL's netloc.
    with pytest.raises(InputError) as err:
        parse_storage(url)
    assert "SECRET" not in str(err.value) and "AKIA" not in str(err.value)
    assert "without credentials" in str(err.value)


def test_join_and_child_stay_inside():
    s3 = parse_storage("s3://bucket/pre")
    assert s3.join("run", "trials/1/config.yaml") == "bucket/pre/run/trials/1/config.yaml"
    assert s3.join() == "bucket/pre"
    assert s3.child("run", "trials").url == "s3://bucket/pre/run/trials"
    assert parse_storage("s3://bucket").child("run").prefix == "run"
    local = parse_storage("/tmp/st")
    assert local.child("run").local_path == Path("/tmp/st/run")
    assert local.join("run", "x.csv") == "/tmp/st/run/x.csv"
    for bad in ("..", "a/../../b", "/etc/passwd"):
        with pytest.raises(InputError):
            s3.join(bad)
        with pytest.raises(InputError):
            local.child(bad)


# --- local files ----------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_local_write_read_exists(tmp_path):
    storage = parse_storage(tmp_path / "store")
    assert not exists(storage, "run/results.csv")
    write_bytes(storage, "run/results.csv", b"a,b\n1,2\n")
    assert read_bytes(storage, "run/results.csv") == b"a,b\n1,2\n"
    write_bytes(storage, "run/results.csv", b"a,b\n")
    assert (tmp_path / "store" / "run" / "results.csv").read_bytes() == b"a,b\n"
    assert exists(storage, "run") and exists(storage, "run/results.csv")
    assert _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        read_bytes(storage, "run/missing.csv")
    with pytest.raises(FileNotFoundError):
        read_bytes(storage, "run")  # a folder is not a file


def test_local_write_failing_midway_keeps_old_content(tmp_path, monkeypatch):
    storage = parse_storage(tmp_path)
    write_bytes(storage, "results.csv", b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    # The new bytes are already in the temporary file when fsync fails.
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_bytes(storage, "results.csv", b"new content")
    monkeypatch.undo()
    assert read_bytes(storage, "results.csv") == b"old"
    assert _leftovers(tmp_path) == []


def test_local_upload_sync_and_download(tmp_path):
    storage = parse_storage(tmp_path / "store")
    source = tmp_path / "model.pt"
    source.write_bytes(bytes(range(256)) * 100)
    upload_file(storage, source, "run/trials/1/model.pt")
    assert (tmp_path / "store/run/trials/1/model.pt").read_bytes() == source.read_bytes()

    in_place = tmp_path / "store" / "run" / "results.csv"
    in_place.write_bytes(b"x\n")
    assert sync_file_to(in_place, storage, "run/results.csv") is False  # already there
    assert sync_file_to(source, storage, "run/copy.pt") is True
    assert read_bytes(storage, "run/copy.pt") == source.read_bytes()

    write_bytes(storage, "run/trials/1/metrics.json", b"{}")
    write_bytes(storage, "run/trials/2/metrics.json", b"{}")
    got = download_dir(
        storage, "run", tmp_path / "down", include=["trials/*/metrics.json", "results.csv"]
    )
    assert [p.relative_to(tmp_path / "down").as_posix() for p in got] == [
        "results.csv",
        "trials/1/metrics.json",
        "trials/2/metrics.json",
    ]
    assert download_dir(storage, "nothing-here", tmp_path / "none") == []


def test_local_check_reachable(tmp_path):
    parse_storage(tmp_path / "new" / "deeper").check_reachable()  # missing folders are fine
    assert not (tmp_path / "new").exists()  # ...and are not created by the check
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        parse_storage(tmp_path / "file" / "sub").check_reachable()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_local_check_reachable_read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            parse_storage(folder / "runs").check_reachable()
    finally:
        folder.chmod(0o700)


# --- S3 (moto server) -------------------------------------------------------------


def test_s3_round_trip(s3_bucket, s3_env, tmp_path):
    storage = parse_storage(f"s3://{s3_bucket}/runs")
    fs = storage.filesystem()
    assert fs.type_name == "s3"
    storage.check_reachable()

    assert not exists(storage, "exp/results.csv")
    write_bytes(storage, "exp/results.csv", b"trial_id,status\n1,complete\n")
    write_bytes(storage, "exp/trials/1/metrics.json", b'{"val_mse": 0.1}')
    source = tmp_path / "model.pt"
    source.write_bytes(os.urandom(70_000))
    upload_file(storage, source, "exp/trials/1/model.pt")
    assert sync_file_to(source, storage.child("exp"), "trials/1/copy.pt") is True

    # What boto3 sees, independently of pyarrow.
    assert s3_env.keys(s3_bucket) == [
        "runs/exp/results.csv",
        "runs/exp/trials/1/copy.pt",
        "runs/exp/trials/1/metrics.json",
        "runs/exp/trials/1/model.pt",
    ]
    assert read_bytes(storage, "exp/results.csv") == b"trial_id,status\n1,complete\n"
    assert read_bytes(fs, storage.join("exp", "trials/1/model.pt")) == source.read_bytes()
    assert exists(storage, "exp") and exists(storage, "exp/trials/1/metrics.json")
    with pytest.raises(FileNotFoundError):
        read_bytes(storage, "exp/nope.csv")

    got = download_dir(
        storage, "exp", tmp_path / "down", include=["results.csv", "trials/*/model.pt"]
    )
    assert [p.relative_to(tmp_path / "down").as_posix() for p in got] == [
        "results.csv",
        "trials/1/model.pt",
    ]
    assert (tmp_path / "down/trials/1/model.pt").read_bytes() == source.read_bytes()
    assert len(download_dir(storage.child("exp"), "", tmp_path / "all")) == 4


def test_s3_filesystem_reads_endpoint_from_env(s3_bucket, s3_env, monkeypatch):
    storage = parse_storage(f"s3://{s3_bucket}/p")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint_url)  # the S3-specific one wins
    write_bytes(storage, "x.txt", b"x")
    assert s3_env.keys(s3_bucket) == ["p/x.txt"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://127.0.0.1:21")
    with pytest.raises(InputError, match="AWS_ENDPOINT_URL"):
        storage.filesystem()


def test_a_pickled_s3_filesystem_holds_no_credential_and_works_in_a_process_with_its_own(
    s3_bucket, s3_env, monkeypatch
):
    # Ray pickles the run's filesystem into trial configs (checkpoints) and its experiment state.
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPICKLEDFAKEKEY01")  # moto's server takes any keys
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-a-pickle/fake+secret")
    storage = parse_storage(f"s3://{s3_bucket}/p")
    pickled = pickle.dumps(storage.filesystem())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert os.environ[name].encode() not in pickled, name
    write_bytes(storage, "x.txt", b"x")
    with pickle.loads(pickled).open_input_stream(f"{s3_bucket}/p/x.txt") as stream:
        assert stream.read() == b"x"


def test_s3_check_reachable_missing_bucket_is_fast(s3_env):
    start = time.monotonic()
    with pytest.raises(InputError, match="cannot reach s3://no-such-bucket-here: no such bucket"):
        parse_storage("s3://no-such-bucket-here/runs").check_reachable()
    assert time.monotonic() - start < FAST


def test_s3_check_reachable_prefix_is_an_object(s3_bucket, s3_env):
    s3_env.client().put_object(Bucket=s3_bucket, Key="runs", Body=b"x")
    with pytest.raises(InputError, match="is an object"):
        parse_storage(f"s3://{s3_bucket}/runs").check_reachable()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_s3_check_reachable_dead_endpoint_is_fast(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(InputError, match="cannot reach s3://bucket-x: .*connect"):
        parse_storage("s3://bucket-x/runs").check_reachable()
    assert time.monotonic() - start < FAST


def test_s3_check_reachable_silent_endpoint_is_fast(s3_env, monkeypatch):
    # Accepts connections (the kernel's backlog) but never answers a request.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(
            InputError, match="cannot reach s3://bucket-y: .*(Timeout|no answer within 1 s)"
        ):
            parse_storage("s3://bucket-y").check_reachable(timeout=1)
        assert time.monotonic() - start < FAST


def test_s3_check_reachable_without_credentials(s3_bucket, s3_env, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    start = time.monotonic()
    with pytest.raises(InputError, match="no AWS credentials"):
        parse_storage(f"s3://{s3_bucket}").check_reachable()
    assert time.monotonic() - start < FAST


# --- the study on S3 ----------------------------------------------------------------


def _n_trials(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from trials").fetchone()[0]


def _add_trials(url: str, n: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="s", load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def test_study_sync_round_trip(s3_bucket, s3_env, tmp_path):
    storage = parse_storage(f"s3://{s3_bucket}/runs")
    first = StudySync(storage, "exp", cache_dir=tmp_path / "cache-a")
    assert first.local_path == tmp_path / "cache-a" / s3_bucket / "runs" / "exp" / "study.db"
    assert first.pull() is False  # nothing on S3 yet: a fresh study
    _add_trials(first.url, 3)
    assert first.push() is True
    assert s3_env.keys(s3_bucket) == ["runs/exp/study.db"]

    # Another machine (cache) resumes: it gets the pushed study.
    second = StudySync(storage, "exp", cache_dir=tmp_path / "cache-b")
    assert second.pull() is True
    assert _n_trials(second.local_path) == 3
    _add_trials(second.url, 2)
    second.push()

    # The first cache still holds its own older file: S3 now has a newer one.
    assert first.pull() is True
    assert _n_trials(first.local_path) == 5
    # A trial finished locally but killed before its push: the local file is newer and stays.
    _add_trials(first.url, 1)
    first.push()
    _add_trials(first.url, 1)
    assert first.pull() is False
    assert _n_trials(first.local_path) == 7


def test_study_sync_on_local_storage_uses_the_run_folder(tmp_path):
    storage = parse_storage(tmp_path / "store")
    sync = StudySync(storage, "exp", cache_dir=tmp_path / "cache")
    assert sync.local_path == tmp_path / "store" / "exp" / "study.db"
    assert sync.pull() is False and sync.local_path.parent.is_dir()
    _add_trials(sync.url, 1)
    assert sync.push() is False
    assert not (tmp_path / "cache").exists()


def test_sqlite_snapshot_skips_uncommitted_writes(tmp_path):
    db = tmp_path / "live.db"
    writer = sqlite3.connect(db)
    writer.execute("create table t (x)")
    writer.execute("insert into t values (1)")
    writer.commit()
    writer.execute("insert into t values (2)")  # an open transaction
    copy = tmp_path / "copy.db"
    copy.write_bytes(sqlite_snapshot(db))
    writer.rollback()
    writer.close()
    with sqlite3.connect(copy) as conn:
        assert conn.execute("select x from t").fetchall() == [(1,)]
