"""MCP tools of the fine-tuning stage."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from turing.server.services import Services
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.base_models import register_base_model as register_base
from turing.tools.finetune import runs


def register(app: MCPServer, services: Services) -> None:
    """Declare the fine-tuning tools on the app."""

    @app.tool()
    def start_finetune(
        dataset_id: str,
        base_model: str = DEFAULT_BASE_MODEL,
        hyperparameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start LoRA fine-tuning of a base model on a dataset; returns a run id at once.

        Training runs in a background process and takes minutes. Poll get_run with the run id
        for progress (step, loss, tokens/s, ETA); the run is done when its status is succeeded,
        failed or cancelled.

        Args:
            dataset_id: A dataset from prepare_dataset.
            base_model: A registered base model; the default is the bundled SmolLM2-135M-Instruct.
            hyperparameters: Optional overrides, e.g. {"epochs": 3, "learning_rate": 0.001,
                "batch_size": 16, "lora_rank": 16, "lora_alpha": 32, "max_seq_len": 512,
                "seed": 0}. Unknown keys or bad values are all reported together.
        """
        return runs.start_run(services, dataset_id, base_model, hyperparameters)

    @app.tool()
    def get_run(run_id: str) -> dict[str, Any]:
        """Status, latest progress (step, total_steps, loss, tokens/s, ETA) and result of a run."""
        return runs.describe_run(services, run_id)

    @app.tool()
    def list_runs(status: str | None = None) -> list[dict[str, Any]]:
        """List fine-tuning runs, newest first; status: running, succeeded, failed or cancelled."""
        return runs.list_runs(services, status)

    @app.tool()
    def cancel_run(run_id: str) -> dict[str, Any]:
        """Stop a running fine-tuning run; it ends with status cancelled."""
        return runs.cancel_run(services, run_id)

    @app.tool()
    def register_base_model(name: str, gguf_path: str) -> dict[str, Any]:
        """Register a local GGUF model file (llama architecture) as a base model for fine-tuning."""
        return register_base(services, name, gguf_path)
