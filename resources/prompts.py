"""MCP prompts: playbooks that walk an agent through Turing's own tools, step by step.

Each prompt renders one user message naming the real tools in the order to call them, with the
caller's deployment and version filled in, so a client can offer "ship a new version safely"
and "respond to an incident" as ready-made tasks.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import Field

DEFAULT_CANARY_PERCENT = 10


def register(app: MCPServer) -> None:
    """Declare the playbook prompts on the app."""

    @app.prompt(name="ship_new_version", title="Ship a new version safely")
    def ship_new_version(
        deployment: Annotated[str, Field(description="The deployment to ship to, e.g. triage")],
        model: Annotated[
            str, Field(description="The new version (mv-...) or a succeeded run (run-...)")
        ],
        canary_percent: Annotated[
            str, Field(description="Share of traffic for the canary, 1-99 (default 10)")
        ] = str(DEFAULT_CANARY_PERCENT),
    ) -> str:
        """Gate, canary, watch and promote a new model version without risking the traffic."""
        return ship_playbook(deployment, model, _percent(canary_percent))

    @app.prompt(name="respond_to_incident", title="Respond to an incident")
    def respond_to_incident(
        deployment: Annotated[str, Field(description="The deployment in trouble")],
        version_id: Annotated[
            str, Field(description="The suspect model version (mv-...), if one is known")
        ] = "",
        symptom: Annotated[
            str, Field(description="What was seen: errors, slow answers, harmful answers...")
        ] = "",
    ) -> str:
        """Assess, contain, verify and record an incident on a deployment."""
        return incident_playbook(deployment, version_id, symptom)


def ship_playbook(deployment: str, model: str, percent: int) -> str:
    """The steps of shipping `model` to `deployment` through a canary of `percent` %."""
    return f"""\
Ship {model} to the deployment {deployment!r} safely. Use Turing's tools in this order and stop \
at the first step that fails, saying why.

1. Know what you ship. If {model} is a run (run-...), call export_model(run_id="{model}") and \
use the model version id (mv-...) it returns as VERSION from here on; otherwise VERSION is \
{model}. Call get_lineage(model=VERSION) and check its dataset, run and evaluations.
2. Gate it. Call get_gate(deployment="{deployment}"). If there is no gate, ask the user for \
acceptance criteria and a dataset, then call set_gate. Call \
run_eval(model=VERSION, gate="{deployment}") and wait_for_eval(eval_id) until it ends. If the \
verdict fails, stop and report the failing criteria. Never pass force_reason unless the user \
explicitly asks for it and gives the reason.
3. Set the guard rails. Call get_slo(deployment="{deployment}"). If "slo" is null, call \
set_slo(deployment="{deployment}", max_error_rate=0.05, max_p95_latency_ms=<about twice the \
champion's p95 from get_metrics>, max_safety_flag_rate=0.01, window_s=300, min_requests=20, \
auto_rollback=true), adjusting the bounds with the user.
4. Start the canary. Call canary(deployment="{deployment}", model=VERSION, percent={percent}, \
reason="<why this version>").
5. Watch it. Every few minutes call get_slo(deployment="{deployment}") and \
list_incidents(deployment="{deployment}"). An auto_rollback incident means the canary breached \
an SLO and was rolled back: stop, and report its trigger. Wait until the canary route is \
"judged" (it has min_requests queries in the window) with no breaches. Then call \
compare_routes(deployment="{deployment}", metric="error_rate") and again with \
metric="latency_ms" and metric="pii_rate": a significant regression against the champion is a \
reason to rollback(deployment="{deployment}", reason="<the regression>") and stop.
6. Promote. Call promote(deployment="{deployment}", reason="<the evidence: verdict, SLO \
status, comparisons>").
7. Confirm. Call get_slo(deployment="{deployment}") once more after some traffic, and report the \
revision now serving, the verdict and the measurements that justified each step.
"""


def incident_playbook(deployment: str, version_id: str = "", symptom: str = "") -> str:
    """The steps of handling an incident on `deployment`."""
    suspect = version_id or "the suspect version (the canary, else the champion)"
    seen = f" Reported symptom: {symptom.strip()}." if symptom.strip() else ""
    return f"""\
Respond to an incident on the deployment {deployment!r}.{seen} Contain first, diagnose second, \
and record why you did each thing in every call's reason.

1. Assess (a minute, no longer). Call list_incidents(deployment="{deployment}") for \
automatic rollbacks, SLO breaches and kill switches already recorded; \
get_slo(deployment="{deployment}") for how each route measures now; \
get_metrics(deployment="{deployment}", since="15m") for errors_by_type, latency and pii_kinds \
per version and route; list_deployments for the current routes.
2. Contain.
   - Harmful or unsafe answers (personal data, dangerous content) from {suspect}: call \
kill_version(version_id="{version_id or "<mv-...>"}", reason="<what was seen>") at once. It \
stops serving that version from the next query on; its share goes to the deployment's other \
live routes, and a deployment with no other route refuses queries until it is fixed.
   - A canary that breaches (errors, latency) and was not rolled back automatically: call \
rollback(deployment="{deployment}", reason="<the breach>").
   - The champion itself is bad: find the last good revision in \
turing://deployments/{deployment}/audit and call rollback(deployment="{deployment}", \
revision=<that revision>, reason="<the breach>").
3. Verify. Call query_model(model="{deployment}", messages=[{{"role": "user", "content": \
"<a typical request>"}}]) and check which version_id answered; call \
get_slo(deployment="{deployment}") again: no route of the new revision should breach once it \
has traffic.
4. Record and hand over. Read turing://deployments/{deployment}/incidents and \
turing://deployments/{deployment}/audit, then summarise for the user: trigger, measured \
values, what you changed (revisions, kills) and what remains.
5. Follow up, not now: fix the cause (more or cleaner data, a new fine-tune), run_eval the \
fix with safety=true against the gate, and ship it with the "ship_new_version" prompt. \
lift_kill(version_id=...) needs an admin and only after the cause is fixed.
"""


def _percent(text: str) -> int:
    """The canary share from a prompt argument (prompt arguments are strings)."""
    try:
        percent = int(str(text).strip())
    except ValueError:
        percent = 0
    if not 1 <= percent <= 99:
        # An MCPError reaches the client as it is; the SDK hides other errors of a prompt.
        raise MCPError(INVALID_PARAMS, f"canary_percent={text!r}: give a whole number from 1 to 99")
    return percent
