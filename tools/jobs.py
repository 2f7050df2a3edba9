"""Job rows (runs, evals) kept in step with their worker processes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from turing.server.jobs import LOG_NAME, read_result, tail_text
from turing.server.registry import utc_now
from turing.server.services import Services

logger = logging.getLogger(__name__)

ACTIVE = ("running", "cancelling")


def refresh(services: Services, table: str, row: dict[str, Any]) -> dict[str, Any]:
    """Record the outcome of a job whose worker has exited; return the current row."""
    folder = Path(row["folder"])
    if row["status"] not in ACTIVE or services.jobs.is_alive(row["pid"], folder):
        return row

    result = read_result(folder)
    if result is None and row["status"] == "cancelling":
        # Stopped before its signal handler was installed (e.g. still importing): a clean cancel.
        result = {"status": "cancelled", "error": None}
    elif result is None:
        # The worker died without writing a result (killed, out of memory, machine restart).
        last_lines = tail_text(folder / LOG_NAME, 2_000).strip().splitlines()[-3:]
        result = {
            "status": "failed",
            "error": "the worker process exited without a result; last log lines: "
            + " | ".join(last_lines),
        }
    changes = {
        "status": result.get("status", "failed"),
        "error": result.get("error"),
        "result": result,
        "finished_at": utc_now(),
    }
    services.registry.update(table, row["id"], changes)
    logger.info("%s %s ended: %s", table.rstrip("s"), row["id"], changes["status"])
    return {**row, **changes}


def reconcile_all(services: Services) -> None:
    """After a restart, settle every job left marked running whose process is gone."""
    for table in ("runs", "evals"):
        for row in services.registry.rows(table, "status in ('running', 'cancelling')"):
            refresh(services, table, row)


def read_events(folder: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
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
