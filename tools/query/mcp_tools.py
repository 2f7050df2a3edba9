"""MCP tools and resources of the query stage: queries, pricing, traffic metrics, A/B tests."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import MCPServer
from pydantic import Field

from turing.server.services import Services
from turing.tools.errors import InvalidInputError
from turing.tools.query import feedback, serve, telemetry, traffic_metrics

# Numbers as JSON gives them: no booleans and no numeric strings (a float field takes ints).
WholeNumber = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]


def register(app: MCPServer, services: Services) -> None:
    """Declare the query tools on the app."""
    # Queries waiting for a busy engine hold worker threads; a limiter of their own keeps them
    # from starving the other tools (anyio's default pool has 40 threads).
    threads = anyio.CapacityLimiter(serve.QUERY_THREADS)

    @app.tool()
    async def query_model(
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: WholeNumber = 256,
        temperature: Number = 0.0,
        routing_key: str | None = None,
        top_p: Number = 1.0,
        stop: list[str] | None = None,
    ) -> dict[str, Any]:
        """Ask a deployed model (or a model version or base model) and get its answer.

        Served by llama.cpp from the exported GGUF, with the chat template the model was
        trained on. Returns the text, the version and revision that answered, latency, time to
        first token, token counts, the query_id, and logged: whether the deployment's query log
        kept the (PII-redacted) text, so that record_feedback can rate it by query_id. A
        deployment with several routes picks one by weight; give a routing_key to keep a user
        on one route (A/B tests).

        Args:
            model: A deployment name, a model version id (mv-...) or a base model name.
            messages: The conversation, e.g. [{"role": "user", "content": "..."}]; roles are
                system, user and assistant, and the last message must be from the user.
            max_tokens: Most tokens to generate, 1-2048.
            temperature: 0 for greedy (deterministic) decoding, up to 2.
            routing_key: A stable id of the caller (e.g. a user or session id): queries with
                the same key go to the same route of the deployment's current revision.
                Omit it for random routing by weight.
            top_p: Nucleus sampling mass when temperature > 0, in (0, 1].
            stop: Up to 4 strings that end the answer (not included in it).
        """
        return await anyio.to_thread.run_sync(
            serve.query_model,
            services,
            model,
            messages,
            max_tokens,
            temperature,
            routing_key,
            top_p,
            stop,
            limiter=threads,
        )

    @app.tool()
    async def set_pricing(
        deployment: str,
        price_per_1k_tokens: Number,
        replaced_model: str | None = None,
        replaced_price_per_1k_tokens: Number = 0.0,
        reason: str = "",
        actor: str = "",
    ) -> dict[str, Any]:
        """Set a deployment's price per 1,000 tokens, and the foundation model it replaces.

        Each query is then costed at tokens in + out / 1000 * price, and what the replaced
        model would have charged for the same tokens, so metrics report cost and savings.
        Queries recorded earlier keep their old prices. Without pricing, costs are 0 and the
        metrics say "not configured".

        Args:
            deployment: An existing deployment.
            price_per_1k_tokens: What serving 1,000 tokens of this deployment costs (any
                currency, used consistently), 0-1000; e.g. an estimate of hardware cost.
            replaced_model: The foundation model this deployment stands in for, e.g.
                "gpt-4o-mini"; required when replaced_price_per_1k_tokens is above 0.
            replaced_price_per_1k_tokens: That model's price per 1,000 tokens, same currency.
            reason: Why; kept in the audit trail.
            actor: Who sets it (a person or an agent); kept in the audit trail.
        """
        return await anyio.to_thread.run_sync(
            telemetry.set_pricing,
            services,
            deployment,
            price_per_1k_tokens,
            replaced_model,
            replaced_price_per_1k_tokens,
            reason,
            actor,
        )

    @app.tool()
    async def get_metrics(
        deployment: str | None = None,
        version_id: str | None = None,
        since: str | None = None,
        revision: int | None = None,
    ) -> dict[str, Any]:
        """Traffic metrics of a deployment or a model version, from every recorded query.

        Give exactly one of deployment or version_id. Returns, for live and shadow traffic
        apart: count, errors, error_rate, latency_ms and ttft_ms percentiles (p50/p95/p99,
        answered queries), tokens_in/out, decode_tokens_per_s, cost, replaced_cost, savings
        and PII flags (personal data in answers that the prompt did not hold). A deployment's
        metrics are also broken out per version and per route of a revision; a version's per
        deployment.

        Args:
            deployment: A deployment name.
            version_id: A model version id (mv-...), an alias (deployment@alias) or a base
                model name.
            since: Only queries from this time on: ISO 8601 (e.g. 2026-12-05T09:00:00Z) or a
                duration back from now (e.g. "15m", "24h", "7d"). Omit for all time.
            revision: For a deployment, the revision whose routes are broken out; the
                current one by default.
        """
        if (deployment is None) == (version_id is None):
            raise InvalidInputError("give exactly one of deployment or version_id")
        if deployment is not None:
            return await anyio.to_thread.run_sync(
                traffic_metrics.deployment_metrics, services, deployment, since, revision
            )
        if revision is not None:
            raise InvalidInputError("revision applies to a deployment's metrics, not a version's")
        return await anyio.to_thread.run_sync(
            traffic_metrics.version_metrics, services, version_id, since
        )

    @app.tool()
    async def compare_routes(
        deployment: str,
        metric: str,
        revision: int | None = None,
        since: str | None = None,
        confidence: Number = 0.95,
    ) -> dict[str, Any]:
        """A/B test: compare the routes of a deployment revision on one metric, with a
        significance test of each challenger against the champion.

        Per route: the value with its confidence interval and how many queries it rests on.
        Per challenger: the difference from the champion (challenger - champion), its interval,
        the test and its p-value (Holm-adjusted across challengers) and whether it is
        significant. Value metrics use Mann-Whitney's U test, rates Fisher's exact test.

        Args:
            deployment: An existing deployment.
            metric: One of latency_ms, ttft_ms, tokens_in, tokens_out, decode_tokens_per_s,
                cost (per-query values), error_rate, pii_rate (shares of queries).
            revision: The revision whose routes to compare; the current one by default.
            since: Only queries from this time on (ISO 8601 or e.g. "24h"); all by default.
            confidence: Of the intervals, between 0 and 1; significance is at 1 - confidence.
        """
        return await anyio.to_thread.run_sync(
            traffic_metrics.compare_routes,
            services,
            deployment,
            metric,
            revision,
            since,
            confidence,
        )

    @app.tool()
    async def set_query_logging(deployment: str, enabled: Flag, reason: str = "") -> dict[str, Any]:
        """Turn on (or off) keeping the text of a deployment's queries, for feedback and for
        training the next dataset version on them.

        Off by default. While on, each query the deployment answers keeps its conversation and
        answer in the query log with emails, phone numbers, payment cards, IBANs, national
        ids, IP addresses and secrets replaced by placeholders such as [EMAIL] before storage;
        query_model then returns logged: true and a query_id for record_feedback. Turning it
        off stops logging new queries; what was logged stays. The change is audited.

        Args:
            deployment: An existing deployment.
            enabled: true to log its queries from now on, false to stop.
            reason: Why (e.g. "users consented in the app's terms"); kept in the audit trail.

        Returns:
            enabled, who changed it and when, and how many queries are logged, rated and
            corrected.
        """
        return await anyio.to_thread.run_sync(
            feedback.set_query_logging, services, deployment, enabled, reason
        )

    @app.tool()
    async def record_feedback(
        query_id: str, rating: WholeNumber, correction: str | None = None
    ) -> dict[str, Any]:
        """Rate a logged answer and optionally give the answer it should have been.

        Rated-good answers and corrections become training rows when the deployment's logged
        queries are prepared (prepare_dataset with path "queries://<deployment>"); answers
        rated bad are used only through their correction. Feedback again on the same query
        replaces the earlier one. Personal data in the correction is redacted like the log.

        Args:
            query_id: The query_id query_model returned with logged: true (also the "id" of an
                answer from the OpenAI-compatible API of a deployment with logging on).
            rating: 1 for a good answer, -1 for a bad one.
            correction: The right answer, as the assistant should have written it; up to 32,000
                characters. Omit it to rate only.

        Returns:
            The query's id, deployment and version, its rating and (redacted) correction, the
            kinds of personal data redacted, and "replaced": the earlier feedback, if any. The
            conversation itself is shown by list_logged_queries (operators).
        """
        return await anyio.to_thread.run_sync(
            feedback.record_feedback, services, query_id, rating, correction
        )

    @app.tool()
    async def list_logged_queries(
        deployment: str, since: str | None = None, limit: WholeNumber = 50
    ) -> dict[str, Any]:
        """A deployment's query log: whether logging is on and its logged queries, newest
        first, with their redacted conversation, answer, rating and correction.

        Use it to find query_ids to rate or correct before preparing a dataset from them.

        Args:
            deployment: An existing deployment.
            since: Only queries from this time on: ISO 8601 or a duration back from now (e.g.
                "24h", "7d"). Omit for all time.
            limit: Most queries to return, 1-500; "matching" counts them all.
        """
        return await anyio.to_thread.run_sync(
            feedback.list_logged_queries, services, deployment, since, limit
        )

    @app.resource("turing://deployments/{deployment}/metrics", mime_type="application/json")
    async def deployment_metrics(deployment: str) -> str:
        """A deployment's traffic metrics over all time: live and shadow, per version and per
        route of the current revision, with its pricing (see get_metrics for the fields)."""
        found = await anyio.to_thread.run_sync(
            traffic_metrics.deployment_metrics, services, deployment
        )
        return json.dumps(found, indent=2)

    @app.resource("turing://models/{version_id}/metrics", mime_type="application/json")
    async def version_metrics(version_id: str) -> str:
        """A model version's traffic metrics over all time, live and shadow, per deployment."""
        found = await anyio.to_thread.run_sync(
            traffic_metrics.version_metrics, services, version_id
        )
        return json.dumps(found, indent=2)

    @app.resource("turing://engines", mime_type="application/json")
    def engines() -> str:
        """The llama.cpp engines loaded in this server (base and adapter, estimated and measured
        memory in MB, requests and tokens served, busy and waiting requests), the engines'
        memory budget and the server process's resident memory."""
        from turing.tools.query.pool import memory_budget_setting, process_rss_mb

        loaded = "engines" in vars(services)  # no pool before the first query
        return json.dumps(
            {
                "memory_budget_mb": (
                    services.engines.memory_budget_mb if loaded else memory_budget_setting()
                ),
                "process_rss_mb": round(process_rss_mb(), 1),
                "engines": services.engines.stats() if loaded else [],
            },
            indent=2,
        )
