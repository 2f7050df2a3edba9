"""Assemble the MCP server: shared services, every stage's tools, the resources, the scheduler.

`create_app` settles jobs left over from a previous server process, then starts the scheduler
thread that starts queued runs and records finished jobs about once a second.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer

from turing.resources import catalog, prompts
from turing.server import __version__
from turing.server.access import GuardedServer
from turing.server.containment import Containment
from turing.server.services import Services
from turing.tools import jobs, monitoring
from turing.tools.datasets import mcp_tools as dataset_tools
from turing.tools.deploy import mcp_tools as deploy_tools
from turing.tools.deploy import slo
from turing.tools.evals import mcp_tools as eval_tools
from turing.tools.finetune import mcp_tools as finetune_tools
from turing.tools.finetune import runs
from turing.tools.query import mcp_tools as query_tools

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Turing runs the whole life of a small custom language model on this machine.
The loop: prepare_dataset (a local JSONL/CSV file -> dataset_id) -> start_finetune (-> run_id,
queued until a training slot is free; wait_for_run until succeeded) -> set_gate on the
deployment name (acceptance criteria such as "accuracy >= base + 0.1", safety suites) ->
run_eval(model=<run_id>, gate=<deployment>) (exports the run to a model version and judges it
as served; wait_for_eval: scores with confidence intervals beside the base model and the
champion, paired tests, the verdict) -> deploy(model=<version_id>, deployment) -> query_model
(model=<deployment>). deploy refuses a version without a passing verdict unless given a
force_reason, which the audit trail keeps. Traffic: canary (a percentage to a new version),
promote, rollback, set_routes (weighted A/B and shadow routes; query_model's routing_key keeps a
caller on one route). A model is named by a deployment, a version (mv-...), an alias
(deployment@champion, deployment@challenger or one made with set_alias) or a base model.
get_lineage and turing://models/{id}/card trace a version from its data to its deployments;
set_pricing, get_metrics and compare_routes read the traffic (latency, errors, tokens, cost,
savings, A/B tests); get_chart draws loss curves, eval scores with intervals and a deployment's
live traffic per route as images. Long work returns an id at once; wait or poll for its status.
A failed or cancelled run continues with resume_run.
Operations: set_slo guards a deployment (a canary breaching it is rolled back automatically);
kill_version stops a version at once (an admin lifts it with lift_kill); list_incidents shows
what happened; the prompts ship_new_version and respond_to_incident walk through both. With
set_query_logging on, answers are kept PII-redacted; record_feedback(query_id) rates or corrects
one, and prepare_dataset(path="queries://<deployment>") makes the next dataset from them.
Over HTTP each call runs as its token's role (viewer, operator, admin) in its project; a refusal
names the role needed. File paths must be absolute and inside the allowed input folders.
"""


def create_app(services: Services | None = None) -> MCPServer:
    """Build the Turing MCP server over a workspace (TURING_HOME by default).

    The scheduler thread it starts runs until `services.jobs.stop_ticking()` (a daemon thread,
    so it never keeps the process alive).
    """
    services = services or Services.open()
    limit = runs.max_running()  # a bad TURING_MAX_RUNNING stops the server here, not every tick
    jobs.reconcile_all(services)

    # Every call is checked: the caller's role and project, and the paths it names.
    app = GuardedServer(
        services,
        Containment.from_env(services.workspace.home),
        name="turing",
        version=__version__,
        instructions=INSTRUCTIONS,
        extensions=[finetune_tools.RunTasks(services)],
    )
    stages = (dataset_tools, finetune_tools, eval_tools, deploy_tools, query_tools, monitoring)
    for stage in stages:
        stage.register(app, services)
    catalog.register(app, services)
    prompts.register(app)
    _forbid_unknown_arguments(app)
    _accept_log_levels(app)

    monitor = slo.SloMonitor(services)  # a bad TURING_SLO_CHECK_S stops the server here too

    def tick() -> None:
        try:
            runs.advance(services)
        finally:
            monitor.tick()  # SLOs of deployments, at most every TURING_SLO_CHECK_S seconds

    services.jobs.start_ticking(tick)
    logger.info(
        "turing %s serving workspace %s (up to %d runs at once)",
        __version__,
        services.workspace.home,
        limit,
    )
    return app


def _accept_log_levels(app: MCPServer) -> None:
    """Answer `logging/setLevel`, which clients of the 2025 protocol send. Turing logs to stderr
    and sends no MCP log notifications, so no level lets any through."""

    async def set_level(
        context: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        logger.debug("a client asked for MCP log messages at %s and above", params.level)
        return types.EmptyResult()

    # MCPServer has no public hook for this method, deprecated in the 2026 protocol.
    app._lowlevel_server.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, set_level
    )


def _forbid_unknown_arguments(app: MCPServer) -> None:
    """Make a misspelt argument an error: by default the SDK drops arguments it does not know,
    so `pii_policy="keep"` would run with the default and look as if it had been applied."""
    for tool in app._tool_manager.list_tools():  # the SDK exposes no public list of Tool objects
        model = tool.fn_metadata.arg_model
        model.model_config["extra"] = "forbid"
        model.model_rebuild(force=True)
