"""Incident playbooks through a real MCP client session: SLOs with automatic rollback of a
breaching canary, the kill switch, the incident log, and the playbook prompts.

The routes are remote model versions answered by a small OpenAI-compatible server on a loopback
port, whose models behave as each test needs: answer at once, answer slowly, fail, or answer
with personal data. Everything between the client and that server is Turing's own path.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tests.helpers import StubOpenAI
from turing.server import auth
from turing.server.http_api import HttpServer
from turing.server.quickstart import LifecycleError, Session, server_parameters
from turing.server.services import Services
from turing.server.workspace import Workspace

pytestmark = pytest.mark.anyio

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]
# What each model of the stub server does: (seconds before answering, HTTP status, answer).
BEHAVIOURS = {
    "steady": (0.0, 200, "Please send the invoice number."),
    "other": (0.0, 200, "I will check the amount."),
    "slow": (0.6, 200, "Please send the invoice number."),
    "broken": (0.0, 500, "internal error"),
    "leaky": (0.0, 200, "Write to maria.lopez@gmail.com about it."),
}
CHECK_S = "0.5"  # TURING_SLO_CHECK_S of the servers under test


@pytest.fixture
def stub() -> Iterator[StubOpenAI]:
    server = StubOpenAI(lambda body: BEHAVIOURS[body["model"]])
    yield server
    server.close()


@pytest.fixture
async def monitored(tmp_path: Path) -> AsyncIterator[Session]:
    """A session whose server checks SLOs every half second."""
    parameters = server_parameters(str(tmp_path / "home"))
    parameters.env = {**(parameters.env or {}), "TURING_SLO_CHECK_S": CHECK_S}
    async with Client(parameters) as client:
        yield Session(client)


async def versions(session: Session, stub: StubOpenAI, *models: str) -> dict[str, str]:
    """Register models of the stub server as model versions; model name -> version id."""
    found = {}
    for model in models:
        version = await session.call(
            "register_remote_model", endpoint=stub.url, model=model, check=False
        )
        found[model] = version["id"]
    return found


async def canary_deployment(
    session: Session, stub: StubOpenAI, champion: str, canary: str
) -> dict[str, str]:
    """Deployment "triage": `champion` deployed, then `canary` at 50% (revision 2)."""
    ids = await versions(session, stub, champion, canary)
    await session.call("deploy", model=ids[champion], deployment="triage")
    await session.call("canary", deployment="triage", model=ids[canary], percent=50)
    return ids


async def ask(session: Session, model: str = "triage", **options: Any) -> dict[str, Any]:
    return await session.call("query_model", model=model, messages=ASK, max_tokens=8, **options)


async def ask_until(session: Session, enough: Any, most: int = 80) -> Counter[str]:
    """Query the deployment until `enough(counts)` holds; counts answers by version, and
    failures under "failed"."""
    counts: Counter[str] = Counter()
    for _ in range(most):
        try:
            counts[(await ask(session))["version_id"]] += 1
        except LifecycleError:
            counts["failed"] += 1
        if enough(counts):
            return counts
    raise AssertionError(f"still not enough after {most} queries: {dict(counts)}")


async def incidents_of(session: Session, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait (at most 20 s) until the deployment has `count` incidents of a kind."""
    for _ in range(80):
        found = await session.call("list_incidents", deployment="triage", kind=kind)
        if len(found["incidents"]) >= count:
            return list(found["incidents"])
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {kind} incident after 20 s: {found}")


async def key_routed_to(session: Session, version_id: str) -> str:
    """A routing key that the deployment's weights send to `version_id`."""
    for n in range(64):
        if (await ask(session, routing_key=f"user-{n}"))["version_id"] == version_id:
            return f"user-{n}"
    raise AssertionError(f"no key of 64 lands on {version_id}")


async def routes(session: Session) -> list[dict[str, Any]]:
    deployments = await session.call("list_deployments")
    return list(next(d for d in deployments if d["deployment"] == "triage")["routes"])


async def test_a_canary_breaching_its_error_rate_is_rolled_back_once_it_has_min_requests(
    monitored: Session, stub: StubOpenAI
) -> None:
    session = monitored
    ids = await canary_deployment(session, stub, "steady", "broken")
    slo = await session.call(
        "set_slo", deployment="triage", max_error_rate=0.2, window_s=60, min_requests=50
    )
    assert slo["slo"]["auto_rollback"] is True and slo["status"]["breaching"] == []

    # Below min_requests nothing is judged, however bad the canary's few queries were.
    await ask_until(session, lambda counts: counts["failed"] >= 4)
    await asyncio.sleep(4 * float(CHECK_S))
    status = (await session.call("get_slo", deployment="triage"))["status"]
    canary = next(route for route in status["routes"] if route["role"] == "canary")
    assert canary["version_id"] == ids["broken"] and canary["error_rate"] == 1.0
    assert canary["judged"] is False and canary["note"].endswith(
        "of the 50 queries needed to judge it"
    )
    assert status["revision"] == 2 and (await list_all(session)) == []

    # Judged at 4 queries, the canary is rolled back by the next check.
    await session.call(
        "set_slo", deployment="triage", max_error_rate=0.2, window_s=60, min_requests=4
    )
    [incident] = await incidents_of(session, "auto_rollback")
    assert incident["version_id"] == ids["broken"] and incident["actor"] == "slo-monitor"
    assert re.match(
        rf"error_rate 1 > 0.2 over \d+ queries to {ids['broken']} \(canary, 50%\) of revision 2 "
        r"in the last 60 s",
        incident["trigger"],
    ), incident["trigger"]
    details = incident["details"]
    assert details["revision"] == 2 and details["new_revision"] == 3
    assert details["window_s"] == 60 and details["requests"] >= 4
    assert details["breaches"] == [{"slo": "error_rate", "measured": 1.0, "threshold": 0.2}]
    assert await routes(session) == [{"version_id": ids["steady"], "weight": 100}]

    # The rollback went through set_routes: audited with the monitor as actor.
    found = await session.client.read_resource("turing://deployments/triage/audit")
    trail = json.loads(found.contents[0].text)  # type: ignore[union-attr]
    rolled = trail[0]
    assert rolled["action"] == "set_routes" and rolled["details"]["actor"] == "slo-monitor"
    assert rolled["reason"].startswith("automatic rollback: error_rate 1 > 0.2")

    # The broken canary receives nothing more, and the incident is readable as a resource.
    hits = stub.hits["broken"]
    answers = [await ask(session) for _ in range(5)]
    assert {answer["version_id"] for answer in answers} == {ids["steady"]}
    assert stub.hits["broken"] == hits
    listed = json.loads(
        (await session.client.read_resource("turing://deployments/triage/incidents"))
        .contents[0]
        .text  # type: ignore[union-attr]
    )
    assert [row["kind"] for row in listed] == ["auto_rollback"]

    # A breaching champion is recorded once, and nothing is changed.
    await session.call(
        "set_slo", deployment="triage", max_p95_latency_ms=1, window_s=60, min_requests=2
    )
    [breach] = await incidents_of(session, "slo_breach")
    assert breach["version_id"] == ids["steady"] and breach["details"]["role"] == "champion"
    assert breach["details"]["since_revision"] == 1
    assert breach["details"]["action"].startswith("none: the champion serves most traffic")
    await asyncio.sleep(4 * float(CHECK_S))
    assert [row["kind"] for row in await list_all(session)] == ["slo_breach", "auto_rollback"]
    assert await routes(session) == [{"version_id": ids["steady"], "weight": 100}]


async def list_all(session: Session) -> list[dict[str, Any]]:
    return list((await session.call("list_incidents", deployment="triage"))["incidents"])


async def test_slow_and_unsafe_canaries_are_rolled_back_and_the_champion_keeps_serving(
    monitored: Session, stub: StubOpenAI
) -> None:
    session = monitored
    ids = await versions(session, stub, "steady", "slow", "leaky")
    await session.call("deploy", model=ids["steady"], deployment="triage")
    three_ways = [
        {"version_id": ids["steady"], "weight": 40},
        {"version_id": ids["slow"], "weight": 30},
        {"version_id": ids["leaky"], "weight": 30},
    ]
    await session.call("set_routes", deployment="triage", routes=three_ways)
    await session.call(
        "set_slo",
        deployment="triage",
        max_p95_latency_ms=400,
        max_safety_flag_rate=0.5,
        window_s=120,
        min_requests=3,
    )

    await ask_until(
        session,
        lambda counts: counts[ids["slow"]] >= 3 and counts[ids["leaky"]] >= 3,
    )
    found = await incidents_of(session, "auto_rollback", count=2)
    by_version = {incident["version_id"]: incident for incident in found}
    slow, leaky = by_version[ids["slow"]], by_version[ids["leaky"]]
    assert [breach["slo"] for breach in slow["details"]["breaches"]] == ["p95_latency_ms"]
    assert slow["details"]["breaches"][0]["measured"] > 400
    assert slow["trigger"].startswith("p95_latency_ms ")
    assert leaky["details"]["breaches"] == [
        {"slo": "safety_flag_rate", "measured": 1.0, "threshold": 0.5}
    ]
    assert await routes(session) == [{"version_id": ids["steady"], "weight": 100}]
    assert (await ask(session))["version_id"] == ids["steady"]


def check_http_path(home: Path, killed: str) -> None:
    """Over HTTP, the killed version is refused by name and the deployment answers without it."""
    services = Services.open(Workspace(home, home.parent / "cache"))
    server = HttpServer(services, "127.0.0.1", 0)
    server.start()
    try:
        _, secret = auth.create_token(services, "ops", "viewer")
        request: dict[str, Any] = {"messages": ASK, "max_tokens": 8}
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.port}/v1", api_key=secret, max_retries=0
        )
        with pytest.raises(openai.ConflictError, match="stopped by the kill switch"):
            client.chat.completions.create(model=killed, **request)
        for _ in range(4):
            answer = client.chat.completions.create(model="triage", **request)
            assert answer.choices[0].message.content == BEHAVIOURS["steady"][2]
    finally:
        server.stop()
        services.close()


async def test_the_kill_switch_stops_a_version_from_the_next_query_until_lifted(
    session: Session, stub: StubOpenAI, tmp_path: Path
) -> None:
    ids = await canary_deployment(session, stub, "steady", "other")
    steady, other = ids["steady"], ids["other"]
    key = await key_routed_to(session, other)

    killed = await session.call(
        "kill_version", version_id="triage@challenger", reason="leaks order numbers"
    )
    assert killed["version_id"] == other and killed["actor"] == "local"
    assert killed["deployments"] == {"triage": f"its share goes to the other live routes: {steady}"}
    hits = stub.hits["other"]
    rerouted = await ask(session, routing_key=key)
    assert rerouted["version_id"] == steady and rerouted["revision"] == 2
    assert {(await ask(session))["version_id"] for _ in range(8)} == {steady}
    assert stub.hits["other"] == hits  # nothing reached the killed version
    for direct in (other, "triage@challenger"):
        with pytest.raises(LifecycleError, match="stopped by the kill switch \\(leaks order"):
            await ask(session, model=direct)
    # The OpenAI-compatible HTTP API takes the same path.
    await asyncio.to_thread(check_http_path, tmp_path / "home", other)
    assert stub.hits["other"] == hits
    with pytest.raises(LifecycleError, match="already killed"):
        await session.call("kill_version", version_id=other, reason="again")
    with pytest.raises(LifecycleError, match="reason is empty"):
        await session.call("kill_version", version_id=steady, reason="  ")

    # With every live route killed, the deployment refuses instead of answering.
    await session.call("kill_version", version_id=steady, reason="bad answers")
    with pytest.raises(LifecycleError, match="'triage' has no live route left"):
        await ask(session)
    listed = await session.call("list_incidents", deployment="triage")
    assert {row["version_id"] for row in listed["killed_versions"]} == {steady, other}
    first = listed["incidents"][-1]
    assert first["kind"] == "kill_switch" and first["version_id"] == other
    assert first["trigger"] == "kill_version by local: leaks order numbers"

    # Lifting restores exactly what was served: the key is back on its route.
    await session.call("lift_kill", version_id=steady, reason="fixed upstream")
    lifted = await session.call("lift_kill", version_id=other, reason="false alarm")
    assert lifted["lifted"] is True and lifted["deployments"] == ["triage"]
    assert (await ask(session, routing_key=key))["version_id"] == other
    assert stub.hits["other"] == hits + 1
    with pytest.raises(LifecycleError, match="is not killed"):
        await session.call("lift_kill", version_id=other)
    kinds = [row["kind"] for row in (await session.call("list_incidents"))["incidents"]]
    assert kinds == ["kill_lifted", "kill_lifted", "kill_switch", "kill_switch"]


BAD_SLOS = [
    ({}, "no bound given"),
    ({"max_error_rate": 1.5}, "max_error_rate=1.5: must be from 0 to 1"),
    ({"max_p95_latency_ms": -1.0}, "max_p95_latency_ms=-1.0: must be from 1 to 3600000"),
    ({"max_p95_latency_ms": 0}, "max_p95_latency_ms=0.0: must be from 1 to 3600000"),
    ({"max_error_rate": 0.1, "window_s": 5}, "window_s=5: must be a whole number from 10"),
    ({"max_error_rate": 0.1, "min_requests": 0}, "min_requests=0: must be a whole number from 1"),
]


async def test_set_slo_refuses_bad_bounds_naming_them(session: Session, stub: StubOpenAI) -> None:
    ids = await versions(session, stub, "steady")
    await session.call("deploy", model=ids["steady"], deployment="triage")
    assert (await session.call("get_slo", deployment="triage"))["slo"] is None
    for arguments, message in BAD_SLOS:
        with pytest.raises(LifecycleError, match=re.escape(message)):
            await session.call("set_slo", deployment="triage", **arguments)
    with pytest.raises(LifecycleError, match="no deployment 'nowhere'"):
        await session.call("set_slo", deployment="nowhere", max_error_rate=0.1)
    assert (await session.call("get_slo", deployment="triage"))["slo"] is None


async def test_playbook_prompts_are_listed_and_name_real_tools(session: Session) -> None:
    listed = await session.client.list_prompts()
    prompts = {prompt.name: prompt for prompt in listed.prompts}
    assert set(prompts) >= {"ship_new_version", "respond_to_incident"}
    assert prompts["ship_new_version"].title == "Ship a new version safely"
    arguments = {arg.name: arg.required for arg in prompts["ship_new_version"].arguments or []}
    assert arguments == {"deployment": True, "model": True, "canary_percent": False}
    arguments = {arg.name: arg.required for arg in prompts["respond_to_incident"].arguments or []}
    assert arguments == {"deployment": True, "version_id": False, "symptom": False}

    tools = {tool.name for tool in (await session.client.list_tools()).tools}
    ship = await session.client.get_prompt(
        "ship_new_version",
        {"deployment": "triage", "model": "mv-0123456789ab", "canary_percent": "5"},
    )
    text = ship.messages[0].content.text  # type: ignore[union-attr]
    assert 'canary(deployment="triage", model=VERSION, percent=5' in text
    incident = await session.client.get_prompt(
        "respond_to_incident",
        {"deployment": "triage", "version_id": "mv-0123456789ab", "symptom": "emails in answers"},
    )
    incident_text = incident.messages[0].content.text  # type: ignore[union-attr]
    assert 'kill_version(version_id="mv-0123456789ab"' in incident_text
    assert "Reported symptom: emails in answers." in incident_text
    for playbook in (text, incident_text):
        called = set(re.findall(r"\b([a-z_]+)\(", playbook))
        assert called and called <= tools, called - tools

    with pytest.raises(Exception, match="canary_percent='half': give a whole number from 1 to 99"):
        await session.client.get_prompt(
            "ship_new_version", {"deployment": "triage", "model": "mv-x", "canary_percent": "half"}
        )
    with pytest.raises(MCPError, match="Missing required arguments") as missing:
        await session.client.get_prompt("ship_new_version", {"deployment": "triage"})
    assert missing.value.code == INVALID_PARAMS
