"""Read-only resources: runs (logs, metrics, events), dataset reports, eval predictions."""

from __future__ import annotations

import json
from pathlib import Path

from mcp.server.mcpserver import MCPServer

from turing.server.jobs import LOG_NAME, tail_text
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.deploy.versions import describe_deployments
from turing.tools.finetune.runs import get_run, list_runs


def register(app: MCPServer, services: Services) -> None:
    """Declare every resource on the app."""

    @app.resource("turing://runs", mime_type="application/json")
    def runs() -> str:
        """Every fine-tuning run with its status, newest first."""
        return json.dumps(list_runs(services), indent=2)

    @app.resource("turing://runs/{run_id}/log", mime_type="text/plain")
    def run_log(run_id: str) -> str:
        """The last 20 kB of a run's training log."""
        return tail_text(Path(get_run(services, run_id)["folder"]) / LOG_NAME)

    @app.resource("turing://runs/{run_id}/metrics", mime_type="application/x-ndjson")
    def run_metrics(run_id: str) -> str:
        """A run's metric series: one JSON object per line (steps and validations)."""
        events = jobs.read_events(Path(get_run(services, run_id)["folder"]))
        return "".join(json.dumps(event) + "\n" for event in events)

    @app.resource("turing://runs/{run_id}/events", mime_type="application/x-ndjson")
    def run_events(run_id: str) -> str:
        """A run's lifecycle events, one JSON object per line: queued, started, checkpoint,
        validation, early_stopped, cancel_requested, finished, failed, reconciled, resumed,
        output_selected."""
        folder = Path(get_run(services, run_id)["folder"])
        events = jobs.read_events(folder, jobs.EVENTS_NAME)
        return "".join(json.dumps(event) + "\n" for event in events)

    @app.resource("turing://datasets/{dataset_id}/report", mime_type="application/json")
    def dataset_report(dataset_id: str) -> str:
        """The preparation report of a dataset version: rows kept and dropped, labels, problems."""
        row = services.registry.get("datasets", dataset_id, "dataset")
        return json.dumps(row["report"], indent=2)

    @app.resource("turing://datasets/{dataset_id}/problems", mime_type="application/x-ndjson")
    def dataset_problems(dataset_id: str) -> str:
        """Every problem found in a dataset's source, one JSON object per line, by line."""
        folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
        path = folder / "problems.jsonl"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    @app.resource("turing://evals/{eval_id}/predictions", mime_type="application/x-ndjson")
    def eval_predictions(eval_id: str) -> str:
        """Every prediction of an evaluation with its reference and whether it matched."""
        folder = Path(services.registry.get("evals", eval_id, "eval")["folder"])
        path = folder / "predictions.jsonl"
        return path.read_text() if path.exists() else ""

    @app.resource("turing://deployments", mime_type="application/json")
    def deployments() -> str:
        """Every deployment with its current revision and routes."""
        return json.dumps(describe_deployments(services), indent=2)
