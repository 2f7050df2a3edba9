"""Child-process jobs: start a worker module on a job folder, watch it, stop it, tick a scheduler.

A worker reads `job.json` from its folder and writes `result.json` (atomically) when it ends;
its stdout and stderr both go to `log.txt`, so no pipe can fill up and stall it. Workers run in
their own session (and process group), so they outlive the MCP client and the server that
started them. A worker launched with several processes runs under `torch.distributed.run`.

The supervisor also owns the scheduler thread: a daemon thread that calls one function about
once a second (and at once when woken), so queued jobs start and finished ones are recorded
without any client polling.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_NAME = "log.txt"
RESULT_NAME = "result.json"
JOB_NAME = "job.json"
TICK_SECONDS = 1.0


class JobSupervisor:
    """Starts worker processes, tells whether each is still alive, and runs the scheduler."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._children_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()

    def start(
        self,
        module: str,
        folder: Path,
        job: dict[str, Any] | None = None,
        *,
        processes: int = 1,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start `python -m module folder` and return its pid.

        Args:
            module: The worker module to run.
            folder: The job folder, passed as the worker's only argument.
            job: Written to `job.json` first when given; otherwise the folder already has one.
            processes: More than 1 launches the module under `torch.distributed.run` with that
                many processes on this machine (`--standalone`); the pid is the launcher's.
            env: Variables to set for the worker on top of this process's environment.
        """
        if job is not None:
            write_json_atomic(folder / JOB_NAME, job)
        command = [sys.executable, "-m", module, str(folder)]
        if processes > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone"]
            command[1:1] = [*launcher, f"--nproc_per_node={processes}"]
        variables = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        variables.update(env or {})
        with open(folder / LOG_NAME, "ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=variables,
                start_new_session=True,
            )
        with self._children_lock:
            self._children[child.pid] = child
        logger.info("started %s pid=%d processes=%d in %s", module, child.pid, processes, folder)
        return child.pid

    def is_alive(self, pid: int | None, folder: Path) -> bool:
        """Whether the worker for this folder is still running (also after a server restart)."""
        if not pid:
            return False
        with self._children_lock:
            child = self._children.get(pid)
        if child is not None and child.poll() is None:  # poll also reaps a finished child
            return True
        if child is not None:
            with self._children_lock:
                self._children.pop(pid, None)
        # The worker's own process, or one it started (torchrun's ranks outlive a killed
        # launcher), still working on this folder.
        return _process_runs_folder(pid, folder) or _group_runs_folder(pid, folder)

    def stop(self, pid: int | None, folder: Path) -> bool:
        """Ask a worker to stop (SIGTERM); it saves what it can and writes its result.

        The signal goes to the worker's whole process group, so every process of a
        `torch.distributed.run` launch hears it at once.
        """
        if not self.is_alive(pid, folder):
            return False
        assert pid is not None
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            os.kill(pid, signal.SIGTERM)
        logger.info("asked pid=%d (%s) to stop", pid, folder)
        return True

    def start_ticking(self, tick: Callable[[], None], interval: float = TICK_SECONDS) -> None:
        """Call `tick` on a daemon thread every `interval` seconds until `stop_ticking`.

        An exception in `tick` is logged and the next tick comes as usual. `wake` makes the
        next tick come at once.
        """
        if self._ticker is not None and self._ticker.is_alive():
            raise RuntimeError("the scheduler thread is already running")
        self._stopping.clear()
        self._ticker = threading.Thread(
            target=self._tick_forever, args=(tick, interval), name="turing-scheduler", daemon=True
        )
        self._ticker.start()

    def wake(self) -> None:
        """Make the scheduler tick now instead of at its next interval."""
        self._wake.set()

    def stop_ticking(self, timeout: float = 30.0) -> None:
        """Stop the scheduler thread, waiting for a tick in progress to finish."""
        self._stopping.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(timeout)
            self._ticker = None

    def _tick_forever(self, tick: Callable[[], None], interval: float) -> None:
        while not self._stopping.is_set():
            # Cleared before the tick, so a wake during the tick brings the next one at once.
            self._wake.clear()
            try:
                tick()
            except Exception:
                logger.exception("scheduler tick failed")
            self._wake.wait(interval)


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


def _group_runs_folder(group: int, folder: Path) -> bool:
    """Whether any process of process group `group` was started on this folder.

    Workers start in their own session, so their group id is their own pid and every process
    they start (torchrun's ranks) shares it.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may hold spaces; the fields after its ")" are plain.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and _process_runs_folder(int(entry.name), folder):
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False
