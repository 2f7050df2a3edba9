"""Job rows (runs, evals) kept in step with their worker processes, and each job's event log.

Statuses: `queued` (waiting for a free slot), `running`, `cancelling` (asked to stop), then one
of `succeeded`, `failed` or `cancelled`. A row moves between statuses only through `transition`,
a conditional update that holds across server processes sharing one workspace. `events.jsonl`
in a job folder is appended to by the worker and the server alike, one JSON line per event.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from turing.server.jobs import LOG_NAME, read_result, tail_text
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.finetune import checkpoints

logger = logging.getLogger(__name__)

QUEUED = "queued"
ACTIVE = ("running", "cancelling")
ENDED = ("succeeded", "failed", "cancelled")
EVENTS_NAME = "events.jsonl"
METRICS_NAME = "metrics.jsonl"
# A row marked running before its worker's pid is recorded is left alone this long.
LAUNCH_GRACE_SECONDS = 30.0
_TABLES = ("runs", "evals")


def append_event(run_dir: Path, type: str, message: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the folder's `events.jsonl` and return it.

    The line goes out in a single write on a file opened for appending, so the worker and the
    server can both append without interleaving their lines.

    Args:
        run_dir: The job folder.
        type: What happened, e.g. "queued", "checkpoint", "finished".
        message: One readable sentence about it.
        **fields: Further JSON-serialisable details (step, path, metrics, ...).
    """
    record = {"time": utc_now(), "type": type, "message": message, **fields}
    line = (json.dumps(record, default=str) + "\n").encode()
    descriptor = os.open(run_dir / EVENTS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return record


def read_events(folder: Path, name: str = METRICS_NAME) -> list[dict[str, Any]]:
    """Every complete JSON line a worker has appended (a half-written last line is skipped)."""
    path = folder / name
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def last_event(folder: Path, event_type: str, name: str = METRICS_NAME) -> dict[str, Any] | None:
    """The newest event of one type, read from the end of the file, or None."""
    path = folder / name
    if not path.exists():
        return None
    tail_bytes = 64_000
    lines = tail_text(path, tail_bytes).splitlines()
    if path.stat().st_size > tail_bytes:
        lines = lines[1:]  # the first line of a tail is usually cut
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("type") == event_type:
            return event
    return None


def transition(
    services: Services, table: str, key: str, expected: tuple[str, ...], changes: dict[str, Any]
) -> bool:
    """Change a job row only while its status is one of `expected`; return whether it was.

    One UPDATE on its own short connection: it is atomic across threads and across server
    processes sharing the workspace, and never joins a transaction of the registry's own
    connection. Values must be plain (str, int, float or None).
    """
    if table not in _TABLES:
        raise ValueError(f"transition works on {_TABLES}, not {table!r}")
    columns = ", ".join(f"{column} = ?" for column in changes)
    marks = ", ".join("?" for _ in expected)
    statement = f"UPDATE {table} SET {columns} WHERE id = ? AND status IN ({marks})"
    path = services.workspace.registry_path
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as connection:
        cursor = connection.execute(statement, [*changes.values(), key, *expected])
        return cursor.rowcount == 1


def refresh(
    services: Services, table: str, row: dict[str, Any], *, at_startup: bool = False
) -> dict[str, Any]:
    """Record the outcome of a job whose worker has exited; return the current row.

    Args:
        services: The server's services.
        table: "runs" or "evals".
        row: The job's registry row.
        at_startup: The server is reconciling after a restart, which the error and the
            `reconciled` event then say.
    """
    folder = Path(row["folder"])
    if row["status"] not in ACTIVE or services.jobs.is_alive(row["pid"], folder):
        return row
    if not row["pid"] and _launching(row):
        return row

    result = read_result(folder)
    died = result is None
    if died:
        result = _missing_result(row, folder, at_startup)
    resume: dict[str, Any] = {}
    if table == "runs" and result.get("status") in ("failed", "cancelled"):
        resume = resume_point(folder)
        result = {**result, **resume}
    changes = {
        "status": result.get("status", "failed"),
        "error": result.get("error"),
        "result": result,
        "finished_at": utc_now(),
    }
    if not transition(services, table, row["id"], ACTIVE, {"status": changes["status"]}):
        return services.registry.get(table, row["id"])  # another thread or server recorded it
    services.registry.update(table, row["id"], changes)

    logger.info("%s %s ended: %s", table.rstrip("s"), row["id"], changes["status"])
    if at_startup:
        message = f"left {row['status']} by the last server, worker gone: now {changes['status']}"
        append_event(folder, "reconciled", message, status=changes["status"], **resume)
    elif died and table == "runs":
        append_event(folder, "failed", changes["error"] or "the worker died", **resume)
    return {**row, **changes}


def resume_point(folder: Path) -> dict[str, Any]:
    """Whether a run folder holds a checkpoint to resume from, and its step."""
    latest = checkpoints.latest_resumable(folder)
    return {"resumable": latest is not None, "resume_step": latest["step"] if latest else None}


def refresh_active(services: Services) -> None:
    """Bring every job marked running or cancelling up to date with its worker."""
    for table in _TABLES:
        for row in services.registry.rows(table, "status in ('running', 'cancelling')"):
            refresh(services, table, row)


def reconcile_all(services: Services) -> None:
    """After a restart, settle every job left marked running whose process is gone.

    A job whose worker wrote its result while the server was down gets that result; one whose
    worker died without a result (killed, out of memory, machine restart) ends failed with an
    error saying so, and a run also records whether it can resume from a checkpoint. Queued
    runs stay queued for the scheduler.
    """
    for table in _TABLES:
        for row in services.registry.rows(table, "status in ('running', 'cancelling')"):
            refresh(services, table, row, at_startup=True)


def _launching(row: dict[str, Any]) -> bool:
    started = row.get("started_at")
    if not started:
        return False
    age = time.time() - datetime.fromisoformat(started).timestamp()
    return age < LAUNCH_GRACE_SECONDS


def _missing_result(row: dict[str, Any], folder: Path, at_startup: bool) -> dict[str, Any]:
    if row["status"] == "cancelling":
        # Stopped before its signal handler was installed (e.g. still importing): a clean cancel.
        return {"status": "cancelled", "error": None}
    last_lines = tail_text(folder / LOG_NAME, 2_000).strip().splitlines()[-3:]
    if at_startup:
        cause = (
            f"the server restarted and found the worker process (pid {row['pid']}) gone "
            "without a result"
        )
    else:
        cause = "the worker process exited without a result"
    return {"status": "failed", "error": f"{cause}; last log lines: " + " | ".join(last_lines)}
