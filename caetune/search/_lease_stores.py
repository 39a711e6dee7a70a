"""Where a run's lease lives (:mod:`caetune.search._lease`): an S3 object or a database row.

Each store reads the lease with its version and its age by the store's own
clock, and writes only over the version it read (S3's conditional writes, a
SQL compare-and-set on the row's token), so of two drivers writing at once
exactly one succeeds.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

from caetune._errors import InputError

LEASE_TABLE = "caetune_run_leases"


def first_line(err: BaseException) -> str:
    """The first line of an error's message (SQL and tracebacks follow in later ones)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- S3 --------------------------------------------------------------------------------


class S3LeaseStore:
    """A lease as the object ``KEY`` in ``BUCKET``, written with S3's conditional writes.

    boto3, not pyarrow: pyarrow's filesystem has no conditional writes. Its
    client takes the endpoint, region and credentials from the same AWS
    environment as the rest of caetune's S3 access.
    """

    def __init__(self, bucket: str, key: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.key = bucket, key
        self.where = f"s3://{bucket}/{key}"
        # Short timeouts: a renewal that hangs would keep a lost lease unnoticed past its TTL.
        config = Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
        )
        self._client = boto3.client("s3", config=config)

    def read(self) -> tuple[dict | None, str | None, float]:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except self._client.exceptions.NoSuchKey:
            return None, None, 0.0
        body = reply["Body"].read()
        server_now = parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - reply["LastModified"]).total_seconds()
        return _parse(body), reply["ETag"], max(0.0, age)

    def create(self, record: dict) -> str | None:
        return self._put(record, IfNoneMatch="*")

    def replace(self, record: dict, version: str) -> str | None:
        return self._put(record, IfMatch=version)

    def remove(self, version: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except ClientError as err:
            if _s3_code(err) in ("PreconditionFailed", "NoSuchKey", "404"):
                return  # not ours any more, or gone
            # A server without conditional deletes: mark it released instead (it expires anyway).
            released = {"released": True, "ttl_s": 0}
            self._put(released, IfMatch=version)

    def close(self) -> None:
        self._client.close()

    def _put(self, record: dict, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            reply = self._client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(record, sort_keys=True).encode(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as err:
            # 412: the condition failed; 409: a concurrent conditional write won.
            if _s3_code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise
        return reply["ETag"]


def _s3_code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _parse(body: bytes) -> dict:
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    # Unreadable: a lease all the same, held by someone unknown until it expires.
    return record if isinstance(record, dict) else {"pid": "?", "host": "?"}


# -- RDB -------------------------------------------------------------------------------

# The database's clock as seconds since the epoch, per SQLAlchemy dialect name.
_NOW_SQL = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "mysql": "UNIX_TIMESTAMP(NOW(6))",
    "mariadb": "UNIX_TIMESTAMP(NOW(6))",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class RdbLeaseStore:
    """A lease as the row ``name`` of :data:`LEASE_TABLE` in an Optuna study's database.

    The version is the row's token; every write is an ``UPDATE`` on the token
    read, and the ``renewed_at`` it writes is the database's own time.

    Args:
        url: The study's SQLAlchemy URL (its password is used, never shown).
        name: The study name.
        where: How messages name the database (its URL without the password).
    """

    def __init__(self, url: str, name: str, *, where: str) -> None:
        import sqlalchemy as sa

        self.name = name
        self.where = f"{where} (table {LEASE_TABLE})"
        parsed = sa.engine.make_url(url)
        # libpq waits for an unanswered connection as long as TCP does; a heartbeat cannot.
        timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        self._engine = sa.create_engine(
            parsed, pool_pre_ping=True, pool_size=1, max_overflow=1, connect_args=timeout
        )
        now = _NOW_SQL.get(self._engine.dialect.name)
        # A database without a known clock function: the driver's clock (clocks must agree).
        self._now = (
            sa.literal_column(now)
            if now
            else sa.bindparam("now", callable_=time.time, type_=sa.Float)
        )
        metadata = sa.MetaData()
        self._table = sa.Table(
            LEASE_TABLE,
            metadata,
            sa.Column("name", sa.String(512), primary_key=True),
            sa.Column("token", sa.String(64), nullable=False),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("renewed_at", sa.Float(precision=53), nullable=False),
        )
        try:
            self._create_table(metadata)
        except sa.exc.DBAPIError as err:  # unreachable, refused: the URL's own field says so
            self.close()
            raise InputError("--study-storage", f"cannot open {where}: {first_line(err)}") from None

    def _create_table(self, metadata) -> None:
        import sqlalchemy as sa

        try:
            metadata.create_all(self._engine, checkfirst=True)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            # Another driver created it in the same moment (PostgreSQL: a duplicate type or table).
            if not sa.inspect(self._engine).has_table(LEASE_TABLE):
                raise

    def read(self) -> tuple[dict | None, str | None, float]:
        import sqlalchemy as sa

        table = self._table
        query = sa.select(table.c.owner, table.c.token, self._now - table.c.renewed_at)
        with self._engine.connect() as conn:
            row = conn.execute(query.where(table.c.name == self.name)).first()
        if row is None:
            return None, None, 0.0
        owner, token, age = row
        return _parse(owner.encode()), token, max(0.0, float(age))

    def create(self, record: dict) -> str | None:
        import sqlalchemy as sa

        values = dict(name=self.name, **self._values(record))
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(self._table).values(**values))
        except sa.exc.IntegrityError:
            return None
        return record["token"]

    def replace(self, record: dict, version: str) -> str | None:
        import sqlalchemy as sa

        table = self._table
        update = sa.update(table).where(table.c.name == self.name, table.c.token == version)
        with self._engine.begin() as conn:
            done = conn.execute(update.values(**self._values(record))).rowcount
        return record["token"] if done == 1 else None

    def remove(self, version: str) -> None:
        import sqlalchemy as sa

        table = self._table
        with self._engine.begin() as conn:
            conn.execute(
                sa.delete(table).where(table.c.name == self.name, table.c.token == version)
            )

    def _values(self, record: dict) -> dict:
        return {
            "token": record["token"],
            "owner": json.dumps(record, sort_keys=True),
            "renewed_at": self._now,
        }

    def close(self) -> None:
        self._engine.dispose()
