"""MCP tools of the deployment stage."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from turing.server.services import Services
from turing.tools.deploy import versions


def register(app: MCPServer, services: Services) -> None:
    """Declare the deployment tools on the app."""

    @app.tool()
    async def deploy(run_id: str, deployment: str, reason: str = "") -> dict[str, Any]:
        """Export a succeeded run's LoRA adapter to GGUF and route a named deployment to it.

        Registers the export as a model version (mv-...) and adds a new revision to the
        deployment (created if new) that sends all traffic to that version. Query it with
        query_model(model=<deployment>).

        Args:
            run_id: A run whose status is succeeded.
            deployment: Endpoint name: 1-64 letters, digits, '-', '_' or '.'.
            reason: Why this revision exists; recorded with it.
        """
        return await anyio.to_thread.run_sync(versions.deploy, services, run_id, deployment, reason)

    @app.tool()
    def list_deployments() -> list[dict[str, Any]]:
        """List deployments with their current revision and routes (version id, weight)."""
        return versions.describe_deployments(services)

    @app.tool()
    def list_models() -> dict[str, Any]:
        """List base models and exported model versions with their lineage (run, base)."""
        return {
            "base_models": services.registry.rows("base_models", order_by="name"),
            "model_versions": services.registry.rows("model_versions", order_by="created_at desc"),
        }
