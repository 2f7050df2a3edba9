"""Child-process jobs: start a worker module on a job folder, watch it, read its result.

A worker reads `job.json` from its folder and writes `result.json` (atomically) when it ends;
its stdout and stderr both go to `log.txt`, so no pipe can fill up and stall it. Workers run in
their own session, so they outlive the MCP client and the server that started them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_NAME = "log.txt"
RESULT_NAME = "result.json"


class JobSupervisor:
    """Starts worker processes and tells whether each is still alive."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, module: str, folder: Path, job: dict[str, Any]) -> int:
        """Write the job description into the folder and start `python -m module folder`."""
        write_json_atomic(folder / "job.json", job)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        with open(folder / LOG_NAME, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", module, str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self._children[child.pid] = child
        logger.info("started %s pid=%d in %s", module, child.pid, folder)
        return child.pid

    def is_alive(self, pid: int | None, folder: Path) -> bool:
        """Whether the worker for this folder is still running (also after a server restart)."""
        if not pid:
            return False
        child = self._children.get(pid)
        if child is not None:
            alive = child.poll() is None
            if not alive:
                del self._children[pid]
            return alive
        return _process_runs_folder(pid, folder)

    def stop(self, pid: int | None, folder: Path) -> bool:
        """Ask a worker to stop (SIGTERM); it saves what it can and writes its result."""
        if not self.is_alive(pid, folder):
            return False
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        logger.info("asked pid=%d (%s) to stop", pid, folder)
        return True


def read_result(folder: Path) -> dict[str, Any] | None:
    """The result a worker wrote, or None if it wrote none."""
    path = folder / RESULT_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary name and rename it into place, so readers never see half."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2))
    os.replace(temporary, path)


def tail_text(path: Path, max_bytes: int = 20_000) -> str:
    """The last part of a text file (a log), or an empty string if it does not exist yet."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        return handle.read().decode("utf-8", errors="replace")


def _process_runs_folder(pid: int, folder: Path) -> bool:
    # A pid can be reused after a restart; only a process started on this folder counts.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(folder).encode() in cmdline
