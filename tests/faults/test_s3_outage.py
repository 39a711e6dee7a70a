"""S3 down for ~20 s in the middle of a search, then back.

moto keeps its objects in memory, so stopping and restarting it would lose
the bucket. Instead the search talks to moto through a small TCP proxy on
127.0.0.1 which, for the outage, closes its listening socket and every open
connection (clients get "connection refused", as from a stopped server), then
listens again on the same port: the data survives, the outage is real to the
client. The search must retry or pause and then finish, and nothing written
half-way may be read back as valid.

Found with it: the search died on the first refused connection (pyarrow's
default of 3 quick attempts); ``caetune._storage`` now retries for ~100 s.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from caetune._storage import parse_storage, read_bytes
from tests.faults._tools import (
    RUN_TIMEOUT_S,
    check_integrity,
    kill_group,
    local_study,
    results,
    safe_study,
    search_env,
    start_search,
    study_trials,
    wait_until,
    write_space,
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
        time.sleep(seconds)
        self._listener = self._listen(self.port)
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_20s_s3_outage_mid_search_is_survived(s3_bucket, s3_server, tmp_path):
    proxy = OutageProxy(("127.0.0.1", s3_server.port))
    env = search_env(tmp_path, s3_server.subprocess_env())
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
    storage_url = f"s3://{s3_bucket}/runs"
    storage = parse_storage(storage_url)
    run, db = storage.child("exp"), local_study(storage, "exp", tmp_path)
    space = write_space(tmp_path, subset=600, epochs=(4, 5))
    flags = [
        "--space", str(space), "--storage", storage_url, "--name", "exp", "--num-samples", str(NUM_SAMPLES),
        "--max-concurrent", "1", "--grace-period", "10", "--seed", "13",
    ]  # fmt: skip

    log = tmp_path / "search.log"
    proc = start_search(flags, env, tmp_path, log)
    try:
        # Mid-search: a trial finished, the next one training with a checkpoint on S3.
        wait_until(
            proc, log,
            lambda: any(t["state"] == "COMPLETE" for t in safe_study(db))
            and any(t["state"] == "RUNNING" and t["checkpoint"] for t in safe_study(db)),
            "a finished trial and a checkpointed running one",
        )  # fmt: skip
        proxy.outage(OUTAGE_S)
        proc.wait(RUN_TIMEOUT_S)
    finally:
        kill_group(proc)
        proxy.close()
    text = log.read_text()
    print(f"\nS3 outage: search exit {proc.returncode}\n{text[-2500:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{text[-4000:]}"
    check_integrity(run, db, num_samples=NUM_SAMPLES)
    # The driver waits the outage out (its S3 calls retry). A trial worker's do not: pyarrow drops
    # retry_strategy when Ray pickles the filesystem to it, so the trial that was checkpointing
    # may fail, with the outage as its reason, and the rest of the search goes on.
    table = results(run)
    failed = table[table["status"] == "failed"]
    assert len(failed) <= 1 and failed["error"].str.contains("AWS Error").all(), failed[["trial_id", "error"]]
    assert (table["status"] == "complete").sum() >= NUM_SAMPLES - 1
    # The study on S3 is the final one, not a copy from before the outage.
    copy = tmp_path / "from-s3.db"
    copy.write_bytes(read_bytes(run, "study.db"))
    assert [t["state"] for t in study_trials(copy)] == [t["state"] for t in study_trials(db)]
