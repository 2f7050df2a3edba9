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
    async def export_model(run_id: str) -> dict[str, Any]:
        """Export a succeeded run's LoRA adapter to GGUF as a model version (mv-...).

        The version is what deploy serves and what run_eval(model=<mv-...>) scores through
        llama.cpp. Exporting the same weights again returns the same version.
        """
        return await anyio.to_thread.run_sync(versions.export_run, services, run_id)

    @app.tool()
    async def deploy(
        model: str, deployment: str, reason: str = "", force_reason: str = ""
    ) -> dict[str, Any]:
        """Route all of a named deployment's traffic to a model version.

        A run is exported to a model version (mv-...) first. If the deployment has a gate
        (set_gate), the version needs a passing verdict from run_eval(model, gate=deployment)
        against the gate's current revision and the current champion; without one the deploy
        is refused with every failing criterion named, unless force_reason is given. Every
        deploy is in the audit trail (turing://audit), a forced one with its reason and the
        failures it overrode. Query the deployment with query_model(model=<deployment>).

        Args:
            model: A succeeded run (run-...) or a model version (mv-...).
            deployment: Endpoint name: 1-64 letters, digits, '-', '_' or '.'; created if new.
            reason: Why this revision exists; recorded with it.
            force_reason: Deploy despite a missing or failing verdict, for this reason.
        """
        return await anyio.to_thread.run_sync(
            versions.deploy, services, model, deployment, reason, force_reason
        )

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
