"""Monitoring: the dashboard's overview of runs, evaluations and deployments, the training,
evaluation and deployment gauges of the Prometheus endpoint, and the `get_chart` MCP tool."""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any, TypeGuard

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ImageContent, TextContent

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import charts, jobs
from turing.tools.deploy.routing import parse_stored
from turing.tools.query import traffic_metrics

logger = logging.getLogger(__name__)

OVERVIEW_ROWS = 20  # runs and evaluations listed on the dashboard
OVERVIEW_WINDOW = "1h"  # the traffic window of the dashboard's deployment tables
EXPORTED_ROWS = 50  # runs and evaluations with gauges on /metrics: the newest ones
# Gauges of a run's latest step: (name, help, field of the step event).
RUN_GAUGES = (
    ("turing_run_step", "Optimiser steps a run has taken.", "step"),
    ("turing_run_total_steps", "Optimiser steps a run takes in all.", "total_steps"),
    ("turing_run_loss", "Training loss of a run's latest step.", "loss"),
    ("turing_run_learning_rate", "Learning rate of a run's latest step.", "learning_rate"),
    (
        "turing_run_tokens_per_second",
        "Training tokens per second of compute of a run.",
        "tokens_per_second",
    ),
    ("turing_run_eta_seconds", "Estimated seconds of training a run has left.", "eta_seconds"),
)
RUN_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


# ---- The dashboard's overview ----


def overview(services: Services, since: str | None = None) -> dict[str, Any]:
    """Runs with their progress, evaluations with their scores, and deployments with each
    route's traffic over the window (the last hour by default), for the caller's project."""
    window = since or OVERVIEW_WINDOW
    traffic_metrics.parse_since(window)  # a bad window is refused before anything is read
    return {
        "generated_at": utc_now(),
        "project": access.current().project,
        "window": window,
        "runs": _runs(services),
        "evals": _evals(services),
        "deployments": _deployments(services, window),
    }


def _runs(services: Services) -> list[dict[str, Any]]:
    rows = services.registry.rows("runs", order_by="created_at desc")
    listed = []
    for row in [row for row in rows if charts.visible(row)][:OVERVIEW_ROWS]:
        folder = Path(row["folder"])
        step = jobs.last_event(folder, "step") or {}
        validation = jobs.last_event(folder, "validation") or {}
        listed.append(
            {
                "run_id": row["id"],
                "status": row["status"],
                "dataset_id": row["dataset_id"],
                "base_model": row["base_model"],
                "step": step.get("step"),
                "total_steps": step.get("total_steps"),
                "loss": step.get("loss"),
                "validation_loss": validation.get("validation_loss"),
                "tokens_per_second": step.get("tokens_per_second"),
                "eta_seconds": step.get("eta_seconds"),
                "created_at": row["created_at"],
            }
        )
    return listed


def _evals(services: Services) -> list[dict[str, Any]]:
    rows = services.registry.rows("evals", order_by="created_at desc")
    listed = []
    for row in [row for row in rows if charts.visible_eval(services, row)][:OVERVIEW_ROWS]:
        result = row["result"] or {}
        scores = (result.get("scores") or {}).get("model", {})
        listed.append(
            {
                "eval_id": row["id"],
                "status": row["status"],
                "model": row["model"],
                "version_id": row.get("version_id"),
                "gate": row.get("gate"),
                "passed": (result.get("verdict") or {}).get("passed"),
                "scores": {
                    metric: {"value": scores[metric]["value"], "ci": scores[metric].get("ci")}
                    for metric in result.get("metrics") or []
                    if metric in scores
                },
                "created_at": row["created_at"],
            }
        )
    return listed


def _deployments(services: Services, window: str) -> list[dict[str, Any]]:
    listed = []
    for row in services.registry.rows("deployments", order_by="name"):
        if not charts.visible(row):
            continue
        found = traffic_metrics.deployment_metrics(services, row["name"], since=window)
        live = found["live"]
        listed.append(
            {
                "deployment": row["name"],
                "environment": row.get("environment"),
                "revision": found["current_revision"],
                "live": _traffic_summary(live),
                "routes": [
                    {
                        "version_id": route["version_id"],
                        "weight": route["weight"],
                        "shadow": bool(route.get("shadow")),
                        **_traffic_summary(route["metrics"]),
                    }
                    for route in found["routes"]["routes"]
                ],
            }
        )
    return listed


def _traffic_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": summary["count"],
        "errors": summary["errors"],
        "error_rate": summary["error_rate"],
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "cost": summary["cost"],
    }


# ---- Prometheus gauges ----


def prometheus_lines(services: Services, project: str = "*") -> list[str]:
    """Gauges of runs (progress, loss, speed, status), evaluations (scores with intervals,
    verdicts) and deployments (revision, route weights), in the text exposition format.

    Only the newest EXPORTED_ROWS runs and finished evaluations of the project have series,
    so the number of series stays bounded however many jobs the workspace keeps.
    """
    return (
        _run_lines(services, project)
        + _eval_lines(services, project)
        + _deployment_lines(services, project)
    )


def _run_lines(services: Services, project: str) -> list[str]:
    rows = services.registry.rows("runs", order_by="created_at desc")
    rows = [row for row in rows if charts.visible(row, project)][:EXPORTED_ROWS]
    steps = {row["id"]: jobs.last_event(Path(row["folder"]), "step") or {} for row in rows}
    lines = _family("turing_runs", "Runs by status.")
    for status in RUN_STATUSES:
        lines.append(_sample("turing_runs", {"status": status}, _count(rows, status)))
    lines += _family("turing_run_info", "A run's dataset, base model and project (always 1).")
    for row in rows:
        labels = {"run": row["id"], "dataset": row["dataset_id"], "base_model": row["base_model"]}
        lines.append(_sample("turing_run_info", {**labels, "project": row.get("project")}, 1))
    lines += _family("turing_run_status", "A run's current status (1 on that status).")
    lines += [
        _sample("turing_run_status", {"run": r["id"], "status": r["status"]}, 1) for r in rows
    ]
    for name, help_text, field in RUN_GAUGES:
        lines += _family(name, help_text)
        for row in rows:
            value = steps[row["id"]].get(field)
            if _finite(value):
                lines.append(_sample(name, {"run": row["id"]}, value))
    name = "turing_run_validation_loss"
    lines += _family(name, "Validation loss of a run's latest validation.")
    for row in rows:
        validation = jobs.last_event(Path(row["folder"]), "validation") or {}
        if _finite(validation.get("validation_loss")):
            lines.append(_sample(name, {"run": row["id"]}, validation["validation_loss"]))
    return lines


def _count(rows: list[dict[str, Any]], status: str) -> int:
    return sum(1 for row in rows if row["status"] == status)


def _eval_lines(services: Services, project: str) -> list[str]:
    rows = services.registry.rows("evals", "status = 'succeeded'", order_by="created_at desc")
    rows = [row for row in rows if charts.visible_eval(services, row, project)][:EXPORTED_ROWS]
    families = (
        ("turing_eval_score", "A score of an evaluation, per model scored.", 0),
        ("turing_eval_score_ci_low", "Lower bound of a score's 95% interval.", 1),
        ("turing_eval_score_ci_high", "Upper bound of a score's 95% interval.", 2),
    )
    lines = []
    for name, help_text, part in families:
        lines += _family(name, help_text)
        for row in rows:
            for role, table in ((row["result"] or {}).get("scores") or {}).items():
                for metric, score in table.items():
                    value = [score.get("value"), *(score.get("ci") or [None, None])][part]
                    if _finite(value):
                        labels = {"eval": row["id"], "role": role, "metric": metric}
                        lines.append(_sample(name, labels, value))
    lines += _family("turing_eval_passed", "An evaluation's gate verdict: 1 passed, 0 failed.")
    for row in rows:
        verdict = (row["result"] or {}).get("verdict")
        if verdict is not None:
            labels = {"eval": row["id"], "gate": row.get("gate") or ""}
            lines.append(_sample("turing_eval_passed", labels, int(bool(verdict["passed"]))))
    return lines


def _deployment_lines(services: Services, project: str) -> list[str]:
    rows = [
        row
        for row in services.registry.rows("deployments", order_by="name")
        if charts.visible(row, project)
    ]
    lines = _family("turing_deployment_revision", "A deployment's current revision.")
    for row in rows:
        labels = {"deployment": row["name"], "environment": row.get("environment") or ""}
        lines.append(_sample("turing_deployment_revision", labels, row["revision"]))
    name = "turing_deployment_route_weight"
    lines += _family(name, "Percentage of live traffic a route gets (0 for shadow routes).")
    for row in rows:
        revision = services.registry.get("deployment_revisions", (row["name"], row["revision"]))
        for route in parse_stored(revision["routes"]):
            traffic = "shadow" if route.shadow else "live"
            labels = {"deployment": row["name"], "version": route.version_id, "traffic": traffic}
            lines.append(_sample(name, labels, route.weight))
    return lines


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _family(name: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]


def _sample(name: str, labels: dict[str, Any], value: float) -> str:
    def escape(text: Any) -> str:
        return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    written = ",".join(f'{key}="{escape(label or "")}"' for key, label in labels.items())
    number = str(int(value)) if float(value).is_integer() else repr(float(value))
    return f"{name}{{{written}}} {number}"


# ---- MCP ----


def register(app: MCPServer, services: Services) -> None:
    """Declare the monitoring tools on the app."""

    @app.tool()
    async def get_chart(
        kind: str,
        runs: list[str] | None = None,
        evals: list[str] | None = None,
        deployment: str | None = None,
        since: str | None = None,
        metric: str | None = None,
    ) -> list[TextContent | ImageContent]:
        """Draw a monitoring chart as a PNG image, with a short text of what it shows.

        Use it to look at training progress, to compare evaluated models, or to watch a
        deployment's live traffic; the same charts are on the HTTP dashboard (/dashboard).

        Args:
            kind: "loss": training loss per step (solid) and validation loss (dashed) of runs;
                "eval": scores with 95% confidence intervals of each model an evaluation
                scored (the model, the base model, the champion); "traffic": a deployment's
                requests, p50/p95 latency, error rate and cost per route over time.
            runs: For "loss": up to 8 run ids; the newest runs with steps by default.
            evals: For "eval": up to 8 eval ids; the newest finished evaluations by default.
            deployment: For "traffic": the deployment's name (required).
            since: For "traffic": the window start, ISO 8601 or a duration back from now
                such as "15m", "24h"; the last 24 hours by default.
            metric: For "eval": one metric to draw (e.g. "accuracy", "p95_latency_ms");
                the evaluations' task metrics by default.
        """

        def draw() -> tuple[bytes, dict[str, Any]]:
            return charts.chart_png(
                services,
                kind,
                runs=runs,
                evals=evals,
                deployment=deployment,
                since=since,
                metric=metric,
            )

        png, data = await anyio.to_thread.run_sync(draw)
        logger.info("chart %s drawn (%d bytes)", kind, len(png))
        return [
            TextContent(type="text", text=charts.describe(data)),
            ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
        ]

    @app.resource("turing://dashboard/overview", mime_type="application/json")
    async def dashboard_overview() -> str:
        """What the dashboard shows: runs with their progress, evaluations with their scores,
        deployments with each route's traffic over the last hour."""
        return json.dumps(await anyio.to_thread.run_sync(overview, services), indent=2)
