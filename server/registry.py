"""The registry: one SQLite file (WAL) recording datasets, runs, evals, versions and traffic."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from turing.server.migrations import MIGRATIONS
from turing.tools.errors import NotFoundError

logger = logging.getLogger(__name__)

# Columns stored as JSON text and decoded on the way out.
JSON_COLUMNS = {
    "options",
    "report",
    "params",
    "result",
    "routes",
    "request",
    "spec",
    "details",
    "arguments",
    "messages",
}


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC, the format of every timestamp stored."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Registry:
    """A thread-safe handle on the registry database with one short transaction per write."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations "
                "(number INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)"
            )
            done = {row[0] for row in self.db.execute("SELECT number FROM _migrations").fetchall()}
            for number, name, apply in MIGRATIONS:
                if number in done:
                    continue
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    apply(self.db)
                    self.db.table("_migrations").insert(
                        {"number": number, "name": name, "applied_at": utc_now()}
                    )
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                logger.info("registry migrated to %d (%s)", number, name)

    def insert(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """Insert one row; JSON columns may be given as Python objects."""
        with self._lock:
            self.db.table(table).insert(_encode(row))
        return row

    def update(self, table: str, key: Any, changes: dict[str, Any]) -> None:
        """Change some columns of one row."""
        with self._lock:
            self.db.table(table).update(key, _encode(changes))

    def delete(self, table: str, key: Any) -> None:
        """Remove one row by primary key (a row that is not there is no error)."""
        with self._lock, contextlib.suppress(sqlite_utils.db.NotFoundError):
            self.db.table(table).delete(key)

    def get(self, table: str, key: Any, what: str = "") -> dict[str, Any]:
        """One row by primary key, or NotFoundError naming what was asked for."""
        with self._lock:
            try:
                row = self.db.table(table).get(key)
            except sqlite_utils.db.NotFoundError:
                label = what or table.rstrip("s").replace("_", " ")
                raise NotFoundError(f"no {label} {key!r}; list them to see what exists") from None
        return _decode(row)

    def find(self, table: str, key: Any) -> dict[str, Any] | None:
        """One row by primary key, or None."""
        with self._lock:
            try:
                return _decode(self.db.table(table).get(key))
            except sqlite_utils.db.NotFoundError:
                return None

    def rows(
        self, table: str, where: str | None = None, params: Any = None, order_by: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a table matching a SQL condition, decoded."""
        with self._lock:
            found = self.db.table(table).rows_where(where, params, order_by=order_by)
            return [_decode(row) for row in found]

    def write_many(self, writes: list[tuple[str, str, Any, dict[str, Any]]]) -> None:
        """Apply several inserts/updates atomically: ("insert"|"update", table, key, row)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for action, table, key, row in writes:
                    if action == "insert":
                        self.db.table(table).insert(_encode(row))
                    else:
                        self.db.table(table).update(key, _encode(row))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: json.dumps(value) if key in JSON_COLUMNS and value is not None else value
        for key, value in row.items()
    }


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: json.loads(value) if key in JSON_COLUMNS and isinstance(value, str) else value
        for key, value in row.items()
    }
