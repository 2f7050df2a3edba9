"""The long-lived objects every tool works with: workspace, registry, job supervisor, engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from turing.server.jobs import JobSupervisor
from turing.server.registry import Registry
from turing.server.workspace import Workspace

if TYPE_CHECKING:
    from turing.tools.query.engine import EnginePool


@dataclass
class Services:
    """Shared state of one server process."""

    workspace: Workspace
    registry: Registry
    jobs: JobSupervisor = field(default_factory=JobSupervisor)

    @classmethod
    def open(cls, workspace: Workspace | None = None) -> Services:
        """Open (and migrate) the registry of a workspace, TURING_HOME by default."""
        workspace = workspace or Workspace.from_env()
        return cls(workspace=workspace, registry=Registry(workspace.registry_path))

    @cached_property
    def engines(self) -> EnginePool:
        """llama.cpp engines, loaded on first query so the server starts without them."""
        from turing.tools.query.engine import EnginePool

        return EnginePool()
