"""A password in ``--study-storage`` is used, never stored or printed; resuming asks for it again.

No database server with a password is at hand in tests, so the study lives in
a real SQLite file behind :class:`PasswordSQLite`: SQLAlchemy's own pysqlite
dialect under the name ``sqlitepw``, which takes ``user:password@`` in its URL
and refuses a connection whose password is wrong, as a server would. The URL
goes through everything caetune does with it (checked, opened by Optuna,
stored, printed), so a search resumed with a redacted URL cannot connect.
"""

from __future__ import annotations

import io

import pytest
import yaml
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from caetune import InputError
from caetune._runs import EXPERIMENT_FILE
from caetune.search import run_search
from tests.search.test_search import settings

PASSWORD = "pw-9f3c1e7a"


class PasswordSQLite(SQLiteDialect_pysqlite):
    """pysqlite that checks a password from the URL (SQLite has none of its own)."""

    supports_statement_cache = True

    def create_connect_args(self, url):
        if url.password != PASSWORD:
            raise OperationalError("connect", {}, Exception("password authentication failed"))
        return super().create_connect_args(
            URL.create("sqlite", database=url.database, query=url.query)
        )


registry.register("sqlitepw", __name__, "PasswordSQLite")


def study_url(tmp_path, password: str = PASSWORD) -> str:
    return f"sqlitepw://caetune:{password}@localhost/{tmp_path / 'db' / 'study.db'}"


def _settings(tmp_path, **overrides):
    return settings(tmp_path, max_epochs=1, **overrides)


def _run(tmp_path, **overrides):
    out, stream = io.StringIO(), io.StringIO()
    outcome = run_search(_settings(tmp_path, **overrides), stream=stream, out=out)
    return outcome, stream.getvalue() + out.getvalue()


def _files_holding(folder, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_study_password_is_used_but_never_written_or_printed(ray_local, tmp_path):
    (tmp_path / "db").mkdir()
    outcome, printed = _run(tmp_path, study_storage=study_url(tmp_path), num_samples=2)
    assert (
        set(outcome.results["status"]) <= {"complete", "pruned", "failed"}
        and len(outcome.results) == 2
    )
    assert (
        tmp_path / "db" / "study.db"
    ).stat().st_size > 0  # the study is in the password-guarded file
    run = tmp_path / "runs" / "tiny"
    stored = yaml.safe_load((run / EXPERIMENT_FILE).read_text())
    redacted = f"sqlitepw://***@localhost/{tmp_path / 'db' / 'study.db'}"
    assert (
        stored["settings"]["study_storage"] == redacted and stored["study"]["storage"] == redacted
    )
    assert redacted in printed
    assert PASSWORD not in printed
    assert _files_holding(tmp_path, PASSWORD) == []  # run folder, study file, cache: nowhere

    # Resumed with the URL given again (the stored form is compared): accepted, and it connects.
    outcome, printed = _run(tmp_path, study_storage=study_url(tmp_path), num_samples=3)
    assert len(outcome.results) == 3 and PASSWORD not in printed
    assert _files_holding(tmp_path, PASSWORD) == []

    # Resumed without it: the stored URL has no password to connect with: one error, no write.
    before = _snapshot(tmp_path)
    with pytest.raises(InputError) as err:
        run_search(
            _settings(tmp_path, resume=True, name="tiny", num_samples=4),
            stream=io.StringIO(),
            out=io.StringIO(),
        )
    message = str(err.value)
    assert message.startswith("--study-storage: ") and "give --study-storage again" in message, (
        message
    )
    assert len(message.splitlines()) == 1 and PASSWORD not in message
    assert _snapshot(tmp_path) == before

    # A different password is a different URL to caetune only once the server refuses it.
    wrong = _settings(tmp_path, study_storage=study_url(tmp_path, "wrong"), num_samples=3)
    with pytest.raises(
        InputError, match="--study-storage: cannot open sqlitepw://\\*\\*\\*@"
    ) as err:
        run_search(wrong, stream=io.StringIO(), out=io.StringIO())
    assert "wrong" not in str(err.value)
