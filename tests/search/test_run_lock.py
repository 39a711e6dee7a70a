"""The run lock of ``caetune search``: atomic, taken over from a dead owner, one winner of a race.

Real processes race for it: each :class:`LockHolder` is a Python process that
takes ``RunLock`` when told to (both are told in the same moment), says
whether it won, and holds the lock until told to let go. Reusing the two
processes across rounds keeps many rounds cheap (one import each).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caetune.search._lock import LOCK_FILE

ROUNDS = 12

_HOLDER = """
import sys, time, types
from pathlib import Path
from caetune._errors import InputError
from caetune.search._lock import RunLock
print("ready", flush=True)
for line in sys.stdin:
    path, _, at = line.strip().partition(" ")
    folder = Path(path)
    while time.time() < float(at or 0):  # spin, not sleep: both wake within microseconds
        pass
    lock = RunLock(types.SimpleNamespace(url=str(folder)), folder)
    try:
        lock.__enter__()
    except InputError as err:
        print(f"refused {err}", flush=True)
        continue
    print("won", flush=True)
    sys.stdin.readline()  # hold it until told to let go
    lock.__exit__(None, None, None)
    print("released", flush=True)
"""


class LockHolder:
    """A process that takes a run's lock on request (:meth:`ask`, :meth:`answer`), then lets go.

    It lets go when told to (:meth:`release`).
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, folder: Path, at: float = 0.0) -> None:
        """Take the lock of ``folder`` at ``time.time() == at`` (now, by default)."""
        self.proc.stdin.write(f"{folder} {at}\n")
        self.proc.stdin.flush()

    def answer(self) -> str:
        return self.proc.stdout.readline().strip()

    def take(self, folder: Path) -> str:
        self.ask(folder)
        return self.answer()

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.answer() == "released"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders():
    pair = [LockHolder(), LockHolder()]
    yield pair
    for holder in pair:
        holder.close()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_two_processes_racing_for_a_run_exactly_one_wins(holders, tmp_path):
    """Both ask at once, on a new folder or over a dead owner's lock file; one wins every round."""
    wins = {holder.pid: 0 for holder in holders}
    for n in range(ROUNDS):
        folder = tmp_path / f"round{n}" / "run"
        if n % 2:  # a lock file left by a SIGKILLed search: its pid is gone
            folder.mkdir(parents=True)
            (folder / LOCK_FILE).write_text(f"{socket.gethostname()} {_dead_pid()}")
        at = time.time() + 0.2
        for holder in holders:
            holder.ask(folder, at)
        answers = [holder.answer() for holder in holders]
        assert sorted(a.split()[0] for a in answers) == ["refused", "won"], (n, answers)
        winner = holders[answers.index("won")]
        refused = answers[1 - answers.index("won")]
        assert f"in use by process {winner.pid};" in refused and str(folder) in refused, refused
        assert (folder / LOCK_FILE).read_text() == f"{socket.gethostname()} {winner.pid}"
        wins[winner.pid] += 1
        winner.release()
        # The lock file goes with its owner (a folder the loser made may stay, empty, for the run).
        assert not [p for p in (tmp_path / f"round{n}").rglob("*") if not p.is_dir()], n
    print(f"\n{ROUNDS} rounds, wins per process: {sorted(wins.values())}")


def test_the_folders_a_lock_made_go_with_it(holders, tmp_path):
    """A search refused after its lock (bad input found then) leaves nothing behind."""
    folder = tmp_path / "runs" / "run"
    assert holders[0].take(folder) == "won"
    holders[0].release()
    assert os.listdir(tmp_path) == []


def test_a_lock_is_free_again_once_its_owner_dies(holders, tmp_path):
    first, second = holders
    folder = tmp_path / "run"
    assert first.take(folder) == "won"
    assert second.take(folder).startswith(
        f"refused --name: run {folder} is in use by process {first.pid};"
    )
    first.proc.kill()  # as SIGKILL leaves it: the lock file stays, naming a dead pid
    first.proc.wait()
    assert (folder / LOCK_FILE).read_text().endswith(f" {first.pid}")
    assert second.take(folder) == "won"
    second.release()
