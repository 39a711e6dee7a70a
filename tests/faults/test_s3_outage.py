"""S3 down for ~20 s in the middle of a search, then back.

moto keeps its objects in memory, so stopping and restarting it would lose
the bucket. Instead the search talks to moto through a small TCP proxy on
127.0.0.1 which, for the outage, closes its listening socket and every open
connection (clients get "connection refused", as from a stopped server), then
listens again on the same port: the data survives, the outage is real to the
client. The search must retry or pause and then finish, and nothing written
half-way may be read back as valid.

Found with it: the search died on the first refused connection (pyarrow's
default of 3 quick attempts); ``caetune._storage`` now retries for ~90 s. Then
a trial failed whenever its worker uploaded a checkpoint during the outage:
pyarrow's pickling drops ``retry_strategy``, and Ray Tune pickles the
filesystem to every worker; caetune's S3 filesystem now pickles its options
instead (``test_a_pickled_filesystem_still_retries`` shows both).
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
import time

import pytest

from caetune._storage import parse_storage, read_bytes
from tests._helpers import (
    check_integrity,
    fault_search,
    finished_files,
    results,
    safe_study,
    started_ids,
    study_trials,
    wait_until,
)
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

OUTAGE_S = 20.0
NUM_SAMPLES = 3


class OutageProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`outage` refuses everything for a while."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    def _serve(self) -> None:
        while not self._closed:
            self._up.wait()
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed for an outage
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def outage(self, seconds: float) -> None:
        """Nothing answers for ``seconds``: no listener, every open connection reset."""
        self.down()
        time.sleep(seconds)
        self.up()

    def down(self) -> None:
        """Stops answering: the listener closed (connections refused), open connections reset."""
        self._up.clear()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self._conns.clear()

    def up(self) -> None:
        """Answers again, on the same port."""
        self._listener = self._listen(self.port)
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


# A fresh process, like a Ray worker: unpickles the filesystem it is given, writes once, waits
# for a line on stdin (the outage has begun), writes again and reports how it went.
_WORKER = """
import os, pickle, sys, time
fs = pickle.loads(open(sys.argv[1], "rb").read())
with fs.open_output_stream(sys.argv[2] + "/before") as out:
    out.write(b"x")
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
try:
    with fs.open_output_stream(sys.argv[2] + "/during") as out:
        out.write(b"y")
except OSError as err:
    print(f"failed after {time.monotonic() - start:.1f} s: {err}", flush=True)
    os._exit(1)  # not sys.exit: pyarrow's S3 teardown at exit may crash after a failed request
print(f"written after {time.monotonic() - start:.1f} s", flush=True)
os._exit(0)
"""
PICKLE_OUTAGE_S = (
    5.0  # longer than pyarrow's default 3 attempts wait, far shorter than caetune's 10
)


def _plain_pyarrow_filesystem(endpoint: str):
    import pyarrow.fs

    from caetune._storage import S3_ATTEMPTS

    retry = pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1", retry_strategy=retry
    )


@pytest.mark.parametrize("kind", ["caetune", "plain pyarrow"])
def test_a_pickled_filesystem_still_retries(kind, s3_bucket, s3_server, monkeypatch, tmp_path):
    """What Ray Tune hands a trial worker must ride out an outage as the driver does.

    The plain pyarrow filesystem, built with the same retry strategy, is the
    control: its pickled copy gives up during the outage (the bug this fixes).
    """
    proxy = OutageProxy(("127.0.0.1", s3_server.port))
    endpoint = f"127.0.0.1:{proxy.port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")
    storage = parse_storage(f"s3://{s3_bucket}/runs")
    fs = storage.filesystem() if kind == "caetune" else _plain_pyarrow_filesystem(endpoint)
    payload = tmp_path / "fs.pickle"
    payload.write_bytes(pickle.dumps(fs))
    env = s3_server.subprocess_env()
    env.pop(
        "AWS_ENDPOINT_URL"
    )  # the worker must get the endpoint from the pickle, not from its environment
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(payload), storage.fs_path],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout.readline().strip() == "ready", worker.communicate(timeout=30)[0]
        proxy.down()
        worker.stdin.write("go\n")
        worker.stdin.flush()
        time.sleep(PICKLE_OUTAGE_S)
        proxy.up()
        output = worker.communicate(timeout=120)[0]
    finally:
        worker.kill()
        proxy.close()
    print(f"\n{kind}: {output.strip()}")
    if kind == "caetune":
        assert worker.returncode == 0 and output.startswith("written after"), output
        assert (
            s3_server.client().get_object(Bucket=s3_bucket, Key="runs/during")["Body"].read()
            == b"y"
        )
    else:
        assert worker.returncode == 1 and output.startswith("failed after"), output


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_20s_s3_outage_mid_search_is_survived(s3_bucket, s3_server, tmp_path):
    proxy = OutageProxy(("127.0.0.1", s3_server.port))
    search = fault_search(
        tmp_path, f"s3://{s3_bucket}/runs", seed=13, num_samples=NUM_SAMPLES, subset=600,
        epochs=(4, 5), base_env=s3_server.subprocess_env(),
    )  # fmt: skip
    search.env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
    run, db = search.run, search.db

    log = tmp_path / "search.log"
    try:
        with search.running(log) as proc:
            # Mid-search: a trial finished, the next one training with a checkpoint on S3.
            wait_until(
                proc, log,
                lambda: any(t["state"] == "COMPLETE" for t in safe_study(db))
                and any(t["state"] == "RUNNING" and t["checkpoint"] for t in safe_study(db)),
                "a finished trial and a checkpointed running one",
            )  # fmt: skip
            before = finished_files(run, results(run))
            proxy.outage(OUTAGE_S)
            text = search.finish(proc, log)
    finally:
        proxy.close()
    print(f"\nS3 outage: search exit {proc.returncode}\n{text[-2500:]}")
    check_integrity(run, db, num_samples=NUM_SAMPLES, before=before)
    # Driver and trial workers alike wait the outage out: no trial fails for it, none starts twice.
    table = results(run)
    assert set(table["status"]) <= {"complete", "pruned"}, table[["trial_id", "status", "error"]]
    assert before, "no trial had finished before the outage"
    starts = started_ids(text)
    assert sorted(starts) == sorted(set(starts)) == table["trial_id"].tolist(), starts
    # The study on S3 is the final one, not a copy from before the outage.
    copy = tmp_path / "from-s3.db"
    copy.write_bytes(read_bytes(run, "study.db"))
    assert [t["state"] for t in study_trials(copy)] == [t["state"] for t in study_trials(db)]
