"""MCP tools of the dataset stage."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from turing.server.services import Services
from turing.tools.datasets.store import create_dataset, describe_dataset


def register(app: MCPServer, services: Services) -> None:
    """Declare the dataset tools on the app."""

    @app.tool()
    def prepare_dataset(
        path: str,
        format: str = "auto",
        columns: dict[str, str] | None = None,
        system_prompt: str | None = None,
        validation_fraction: float = 0.1,
        seed: int = 0,
        on_error: str = "reject",
    ) -> dict[str, Any]:
        """Turn a local training file into a stored, versioned dataset with a validation split.

        Call this first: fine-tuning and evaluation take the returned dataset_id. The same file
        and options return the same dataset_id, so calling twice is safe.

        Args:
            path: Absolute path of a chat JSONL file (one {"messages": [{"role", "content"}...]}
                per line) or a CSV/TSV file with a header row.
            format: "auto" (from the file), "chat_jsonl" or "csv".
            columns: For CSV only: which column gives each turn, e.g.
                {"user": "text", "assistant": "category"}; "system" is optional.
            system_prompt: A system message added to every row (e.g. the task and its labels).
            validation_fraction: Share of rows held out for validation, 0 to 0.5.
            seed: Seed of the deterministic split.
            on_error: "reject" (any invalid row fails the call and lists every problem with its
                line number) or "skip" (invalid rows are dropped and counted in the report).

        Returns:
            dataset_id, row counts per split, label distribution, dropped rows, and report_uri.
        """
        return create_dataset(
            services,
            path,
            format=format,
            columns=columns,
            system_prompt=system_prompt,
            validation_fraction=validation_fraction,
            seed=seed,
            on_error=on_error,
        )

    @app.tool()
    def list_datasets() -> list[dict[str, Any]]:
        """List stored dataset versions, newest first, with their row counts."""
        rows = services.registry.rows("datasets", order_by="created_at desc")
        return [describe_dataset(row) for row in rows]
