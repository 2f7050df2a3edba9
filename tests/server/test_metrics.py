"""Traffic metrics through a real MCP client session: pricing, per-route metrics, A/B tests."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.server.test_deployments import ASK, ab_deployment
from turing.server.quickstart import LifecycleError, Session, server_parameters

pytestmark = pytest.mark.anyio


async def read_json(session: Session, uri: str) -> Any:
    found = await session.client.read_resource(uri)
    return json.loads(found.contents[0].text)  # type: ignore[union-attr]


async def ask(session: Session, key: str) -> dict[str, Any]:
    return await session.call(
        "query_model", model="triage", messages=ASK, max_tokens=4, routing_key=key
    )


async def test_queries_are_measured_priced_and_compared_between_routes(
    tmp_path: Path, tiny_base: Path
) -> None:
    home = tmp_path / "home"
    parameters = server_parameters(str(home))
    # Rows wait a minute for their batch unless a metrics read or the shutdown flushes them.
    parameters.env = {**(parameters.env or {}), "TURING_TELEMETRY_FLUSH_S": "60"}
    async with Client(parameters) as client:
        session = Session(client)
        a, b = await ab_deployment(
            session, tmp_path, tiny_base, reason="A/B of the two learning rates"
        )

        unpriced = await session.call("get_metrics", deployment="triage")
        assert unpriced["live"]["count"] == 0
        assert unpriced["pricing"]["configured"] is False
        assert "not configured" in unpriced["pricing"]["note"]
        await session.call(
            "set_pricing",
            deployment="triage",
            price_per_1k_tokens=0.001,
            replaced_model="gpt-4o-mini",
            replaced_price_per_1k_tokens=0.01,
            reason="launch estimate",
            actor="alice",
        )

        answers = [await ask(session, f"user-{index}") for index in range(16)]
        served = Counter(answer["version_id"] for answer in answers)
        assert set(served) == {a, b} and min(served.values()) >= 2
        tokens = sum(answer["prompt_tokens"] + answer["completion_tokens"] for answer in answers)

        metrics = await session.call("get_metrics", deployment="triage")
        live = metrics["live"]
        assert live["count"] == 16 and live["errors"] == 0 and metrics["shadow"]["count"] == 0
        assert live["tokens_out"] == sum(answer["completion_tokens"] for answer in answers)
        assert live["cost"] == pytest.approx(tokens / 1000 * 0.001)
        assert live["savings"] == pytest.approx(tokens / 1000 * (0.01 - 0.001))
        assert live["latency_ms"]["p50"] > 0 and live["ttft_ms"]["p95"] > 0
        # Recorded latency is the whole request (routing, engine load, waiting) around the
        # generation time the answer reports.
        assert live["latency_ms"]["p50"] >= min(answer["latency_ms"] for answer in answers)
        routes = metrics["routes"]["routes"]
        assert metrics["routes"]["revision"] == 2
        assert {route["version_id"]: route["metrics"]["count"] for route in routes} == served

        resource = await read_json(session, "turing://deployments/triage/metrics")
        assert resource["live"]["count"] == 16 and resource["pricing"]["configured"] is True
        version = await read_json(session, f"turing://models/{a}/metrics")
        assert version["live"]["count"] == served[a]
        assert [entry["deployment"] for entry in version["deployments"]] == ["triage"]
        by_tool = await session.call("get_metrics", version_id=b, since="1h")
        assert by_tool["live"]["count"] == served[b]

        compared = await session.call("compare_routes", deployment="triage", metric="latency_ms")
        assert {route["version_id"]: route["n"] for route in compared["routes"]} == served
        (comparison,) = compared["comparisons"]
        assert comparison["test"] == "mann_whitney_u" and 0 <= comparison["p_value"] <= 1
        errors = await session.call("compare_routes", deployment="triage", metric="error_rate")
        assert errors["comparisons"][0]["p_value"] == 1.0

        with pytest.raises(LifecycleError, match="metric='p95': allowed metrics are latency_ms"):
            await session.call("compare_routes", deployment="triage", metric="p95")
        with pytest.raises(LifecycleError, match="give exactly one of deployment or version_id"):
            await session.call("get_metrics")
        with pytest.raises(LifecycleError, match="replaced_model is empty"):
            await session.call(
                "set_pricing",
                deployment="triage",
                price_per_1k_tokens=0.001,
                replaced_price_per_1k_tokens=0.01,
            )
        trail = await read_json(session, "turing://deployments/triage/audit")
        assert trail[0]["action"] == "set_pricing" and trail[0]["details"]["actor"] == "alice"

        # Answered after the last read: written only when the server shuts down.
        for index in range(3):
            await ask(session, f"late-{index}")

    with closing(sqlite3.connect(home / "registry.db")) as db:
        rows = db.execute("SELECT transport, shadow, cost FROM queries").fetchall()
    assert len(rows) == 19
    assert {row[0] for row in rows} == {"mcp"} and not any(row[1] for row in rows)
    assert all(row[2] > 0 for row in rows)
