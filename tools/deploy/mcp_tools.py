"""MCP tools of the deployment stage."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import MCPServer
from pydantic import Field

from turing.server import access
from turing.server.services import Services
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.deploy import aliases, incidents, kill, lineage, remote, slo, traffic, versions

# A whole number as JSON gives it: no booleans, no numeric strings.
WholeNumber = Annotated[int, Field(strict=True)]


def register(app: MCPServer, services: Services) -> None:
    """Declare the deployment tools on the app."""

    @app.tool()
    async def export_model(
        run_id: str, format: str = "adapter", dtype: str = "f16"
    ) -> dict[str, Any]:
        """Export a succeeded run's LoRA adapter to GGUF as a model version (mv-...).

        The version is what deploy serves and what run_eval(model=<mv-...>) scores through
        llama.cpp. Versions are content-addressed: exporting the same weights in the same
        format and dtype again returns the same version. Adapters holding anything but LoRA
        matrices on the attention and MLP projections are refused, naming the tensors.

        Args:
            run_id: A succeeded run (run-...).
            format: "adapter" (default): a small llama.cpp LoRA GGUF served over the shared
                base model, so many versions share one base in memory. "merged": one GGUF of
                the base with the adapter folded in (takes up to a minute), for serving
                without the base or elsewhere (llama.cpp, Ollama); format in the answer is
                "gguf-merged-<dtype>".
            dtype: Weights of a merged export: "f16" (exact) or "q8_0" (about half the size,
                near-identical answers). Leave it out for format="adapter".
        """
        return await anyio.to_thread.run_sync(versions.export_run, services, run_id, format, dtype)

    @app.tool()
    async def register_remote_model(
        endpoint: str,
        model: str,
        base_model: str = DEFAULT_BASE_MODEL,
        api_key_env: str | None = None,
        check: bool = True,
        reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Register a model on another OpenAI-compatible server (another Turing, llama.cpp's
        llama-server, vLLM) as a model version, so deployments can route traffic to it.

        Use it to scale out: route part of a deployment's traffic to a second machine serving
        the same base model. The version id hashes the endpoint and model; registering the
        same pair again returns the same version. The server is asked for its /models first.

        Args:
            endpoint: Its API base URL, e.g. "http://10.0.0.7:8100/v1".
            model: The model name that server answers to (for another Turing: a deployment).
            base_model: The base model it runs (routes of one deployment share a base).
            api_key_env: An environment variable of this server holding the remote API key
                (sent as a bearer token; never stored).
            check: Set false to register a server that is not up yet.
            reason: Why, kept in the audit trail.
            actor: Who registers it, kept in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            lambda: remote.register_remote_version(
                services, endpoint, model, base_model, api_key_env, check, reason, actor
            )
        )

    @app.tool()
    async def deploy(
        model: str,
        deployment: str,
        reason: str = "",
        force_reason: str = "",
        actor: str = "",
        environment: str | None = None,
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
            actor: Who deploys (a person or an agent); recorded in the audit trail.
            environment: "dev", "staging" or "prod". A new deployment is in dev unless given;
                an existing one moves to the environment given. Deploying into or out of prod
                needs the admin role.
        """
        return await anyio.to_thread.run_sync(
            versions.deploy, services, model, deployment, reason, force_reason, actor, environment
        )

    @app.tool()
    async def set_routes(
        deployment: str,
        routes: list[dict[str, Any]],
        reason: str = "",
        force_reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Split a deployment's traffic between model versions: a new revision with these routes.

        Use it for A/B tests (two weighted routes; pass query_model a routing_key so each user
        stays on one route) and shadow routes (mirrored traffic whose answers nobody sees, to
        compare a version on real requests). Rules, all checked at once: weights are whole
        percentages 0-100 and the live (non-shadow) weights sum to exactly 100; weight 0
        receives nothing; a version appears once; versions exist and share the deployment's
        base model; at most 16 routes, 4 of them shadows. A version that newly receives live
        traffic or becomes the champion (highest weight) needs a passing gate verdict unless
        force_reason is given; shadows need none. Returns the new revision and its routes.

        Args:
            deployment: Endpoint name; created if new.
            routes: e.g. [{"version_id": "mv-a", "weight": 50}, {"version_id": "mv-b",
                "weight": 50}, {"version_id": "mv-c", "shadow": true}].
            reason: Why this revision exists; recorded with it and in the audit trail.
            force_reason: Route to versions without a passing gate verdict, for this reason.
            actor: Who makes the change (a person or an agent); recorded in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            traffic.set_routes, services, deployment, routes, reason, force_reason, actor
        )

    @app.tool()
    async def canary(
        deployment: str,
        model: str,
        percent: WholeNumber,
        reason: str = "",
        force_reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Start a canary: send `percent` of a deployment's traffic to a new version.

        The champion (the current highest-weight route) keeps 100 - percent; other live routes
        are dropped, shadow routes stay. The canary needs a passing gate verdict unless
        force_reason is given. Watch it, then call promote (it takes all traffic) or rollback.

        Args:
            deployment: An existing deployment.
            model: The canary: a model version (mv-...) or a succeeded run (exported first).
            percent: Its share of traffic, a whole number from 1 to 99.
            reason: Why; recorded with the revision and in the audit trail.
            force_reason: Start the canary without a passing gate verdict, for this reason.
            actor: Who starts it (a person or an agent); recorded in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            traffic.canary, services, deployment, model, percent, reason, force_reason, actor
        )

    @app.tool()
    async def promote(
        deployment: str, reason: str = "", force_reason: str = "", actor: str = ""
    ) -> dict[str, Any]:
        """Promote a deployment's canary or challenger: it gets 100% of live traffic.

        The challenger is the live route with the highest weight other than the champion; a
        tie between challengers is refused (decide with set_routes). As the new champion it
        needs a passing gate verdict unless force_reason is given. Shadow routes stay.

        Args:
            deployment: A deployment with a canary or challenger route.
            reason: Why; recorded with the revision and in the audit trail.
            force_reason: Promote without a passing gate verdict, for this reason.
            actor: Who promotes (a person or an agent); recorded in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            traffic.promote, services, deployment, reason, force_reason, actor
        )

    @app.tool()
    async def rollback(
        deployment: str,
        revision: WholeNumber | None = None,
        reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Roll a deployment back: a new revision with the routes of an earlier one.

        Without `revision`, copies the revision before the current one. Not gated, since those
        routes were served before. Revision numbers only grow: rolling back twice returns to
        the routes that were rolled back. Refused when there is no earlier revision.

        Args:
            deployment: The deployment to roll back.
            revision: The earlier revision whose routes to restore (see list_deployments and
                turing://deployments/{deployment}/audit); default: the previous one.
            reason: Why; recorded with the revision and in the audit trail.
            actor: Who rolls back (a person or an agent); recorded in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            traffic.rollback, services, deployment, revision, reason, actor
        )

    @app.tool()
    def list_deployments() -> list[dict[str, Any]]:
        """List deployments with their current revision and routes.

        Each route has version_id and weight (percent of live traffic); shadow routes, which
        only receive mirrored traffic, also carry "shadow": true.
        """
        return versions.describe_deployments(services)

    @app.tool()
    def list_models() -> dict[str, Any]:
        """List base models and exported model versions with their lineage (run, base)."""
        where, params = access.project_clause()
        return {
            "base_models": services.registry.rows("base_models", order_by="name"),
            "model_versions": services.registry.rows(
                "model_versions", where, params, order_by="created_at desc"
            ),
        }

    register_registry(app, services)
    register_incidents(app, services)


def register_registry(app: MCPServer, services: Services) -> None:
    """Declare the model registry's tools and resources: aliases, lineage, model cards."""

    @app.tool()
    async def set_alias(
        deployment: str, alias: str, version_id: str, reason: str = "", actor: str = ""
    ) -> dict[str, Any]:
        """Point a named alias of a deployment (e.g. "stable") at a model version.

        Afterwards "deployment@alias" names that version wherever a model is asked for
        (query_model, run_eval, deploy, canary, get_lineage). "champion" (the route with most
        traffic) and "challenger" (the next live route) exist on every deployment and follow
        its routes; they cannot be set. Every move is kept with its reason and actor
        (list_aliases, turing://deployments/{deployment}/audit).

        Args:
            deployment: An existing deployment.
            alias: 1-32 lowercase letters, digits, '-' or '_', starting with a letter.
            version_id: A model version (mv-...) on the deployment's base model, or an alias
                ("triage@champion") resolved now, so the new alias keeps that version.
            reason: Why the alias moves; recorded.
            actor: Who moves it (a person or an agent); recorded.
        """
        return await anyio.to_thread.run_sync(
            aliases.set_alias, services, deployment, alias, version_id, reason, actor
        )

    @app.tool()
    async def delete_alias(
        deployment: str, alias: str, reason: str = "", actor: str = ""
    ) -> dict[str, Any]:
        """Remove an alias set with set_alias; its history stays. champion/challenger cannot be.

        Args:
            deployment: The deployment the alias belongs to.
            alias: The alias name.
            reason: Why; recorded.
            actor: Who removes it; recorded.
        """
        return await anyio.to_thread.run_sync(
            aliases.delete_alias, services, deployment, alias, reason, actor
        )

    @app.tool()
    def list_aliases(deployment: str) -> dict[str, Any]:
        """List a deployment's aliases, the version each names now, and every move of each.

        Each alias says whether it follows the routes (champion, challenger) or was set with
        set_alias. History entries (oldest first) carry action, version_id,
        previous_version_id, reason, actor and time; route aliases also the revision.
        """
        return aliases.list_aliases(services, deployment)

    @app.tool()
    async def get_lineage(model: str) -> dict[str, Any]:
        """Trace a model version: dataset -> run -> checkpoint -> evals -> version -> deployments.

        Returns the dataset version (source file, SHA-256, rows, report summary), the run
        (configuration, base model, status, checkpoint selection), the exported checkpoint
        (step and metrics), every evaluation of the version (gate, verdict, scores with 95%
        intervals), the version itself (format, SHA-256, path), each deployment revision that
        routes to it and the aliases naming it now. The model card is
        turing://models/{version_id}/card.

        Args:
            model: A model version id (mv-...) or an alias (deployment@alias).
        """
        return await anyio.to_thread.run_sync(lineage.get_lineage, services, model)

    @app.resource("turing://models/{version_id}/lineage", mime_type="application/json")
    async def model_lineage(version_id: str) -> str:
        """A model version's lineage as JSON (see get_lineage); an alias works as the id."""
        found = await anyio.to_thread.run_sync(lineage.get_lineage, services, version_id)
        return json.dumps(found, indent=2)

    @app.resource("turing://models/{version_id}/card", mime_type="text/markdown")
    async def model_card(version_id: str) -> str:
        """A model version's model card (Markdown): data, training, scores, safety, intended
        use and limits, lineage. Generated on each read and written as MODEL_CARD.md beside
        the version's artifact."""
        path = await anyio.to_thread.run_sync(lineage.write_model_card, services, version_id)
        return path.read_text(encoding="utf-8")

    @app.resource("turing://deployments/{deployment}/aliases", mime_type="application/json")
    def deployment_aliases(deployment: str) -> str:
        """A deployment's aliases and their history as JSON (see list_aliases)."""
        return json.dumps(aliases.list_aliases(services, deployment), indent=2)


def register_incidents(app: MCPServer, services: Services) -> None:
    """Declare the incident tools and resources: SLOs, the kill switch, the incident log."""

    @app.tool()
    async def set_slo(
        deployment: str,
        max_error_rate: float | None = None,
        max_p95_latency_ms: float | None = None,
        max_safety_flag_rate: float | None = None,
        window_s: WholeNumber = slo.DEFAULT_WINDOW_S,
        min_requests: WholeNumber = slo.DEFAULT_MIN_REQUESTS,
        auto_rollback: bool = True,
        reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Set a deployment's service-level objective; a canary that breaches it is rolled back.

        Every few seconds the server measures each live route of the deployment's current
        revision over the queries of the last window_s seconds. Once a route has min_requests
        queries there, a value above a bound is a breach. A breaching canary (any live route
        but the champion) is rolled back automatically when auto_rollback is on: a new
        revision gives its weight to the champion, recorded as an auto_rollback incident with
        the measured value, the threshold and the window (list_incidents). A breaching
        champion is recorded as an slo_breach incident, and nothing is changed. Replaces the
        deployment's previous SLO; returns it with how each route measures now (see get_slo).

        Args:
            deployment: An existing deployment.
            max_error_rate: Largest share of failed queries, 0-1 (refusals of the caller's
                input, such as a prompt too long, do not count).
            max_p95_latency_ms: Largest 95th percentile of answered queries' latency, in ms.
            max_safety_flag_rate: Largest share of answered queries whose answer added
                personal data (emails, phone numbers, card numbers...) the prompt did not hold.
            window_s: Seconds of traffic judged, 10 to 604800 (default 300).
            min_requests: Queries a route needs in the window before it is judged (default
                20): below it nothing is rolled back, however bad the few queries were.
            auto_rollback: Roll back a breaching canary (default true); false only records.
            reason: Why; kept in the audit trail.
            actor: Who sets it; kept in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            lambda: slo.set_slo(
                services,
                deployment,
                max_error_rate,
                max_p95_latency_ms,
                max_safety_flag_rate,
                window_s,
                min_requests,
                auto_rollback,
                reason,
                actor,
            )
        )

    @app.tool()
    async def get_slo(deployment: str) -> dict[str, Any]:
        """Read a deployment's SLO and how each live route measures against it right now.

        For each route of the current revision: role (champion or canary), requests and
        answered queries in the window, error_rate, p95_latency_ms, safety_flag_rate, whether
        it has enough requests to be judged, and its breaches (slo, measured, threshold).
        "slo" is null when none is set.

        Args:
            deployment: An existing deployment.
        """
        return await anyio.to_thread.run_sync(slo.get_slo, services, deployment)

    @app.tool()
    def list_incidents(
        deployment: str | None = None, kind: str | None = None, limit: WholeNumber = 50
    ) -> dict[str, Any]:
        """List incidents, newest first, and the model versions the kill switch stops now.

        Kinds: auto_rollback (a breaching canary rolled back), slo_breach (a breach recorded
        without rollback), kill_switch and kill_lifted. Each has its time, deployment,
        version_id, trigger (what started it, in one line: the SLO, measured value, threshold
        and window, or who pulled the switch and why), actor and details.

        Args:
            deployment: Only this deployment's incidents.
            kind: Only incidents of this kind.
            limit: At most this many, 1 to 1000.
        """
        return {
            "incidents": incidents.list_incidents(services, deployment, kind, limit),
            "killed_versions": kill.killed_versions(services, deployment),
        }

    @app.tool()
    async def kill_version(version_id: str, reason: str, actor: str = "") -> dict[str, Any]:
        """Stop serving a model version at once: the emergency stop for a harmful version.

        From the next query on, the version answers nothing. A deployment routing live
        traffic to it answers from its other live routes instead (no new revision is made,
        so lift_kill restores exactly what was served); a deployment left with no live route
        refuses queries with the kill's reason; shadow copies to it stop; a query naming the
        version itself (or an alias of it) is refused. Recorded as a kill_switch incident for
        each deployment routing to it. Undo with lift_kill (admin). To stop a canary for
        good, rollback the deployment as well.

        Args:
            version_id: A model version (mv-...) or an alias (e.g. "triage@challenger").
            reason: Why it must stop; required, recorded as the incident's trigger.
            actor: Who stops it; recorded.
        """
        return await anyio.to_thread.run_sync(
            kill.kill_version, services, version_id, reason, actor
        )

    @app.tool()
    async def lift_kill(version_id: str, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Serve a version stopped by kill_version again, wherever its routes send traffic.

        Recorded as a kill_lifted incident. Check first that the cause is fixed (get_metrics,
        list_incidents).

        Args:
            version_id: The killed model version (mv-...) or an alias of it.
            reason: Why it may serve again; recorded.
            actor: Who lifts it; recorded.
        """
        return await anyio.to_thread.run_sync(kill.lift_kill, services, version_id, reason, actor)

    @app.resource("turing://incidents", mime_type="application/json")
    def incident_log() -> str:
        """Every incident (SLO breaches, automatic rollbacks, kill switch), newest first, and
        the versions the kill switch stops now (see list_incidents)."""
        found = {
            "killed_versions": kill.killed_versions(services),
            "incidents": incidents.list_incidents(services, limit=incidents.MAX_LIMIT),
        }
        return json.dumps(found, indent=2)

    @app.resource("turing://deployments/{deployment}/incidents", mime_type="application/json")
    def deployment_incidents(deployment: str) -> str:
        """One deployment's incidents, newest first."""
        found = incidents.list_incidents(services, deployment, limit=incidents.MAX_LIMIT)
        return json.dumps(found, indent=2)

    @app.resource("turing://deployments/{deployment}/slo", mime_type="application/json")
    async def deployment_slo(deployment: str) -> str:
        """A deployment's SLO and how each route measures against it now (see get_slo)."""
        found = await anyio.to_thread.run_sync(slo.get_slo, services, deployment)
        return json.dumps(found, indent=2)
