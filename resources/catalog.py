"""Read-only resources: runs (logs, metrics, events), dataset reports, evaluations (reports,
predictions, safety answers), deployments and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from turing.server.containment import workspace_path
from turing.server.jobs import LOG_NAME, tail_text
from turing.server.services import Services
from turing.tools import audit, jobs
from turing.tools.deploy.versions import describe_deployments
from turing.tools.evals.evals import get_eval
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
        return tail_text(workspace_path(services.workspace.home, _run_folder(run_id) / LOG_NAME))

    @app.resource("turing://runs/{run_id}/metrics", mime_type="application/x-ndjson")
    def run_metrics(run_id: str) -> str:
        """A run's metric series: one JSON object per line (steps and validations)."""
        events = jobs.read_events(_run_folder(run_id))
        return "".join(json.dumps(event) + "\n" for event in events)

    @app.resource("turing://runs/{run_id}/events", mime_type="application/x-ndjson")
    def run_events(run_id: str) -> str:
        """A run's lifecycle events, one JSON object per line: queued, started, checkpoint,
        validation, early_stopped, cancel_requested, finished, failed, reconciled, resumed,
        output_selected."""
        events = jobs.read_events(_run_folder(run_id), jobs.EVENTS_NAME)
        return "".join(json.dumps(event) + "\n" for event in events)

    @app.resource("turing://datasets/{dataset_id}/report", mime_type="application/json")
    def dataset_report(dataset_id: str) -> str:
        """The preparation report of a dataset version: rows kept and dropped, labels, problems."""
        row = services.registry.get("datasets", dataset_id, "dataset")
        return json.dumps(row["report"], indent=2)

    @app.resource("turing://datasets/{dataset_id}/problems", mime_type="application/x-ndjson")
    def dataset_problems(dataset_id: str) -> str:
        """Every problem found in a dataset's source, one JSON object per line, by line."""
        folder = services.registry.get("datasets", dataset_id, "dataset")["folder"]
        path = workspace_path(services.workspace.home, Path(folder) / "problems.jsonl")
        return path.read_text(encoding="utf-8") if path.exists() else ""

    @app.resource("turing://evals/{eval_id}/predictions", mime_type="application/x-ndjson")
    def eval_predictions(eval_id: str) -> str:
        """Every task row of an evaluation: the reference and, for each model scored (model,
        base, champion), its answer, per-metric scores and whether it was wrong."""
        return _predictions(eval_id, lambda line: True)

    @app.resource("turing://evals/{eval_id}/predictions/wrong", mime_type="application/x-ndjson")
    def eval_wrong_predictions(eval_id: str) -> str:
        """The rows the evaluated model got wrong (by the first metric of the eval)."""
        return _predictions(eval_id, lambda line: line["model"]["wrong"])

    @app.resource(
        "turing://evals/{eval_id}/predictions/label/{label}", mime_type="application/x-ndjson"
    )
    def eval_label_predictions(eval_id: str, label: str) -> str:
        """The rows whose reference is one label (URL-encode the label)."""
        return _predictions(eval_id, lambda line: line.get("label") == label)

    @app.resource("turing://evals/{eval_id}/safety", mime_type="application/x-ndjson")
    def eval_safety(eval_id: str) -> str:
        """Every safety prompt of an evaluation (harmful, safe, canaries) with each model's
        answer, whether it refused (and by which rule), PII found, canary leaked."""
        path = workspace_path(services.workspace.home, _eval_folder(eval_id) / "safety.jsonl")
        return path.read_text() if path.exists() else ""

    @app.resource("turing://evals/{eval_id}/report", mime_type="application/json")
    def eval_report(eval_id: str) -> str:
        """An evaluation in full: request, scores with intervals, comparisons, verdict."""
        found = get_eval(services, eval_id)
        found["result"] = services.registry.get("evals", eval_id, "eval")["result"]
        return json.dumps(found, indent=2)

    @app.resource("turing://audit", mime_type="application/json")
    def audit_trail() -> str:
        """The audit trail, newest first: gates set, deploys, forced deploys with reasons, and
        every call of a mutating tool (actor, project, arguments with secrets masked, result)."""
        return json.dumps(audit.read(services), indent=2)

    @app.resource("turing://deployments/{deployment}/audit", mime_type="application/json")
    def deployment_audit(deployment: str) -> str:
        """The audit trail of one deployment, newest first."""
        return json.dumps(audit.read(services, deployment), indent=2)

    def _eval_folder(eval_id: str) -> Path:
        folder = services.registry.get("evals", eval_id, "eval")["folder"]
        return workspace_path(services.workspace.home, folder)

    def _run_folder(run_id: str) -> Path:
        return workspace_path(services.workspace.home, get_run(services, run_id)["folder"])

    def _predictions(eval_id: str, keep: Callable[[dict[str, Any]], bool]) -> str:
        path = workspace_path(services.workspace.home, _eval_folder(eval_id) / "predictions.jsonl")
        if not path.exists():
            return ""
        lines = (json.loads(line) for line in path.read_text().splitlines() if line)
        return "".join(json.dumps(line) + "\n" for line in lines if keep(line))

    @app.resource("turing://deployments", mime_type="application/json")
    def deployments() -> str:
        """Every deployment with its current revision and routes."""
        return json.dumps(describe_deployments(services), indent=2)
