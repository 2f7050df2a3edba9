"""MCP tools of the evaluation stage."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from turing.server.services import Services
from turing.tools.evals import evals


def register(app: MCPServer, services: Services) -> None:
    """Declare the evaluation tools on the app."""

    @app.tool()
    def run_eval(
        model: str,
        dataset_id: str,
        split: str = "validation",
        limit: int | None = None,
        compare_base: bool = True,
        backend: str = "auto",
    ) -> dict[str, Any]:
        """Score a model by exact match on a dataset split; returns an eval id at once.

        The model answers each row's conversation (greedy) and its answer is compared with the
        row's final assistant turn. The base model is scored on the same rows beside it. Poll
        get_eval for the scores.

        Args:
            model: A run id (its PyTorch adapter), a model version id (mv-..., its GGUF served by
                llama.cpp), a deployment name, or a base model name.
            dataset_id: A dataset from prepare_dataset.
            split: "validation", "train" or "all".
            limit: Score only the first N rows of the split.
            compare_base: Also score the base model on the same rows.
            backend: "auto" (runs: torch; versions, deployments, bases: llama_cpp), "torch" or
                "llama_cpp".
        """
        return evals.start_eval(services, model, dataset_id, split, limit, compare_base, backend)

    @app.tool()
    def get_eval(eval_id: str) -> dict[str, Any]:
        """Status, progress and scores (exact_match, base_exact_match) of an evaluation."""
        return evals.get_eval(services, eval_id)
