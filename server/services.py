"""The long-lived objects every tool works with: workspace, registry, job supervisor, engines,
query telemetry."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from turing.server.jobs import JobSupervisor
from turing.server.registry import Registry
from turing.server.workspace import Workspace

if TYPE_CHECKING:
    from turing.tools.query.pool import EnginePool
    from turing.tools.query.telemetry import Telemetry

SPILL_NAME = "telemetry-unwritten.jsonl"


@dataclass
class Services:
    """Shared state of one server process."""

    workspace: Workspace
    registry: Registry
    jobs: JobSupervisor = field(default_factory=JobSupervisor)
    _telemetry: Telemetry | None = field(default=None, init=False, repr=False)
    _telemetry_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def open(cls, workspace: Workspace | None = None) -> Services:
        """Open (and migrate) the registry of a workspace, TURING_HOME by default."""
        workspace = workspace or Workspace.from_env()
        return cls(workspace=workspace, registry=Registry(workspace.registry_path))

    @cached_property
    def engines(self) -> EnginePool:
        """llama.cpp engines, loaded on first query so the server starts without them."""
        from turing.tools.query.pool import EnginePool

        return EnginePool()

    @property
    def telemetry(self) -> Telemetry:
        """The background writer of query rows, started on first use."""
        from turing.tools.query.telemetry import Telemetry

        with self._telemetry_lock:  # one writer, even when the first requests come together
            if self._telemetry is None:
                self._telemetry = Telemetry(
                    self.workspace.registry_path, self.workspace.home / SPILL_NAME
                )
            return self._telemetry

    def close(self) -> None:
        """Write every recorded query and close the engines (what is not started is skipped)."""
        with self._telemetry_lock:
            telemetry = self._telemetry
        if telemetry is not None:
            telemetry.close()
        if "engines" in self.__dict__:
            self.engines.close()
