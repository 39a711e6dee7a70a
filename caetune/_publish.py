"""Publishing a staged folder (a report, an export) so that readers find all of it or none."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from caetune._errors import InputError
from caetune._runs import first_line
from caetune._storage import Storage, exists, upload_file


def publish(
    stage: Path, target: Storage, *, last: str, field: str, replaces: set[str] | None = None
) -> None:
    """Puts the staged folder ``stage`` at ``target`` so that readers find all of it or none.

    Locally the folder is renamed into place (an earlier one is swapped out
    whole). S3 renames nothing, so the file ``last`` (the page or manifest a
    reader starts from) goes first out and last in: the old one is deleted,
    the other files are uploaded, then ``last``. A failed upload leaves
    neither ``last`` nor the files.

    Args:
        stage: The finished folder, on a local disk.
        target: Where it goes (the caller has checked it can be written).
        last: The file, relative to ``stage``, that readers start from.
        field: The flag that named ``target``, for errors.
        replaces: On S3, the files of the earlier folder there: those not
            published again are deleted afterwards (``None``: keep them).

    Raises:
        InputError: S3 refused a file.
    """
    if target.local_path is not None:
        _publish_local(stage, target.local_path)
    else:
        _publish_s3(stage, target, last=last, field=field, replaces=replaces)


def _publish_local(stage: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{target.name}.incoming-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(incoming, 0o777 & ~umask)  # mkdtemp's 0700 would hide the folder from everyone else
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    try:
        for path in stage.iterdir():
            shutil.move(path, incoming / path.name)  # a rename when the stage shares the filesystem
        if target.exists():
            os.replace(target, old)
        os.replace(incoming, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the earlier one back
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _publish_s3(
    stage: Path, target: Storage, *, last: str, field: str, replaces: set[str] | None
) -> None:
    fs = target.filesystem()
    new = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    old = set(replaces or ())
    try:
        if exists(target, last):
            fs.delete_file(target.join(last))  # from here on no reader trusts the old files
        for rel in sorted(new - {last}):
            upload_file(target, stage / rel, rel)
        upload_file(target, stage / last, last)
    except BaseException as err:
        _remove_stale(fs, target, old=old | new | {last}, new=set())
        if isinstance(err, OSError):
            raise InputError(field, f"cannot write to {target.url}: {first_line(err)}") from None
        raise
    if replaces is not None:
        _remove_stale(fs, target, old=old, new=new)


def _remove_stale(fs, target: Storage, *, old: set[str], new: set[str]) -> None:
    """Deletes the files of ``old`` not in ``new``; a sub-folder no longer used goes whole.

    Whole folders, because pyarrow leaves a folder marker behind the last file
    deleted from one.
    """
    new_folders = {rel.split("/", 1)[0] for rel in new if "/" in rel}
    gone = sorted({rel.split("/", 1)[0] for rel in old if "/" in rel} - new_folders)
    files = sorted(
        rel for rel in old - new if "/" not in rel or rel.split("/", 1)[0] in new_folders
    )
    for delete, rels in ((fs.delete_dir, gone), (fs.delete_file, files)):
        for rel in rels:
            try:
                delete(target.join(rel))
            except (OSError, InputError):
                pass  # already gone, unreachable like the upload, or a name we never write
