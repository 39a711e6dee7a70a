"""What ``caetune export`` checks before it writes: the locations, the destination, no secrets.

Every check happens before the first byte is published; each failure is one
:class:`~caetune.InputError` naming the flag at fault.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from caetune._errors import InputError
from caetune._runs import first_line
from caetune._storage import check_writable_dir, parse_storage, read_bytes

if TYPE_CHECKING:
    from caetune._storage import Storage

FORMAT = "caetune-export"
MANIFEST = "manifest.json"
SCAN_CHUNK = 1 << 20

_SECRET_PATTERNS = (
    (
        re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
        "an AWS access key id",
    ),
    (
        re.compile(
            rb"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=-]+:[A-Za-z0-9._~%!$&'()*+,;=-]+@"
        ),
        "a URL with a password",
    ),
)
# user:secret@, whatever the secret holds
_URL_CREDENTIALS = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^@]*:[^@]*@")
_SECRET_NAMES = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I
)
_SECRET_MIN_LEN = 12  # shorter values ("testing") would match innocent text


def parse_location(url: str | os.PathLike, *, field: str) -> Storage:
    """:func:`~caetune._storage.parse_storage`, refusing ``scheme://user:secret@...`` first.

    A secret holding ``/`` (AWS secret keys may) ends the URL's host part
    early, so the ``@`` is not where ``parse_storage`` looks for it, and its
    error would echo the secret.
    """
    if isinstance(url, (str, os.PathLike)) and _URL_CREDENTIALS.match(os.fspath(url)):
        raise InputError(
            field, "a location without credentials (use the AWS environment or ~/.aws)"
        )
    return parse_storage(url, field=field)


def check_target(target: Storage) -> dict | None:
    """The destination must be writable and new, empty or an earlier export.

    Returns:
        The earlier export's manifest, or ``None``.
    """
    if target.local_path is None:
        try:
            target.check_reachable()
        except InputError as err:
            raise InputError("--to", err.expected) from None
        keys = _s3_keys(target)
    else:
        check_writable_dir(target.local_path, field="--to")
        path = target.local_path
        keys = [p.name for p in path.iterdir()] if path.is_dir() else []
    if not keys:
        return None
    manifest = read_manifest(target)
    if manifest is None:
        raise InputError(
            "--to",
            f"{target.url} holds other files; give a new or empty folder, or an earlier export",
        )
    return manifest


def read_manifest(storage: Storage) -> dict | None:
    """An export's manifest, or ``None`` where there is none (or not a caetune one)."""
    try:
        manifest = json.loads(read_bytes(storage, MANIFEST))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    except OSError as err:
        raise InputError(storage.url, f"cannot read {MANIFEST}: {first_line(err)}") from None
    ok = (
        isinstance(manifest, dict)
        and manifest.get("format") == FORMAT
        and isinstance(manifest.get("files"), dict)
    )
    return manifest if ok else None


def check_no_secrets(stage: Path) -> None:
    """Refuses to publish when any staged file holds what looks like a credential."""
    values = {
        name: value.encode()
        for name, value in os.environ.items()
        if _SECRET_NAMES.search(name) and len(value) >= _SECRET_MIN_LEN
    }
    overlap = max([len(v) for v in values.values()] + [256])
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        what = _find_secret(_chunks(path, overlap), values)
        if what:
            rel = path.relative_to(stage).as_posix()
            raise InputError(
                "RUN", f"the export's {rel} would contain {what}; nothing was exported"
            )


def _find_secret(chunks: Iterator[bytes], values: dict[str, bytes]) -> str | None:
    for chunk in chunks:
        for pattern, what in _SECRET_PATTERNS:
            if pattern.search(chunk):
                return what
        for name, value in values.items():
            if value in chunk:
                return f"the value of ${name}"
    return None


def _chunks(path: Path, overlap: int) -> Iterator[bytes]:
    """The file in overlapping pieces, so a match across a boundary is still found."""
    tail = b""
    with open(path, "rb") as handle:
        while piece := handle.read(SCAN_CHUNK):
            yield tail + piece
            tail = piece[-overlap:]


def _s3_keys(storage: Storage) -> list[str]:
    import pyarrow.fs

    fs = storage.filesystem()
    selector = pyarrow.fs.FileSelector(storage.fs_path, recursive=True, allow_not_found=True)
    try:
        return [info.path for info in fs.get_file_info(selector) if info.type.name == "File"]
    except OSError as err:
        raise InputError("--to", f"cannot list {storage.url}: {first_line(err)}") from None
