"""The run lock: one search per run folder at a time."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from caetune._errors import InputError
from caetune.search._lease import _alive

LOCK_FILE = ".lock"


class RunLock:
    """One search per run at a time: an exclusive ``flock`` on a lock file, held during the search.

    Taking it is one atomic call, and the kernel releases it when its process
    ends, however it ends (a SIGKILLed driver included): a lock file left by a
    dead process is simply locked again, and of two processes racing for a run
    exactly one gets it. The file holds the owner's host and pid, for the one
    refused to name. It sits beside the local study file (the run folder for a
    local storage, the cache folder for S3); the folders it created go again
    when the search leaves them empty (bad input found after the lock leaves
    nothing behind).
    """

    OWNER_WAIT_S = 1.0  # the winner writes its pid right after locking; a loser may look in between

    def __init__(self, files, folder) -> None:
        self.files = files
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []

    def __enter__(self) -> RunLock:
        import fcntl

        while True:
            self._make_folders()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the owner before us removed the emptied folder meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                self._remove_made()
                raise InputError(
                    "--name", f"run {self.files.url} is in use by {owner}; wait for it or stop it"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(
                fd
            )  # locked a file its owner had just unlinked on its way out: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        # Unlinked before it is unlocked: whoever opened it meanwhile finds it gone and starts over.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        self._remove_made()

    def _owner(self, fd: int) -> str:
        deadline = time.monotonic() + self.OWNER_WAIT_S
        while True:
            owner = os.pread(fd, 300, 0).decode(errors="replace").split()
            if len(owner) == 2 and owner[1].isdigit():
                host, pid = owner
                if host != socket.gethostname():
                    return f"process {pid} on {host}"
                if _alive(
                    int(pid)
                ):  # a dead pid is the last owner's, not yet overwritten by the new one
                    return f"process {pid}"
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.01)

    def _make_folders(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # another search made it: not ours to remove
                continue
            self._made.insert(0, folder)  # deepest first, the order to remove them in

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:  # not empty (or not ours any more): it stays
                break
        self._made = []


@contextlib.contextmanager
def hold_run(
    files, folder, *, name: str, study_url: str | None, break_lease: bool, stream
) -> Iterator[None]:
    """The run's local lock, then its leases on shared storage: one driver per run, anywhere.

    The lock (:class:`RunLock`) stops a second search on this machine; the
    leases (:func:`caetune.search._lease.run_lease`) stop one on another
    machine sharing the S3 run root or the study's database.

    Args:
        files: The run's ``RunFiles``.
        folder: Where the lock file goes (beside the local study file).
        name: The study name.
        study_url: ``--study-storage`` as given (``None``: SQLite beside the run).
        break_lease: ``--break-lease``.
        stream: Progress lines.
    """
    from caetune.search._lease import run_lease

    with RunLock(files, folder):
        lease = run_lease(
            files.storage, name=name, study_url=study_url, break_lease=break_lease, stream=stream
        )
        with lease:
            yield


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
