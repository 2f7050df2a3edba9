"""MCP tools of the query stage."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from turing.server.services import Services
from turing.tools.query import serve


def register(app: MCPServer, services: Services) -> None:
    """Declare the query tools on the app."""

    @app.tool()
    async def query_model(
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        routing_key: str | None = None,
    ) -> dict[str, Any]:
        """Ask a deployed model (or a model version or base model) and get its answer.

        Served by llama.cpp from the exported GGUF, with the chat template the model was
        trained on. Returns the text, the version and revision that answered, latency, time to
        first token and token counts. A deployment with several routes picks one by weight;
        give a routing_key to keep a user on one route (A/B tests).

        Args:
            model: A deployment name, a model version id (mv-...) or a base model name.
            messages: The conversation, e.g. [{"role": "user", "content": "..."}]; roles are
                system, user and assistant, and the last message must be from the user.
            max_tokens: Most tokens to generate, 1-2048.
            temperature: 0 for greedy (deterministic) decoding, up to 2.
            routing_key: A stable id of the caller (e.g. a user or session id): queries with
                the same key go to the same route of the deployment's current revision.
                Omit it for random routing by weight.
        """
        return await anyio.to_thread.run_sync(
            serve.query_model, services, model, messages, max_tokens, temperature, routing_key
        )
