"""Where runs live: a local folder or ``s3://bucket/prefix``, behind pyarrow filesystems.

Search, analysis and export all go through :func:`parse_storage` and the
helpers here, so a run on S3 reads and writes exactly like one on disk. Ray
Tune gets the same filesystem::

    storage = parse_storage(args.run_root)
    storage.check_reachable()
    RunConfig(name=NAME, storage_path=storage.fs_path, storage_filesystem=storage.filesystem())

Paths given to the helpers are relative to the storage when the first
argument is a :class:`Storage`, or paths within the filesystem when it is a
``pyarrow.fs.FileSystem``. Credentials come from the usual AWS environment
(variables, ``~/.aws``, instance roles) and are never written or logged here;
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` point at an S3-compatible server.

Importing this module does not import torch or ray (pyarrow only when used).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import urlsplit

from caetune._errors import InputError

if TYPE_CHECKING:
    import pyarrow.fs

EXPECTED_URL = "a local folder or s3://bucket/prefix"
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS SDKs' order of precedence
_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class Storage:
    """A parsed storage location; build it with :func:`parse_storage`.

    Attributes:
        url: The canonical form: an absolute local path or ``s3://bucket/prefix``.
        bucket: The S3 bucket; ``None`` for a local folder.
        prefix: The key prefix inside the bucket, without leading or trailing
            slashes (``""`` for the bucket root and for local folders).
        local_path: The absolute local folder; ``None`` on S3.
    """

    url: str
    bucket: str | None = None
    prefix: str = ""
    local_path: Path | None = None

    def __str__(self) -> str:
        return self.url

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def fs_path(self) -> str:
        """The location as a path within :meth:`filesystem` (``bucket/prefix`` on S3)."""
        if self.local_path is not None:
            return str(self.local_path)
        return f"{self.bucket}/{self.prefix}" if self.prefix else str(self.bucket)

    def filesystem(self) -> pyarrow.fs.FileSystem:
        """A pyarrow filesystem for this storage (S3 options read from the environment now)."""
        if self.bucket is None:
            import pyarrow.fs

            return pyarrow.fs.LocalFileSystem()
        return _s3_filesystem(*_s3_options(self.bucket))

    def join(self, *parts: str) -> str:
        """The :meth:`filesystem` path of ``parts`` below this storage.

        Raises:
            InputError: A part is absolute or climbs out with ``..``.
        """
        rel = _relative_key(parts)
        return f"{self.fs_path}/{rel}" if rel else self.fs_path

    def child(self, *parts: str) -> Storage:
        """The storage of a sub-folder, e.g. ``storage.child(NAME)`` for one run."""
        rel = _relative_key(parts)
        if not rel:
            return self
        if self.local_path is not None:
            path = self.local_path.joinpath(*rel.split("/"))
            return Storage(url=str(path), local_path=path)
        prefix = f"{self.prefix}/{rel}" if self.prefix else rel
        return Storage(url=f"s3://{self.bucket}/{prefix}", bucket=self.bucket, prefix=prefix)

    def check_reachable(self, *, field: str = "--run-root", timeout: float = 5.0) -> None:
        """Fails fast, before anything is written, when the storage cannot be used.

        S3: credentials must exist, the endpoint must answer and the bucket
        must exist (within about ``timeout`` seconds). Local: the folder, or
        its nearest existing parent, must be a writable directory.

        Raises:
            InputError: ``FIELD: cannot reach s3://bucket: <reason>`` or
                ``FIELD: a writable folder ...``.
        """
        if self.local_path is not None:
            _check_local_writable(self.local_path, field)
            return
        reason = _with_deadline(lambda: _s3_unusable_reason(self, timeout), timeout=timeout + 1.0)
        if reason:
            raise InputError(field, f"cannot reach s3://{self.bucket}: {reason}")


def parse_storage(url: str | os.PathLike, *, field: str = "--run-root") -> Storage:
    """Parses a local folder path or an ``s3://bucket/prefix`` URL.

    Local paths are expanded (``~``) and made absolute; nothing is created.

    Args:
        url: What the user gave.
        field: The flag or setting to name in errors.

    Raises:
        InputError: Another scheme, a bad bucket name, ``.``/``..``/empty key
            parts, a query or fragment, or credentials in the URL.
    """
    if not isinstance(url, (str, os.PathLike)):
        raise InputError(field, f"{EXPECTED_URL}, got {type(url).__name__}")
    text = os.fspath(url).strip()
    if not text or "\0" in text:
        raise InputError(field, EXPECTED_URL)
    scheme = _SCHEME_RE.match(text)
    if scheme is None:
        path = Path(text).expanduser().resolve()
        return Storage(url=str(path), local_path=path)
    if scheme.group(1).lower() != "s3":
        raise InputError(field, f"{EXPECTED_URL}, not a {scheme.group(1)}:// URL")
    parts = urlsplit(text)
    # A secret may itself hold '/', which moves the '@' out of the netloc: look at the whole URL.
    if "@" in parts.netloc or re.match(r"s3://[^@]*:[^@]*@", text, re.IGNORECASE):
        # Never echo the URL: what precedes '@' may be a secret.
        raise InputError(
            field, "s3://bucket/prefix without credentials (use the AWS environment or ~/.aws)"
        )
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise InputError(field, "s3://bucket/prefix without '?' or '#'")
    bucket = parts.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InputError(
            field,
            f"s3://bucket/prefix with a valid bucket name (3-63 of a-z 0-9 . -), got {bucket!r}",
        )
    keys = parts.path.strip("/")
    if keys and any(part in ("", ".", "..") for part in keys.split("/")):
        raise InputError(
            field, f"s3://bucket/prefix without empty, '.' or '..' parts, got {keys!r}"
        )
    return Storage(
        url=f"s3://{bucket}/{keys}" if keys else f"s3://{bucket}", bucket=bucket, prefix=keys
    )


# --- file helpers -----------------------------------------------------------

Target = Union[Storage, "pyarrow.fs.FileSystem"]


def write_bytes(target: Target, path: str, data: bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never a part.

    Local: a temporary file beside it, flushed and renamed over it. S3: one
    object put (S3 makes an object visible only when its upload completes).
    Parent folders are created as needed.
    """
    fs, fs_path = _resolve(target, path)
    if fs.type_name == "local":
        _atomic_local_write(Path(fs_path), data)
        return
    with fs.open_output_stream(fs_path) as stream:
        stream.write(data)


def read_bytes(target: Target, path: str) -> bytes:
    """The whole content of a file.

    Raises:
        FileNotFoundError: There is no such file.
    """
    fs, fs_path = _resolve(target, path)
    if fs.get_file_info(fs_path).type.name != "File":
        raise FileNotFoundError(fs_path)
    with fs.open_input_stream(fs_path) as stream:
        return stream.readall()


def exists(target: Target, path: str) -> bool:
    """Whether a file or folder is there."""
    fs, fs_path = _resolve(target, path)
    return fs.get_file_info(fs_path).type.name != "NotFound"


def upload_file(target: Target, local_file: str | os.PathLike, path: str) -> None:
    """Copies a local file to ``path``, atomically as :func:`write_bytes` does."""
    import pyarrow as pa

    # One buffer for the whole file: a failed read can never leave a partial object behind.
    with pa.memory_map(os.fspath(local_file)) as source:
        write_bytes(target, path, source.read_buffer())


def sync_file_to(local_file: str | os.PathLike, target: Target, path: str) -> bool:
    """Makes ``path`` hold ``local_file``'s bytes; a no-op when it is that very file.

    Lets a writer keep a file locally and mirror it, whether the storage is a
    local folder (often the same file) or S3.

    Returns:
        Whether anything was copied.
    """
    fs, fs_path = _resolve(target, path)
    if fs.type_name == "local" and Path(fs_path).exists() and Path(fs_path).samefile(local_file):
        return False
    upload_file(fs, local_file, fs_path)
    return True


def download_dir(
    target: Target,
    prefix: str,
    local_dir: str | os.PathLike,
    *,
    include: Iterable[str] | None = None,
) -> list[Path]:
    """Copies the files under ``prefix`` into ``local_dir``, keeping relative paths.

    Args:
        target: The storage or filesystem to read.
        prefix: The folder to copy (relative to a storage; ``""`` for all of it).
        local_dir: Where the files go (created as needed).
        include: ``fnmatch`` patterns on the relative POSIX path
            (``["results.csv", "trials/*/metrics.json"]``); ``None``: all files.

    Returns:
        The local files written, sorted.
    """
    import pyarrow.fs

    fs, root = _resolve(target, prefix)
    root = root.rstrip("/")
    patterns = None if include is None else list(include)
    out = Path(local_dir)
    written = []
    for info in fs.get_file_info(
        pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    ):
        if info.type.name != "File":
            continue
        rel = info.path[len(root) + 1 :]
        if patterns is not None and not any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            continue
        local = out.joinpath(*_relative_key([rel]).split("/"))
        with fs.open_input_stream(info.path) as stream:
            _atomic_local_write(local, stream.readall())
        written.append(local)
    return sorted(written)


def check_writable_dir(path: Path, *, field: str) -> None:
    """Raises unless ``path`` is, or could be created as, a writable folder (creates nothing).

    Raises:
        InputError: ``path`` is a file, sits below one, or cannot be written.
    """
    if path.exists() and not path.is_dir():
        raise InputError(field, f"{path} exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(field, f"cannot write to {path} ({probe} is not a folder)")
    try:  # a real write: os.access() says yes to root even on read-only mounts
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise InputError(field, f"cannot write to {path} ({probe}: {err.strerror})") from None


# --- internals ----------------------------------------------------------------


def _relative_key(parts: Iterable[str]) -> str:
    """``parts`` joined with ``/``; refuses absolute parts and ``..`` (the storage holds them)."""
    pieces = []
    for part in parts:
        text = os.fspath(part)
        if text.startswith("/") or "\\" in text:
            raise InputError("path", f"a relative path inside the storage, got {text!r}")
        for piece in text.split("/"):
            if piece == "..":
                raise InputError("path", f"a path inside the storage without '..', got {text!r}")
            if piece not in ("", "."):
                pieces.append(piece)
    return "/".join(pieces)


def _resolve(target: Target, path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if isinstance(target, Storage):
        return target.filesystem(), target.join(path)
    return target, os.fspath(path)


def _atomic_local_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_local_writable(path: Path, field: str) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(field, f"a folder, but {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(field, f"a writable folder, but {probe} is not writable")


def _s3_options(bucket: str, timeout: float | None = None) -> tuple:
    """The S3FileSystem options the environment asks for, as a hashable tuple."""
    endpoint, scheme = None, None
    raw = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    if raw:
        parts = urlsplit(raw if "://" in raw else f"https://{raw}")
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise InputError("AWS_ENDPOINT_URL", "http(s)://host[:port] of an S3-compatible server")
        endpoint, scheme = parts.netloc, parts.scheme
    region = next((os.environ[v] for v in _REGION_VARS if os.environ.get(v)), None)
    if region is None:
        # A custom endpoint has no AWS region to look up; on AWS itself ask S3 where the bucket is.
        region = "us-east-1" if endpoint else _bucket_region(bucket)
    return endpoint, scheme, region, timeout


S3_ATTEMPTS = 10


@functools.lru_cache(maxsize=32)
def _s3_filesystem(
    endpoint: str | None, scheme: str | None, region: str | None, timeout: float | None
):
    import pyarrow.fs

    # A search outlives short S3 outages: AWS's standard retries back off up to 20 s apart, so
    # 10 attempts wait out about 90 s of a server that refuses connections before an error.
    kwargs = dict(retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
    if timeout is not None:
        kwargs = dict(
            connect_timeout=timeout,
            request_timeout=timeout,
            retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1),
        )
    options = (endpoint, scheme, region, timeout)
    return _retrying_s3_class()(
        options, endpoint_override=endpoint, scheme=scheme, region=region, **kwargs
    )


@functools.lru_cache(maxsize=1)
def _retrying_s3_class() -> type:
    """``pyarrow.fs.S3FileSystem`` whose pickled form keeps its retry strategy.

    Ray Tune pickles ``storage_filesystem`` to every trial worker, and pyarrow's
    own pickling drops ``retry_strategy``: a worker's checkpoint upload then
    failed on the first refused connection of an outage. Unpickling this one
    calls :func:`_s3_filesystem` with the same options instead, so a worker
    retries exactly as the driver does. Credentials are not in the pickle
    (pyarrow's neither): each process reads them from its own environment.
    It stays an ``S3FileSystem`` (not a ``PyFileSystem`` wrapper), so pyarrow
    copies to it natively and Ray keeps its single-threaded S3 upload workaround.
    """
    import pyarrow.fs

    class RetryingS3FileSystem(pyarrow.fs.S3FileSystem):
        def __init__(self, options: tuple, **kwargs) -> None:
            super().__init__(**kwargs)
            self._options = options

        def __reduce__(self):
            return _s3_filesystem, self._options

    return RetryingS3FileSystem


@functools.lru_cache(maxsize=32)
def _bucket_region(bucket: str) -> str | None:
    import pyarrow.fs

    try:
        return pyarrow.fs.resolve_s3_region(bucket)
    except OSError:
        return None  # check_reachable reports the real problem


def _s3_unusable_reason(storage: Storage, timeout: float) -> str | None:
    """Why ``storage`` cannot be used right now, or ``None`` when it can."""
    import botocore.session

    # pyarrow falls back to unsigned requests without credentials; say so plainly instead.
    if botocore.session.get_session().get_credentials() is None:
        return (
            "no AWS credentials found "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws)"
        )
    assert storage.bucket is not None  # only asked of an S3 storage
    fs = _s3_filesystem(*_s3_options(storage.bucket, timeout))
    try:
        bucket = fs.get_file_info(storage.bucket)
        if bucket.type.name == "NotFound":
            return "no such bucket"
        if storage.prefix and fs.get_file_info(storage.fs_path).type.name == "File":
            return f"s3://{storage.bucket}/{storage.prefix} is an object, not a prefix"
    except OSError as err:
        return _first_line(str(err))
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _with_deadline(func, *, timeout: float):
    """``func()``, or a timeout reason if it has not returned within ``timeout`` seconds.

    pyarrow documents its read timeout as ignored on Linux; this bounds the
    check even for a server that accepts but never answers (the worker
    thread is then left behind).
    """
    result: list = []
    error: list = []

    def run() -> None:
        try:
            result.append(func())
        except BaseException as err:  # re-raised in the caller's thread
            error.append(err)

    worker = threading.Thread(target=run, name="caetune-storage-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if error:
        raise error[0]
    if not result:
        return f"no answer within {timeout:g} s"
    return result[0]
