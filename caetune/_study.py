"""A run's Optuna study file (``study.db``): usable locally, safe on its storage.

Optuna needs a local SQLite file; a run on S3 keeps its copy there. Readers
(``caetune report``) take :func:`sqlite_snapshot`, never the live file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path

from caetune._runs import STUDY_FILE
from caetune._storage import Storage, _atomic_local_write, read_bytes, write_bytes


class StudySync:
    """Keeps a run's Optuna SQLite file usable locally and safe on its storage.

    Optuna needs a local SQLite file. On a local storage that is simply
    ``STORAGE/NAME/study.db`` and :meth:`pull`/:meth:`push` do nothing. On S3
    the file lives in a cache folder (``CACHE/<bucket>/<prefix>/NAME/study.db``),
    :meth:`push` uploads a consistent snapshot (sqlite3's backup API) after
    every trial, and :meth:`pull` fetches the storage's copy on resume unless
    the local one is at least as new (it is when the storage still holds the
    snapshot this cache pushed last; a marker file beside it records its hash).

    Args:
        storage: The search's storage.
        name: The run's name (``STORAGE/NAME``).
        cache_dir: Root of the local cache; default ``$XDG_CACHE_HOME/caetune``
            or ``~/.cache/caetune``.
    """

    def __init__(
        self, storage: Storage, name: str, *, cache_dir: str | os.PathLike | None = None
    ) -> None:
        self.storage = storage
        self.remote_path = storage.join(name, STUDY_FILE)
        if storage.local_path is not None:
            self.local_path = Path(self.remote_path)
        else:
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            self.local_path = root.joinpath(
                str(storage.bucket), *storage.prefix.split("/"), name, STUDY_FILE
            )
        self._marker = self.local_path.with_name(STUDY_FILE + ".pushed")

    @property
    def url(self) -> str:
        """The Optuna storage URL of the local file."""
        return f"sqlite:///{self.local_path}"

    def pull(self) -> bool:
        """Before opening the study: makes its folder, brings the storage's copy when newer.

        Returns:
            Whether the local file was replaced by the storage's copy.
        """
        self.local_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.storage.is_s3:
            return False
        try:
            remote = read_bytes(self.storage.filesystem(), self.remote_path)
        except FileNotFoundError:
            return False
        if self.local_path.exists() and self._pushed_hash() == _sha256(remote):
            return False  # the storage holds our last push; the local file may be newer still
        _atomic_local_write(self.local_path, remote)
        self._marker.unlink(missing_ok=True)
        return True

    def push(self) -> bool:
        """After a trial: uploads a consistent snapshot of the local file.

        Returns:
            Whether anything was uploaded (never on a local storage).
        """
        if not self.storage.is_s3 or not self.local_path.exists():
            return False
        snapshot = sqlite_snapshot(self.local_path)
        write_bytes(self.storage.filesystem(), self.remote_path, snapshot)
        _atomic_local_write(self._marker, json.dumps({"sha256": _sha256(snapshot)}).encode())
        return True

    def _pushed_hash(self) -> str | None:
        try:
            return json.loads(self._marker.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def sqlite_snapshot(path: str | os.PathLike) -> bytes:
    """A consistent copy of a live SQLite database, through sqlite3's backup API.

    Unlike copying the file, this never catches a write half-done (and it
    includes what a WAL journal holds).
    """
    source_uri = Path(path).resolve().as_uri() + "?mode=ro"
    with tempfile.TemporaryDirectory(prefix="caetune-db-") as tmp:
        copy = Path(tmp) / "snapshot.db"
        source = sqlite3.connect(source_uri, uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return copy.read_bytes()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/caetune``, else ``~/.cache/caetune``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "caetune"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
