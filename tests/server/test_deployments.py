"""Deployment traffic through a real MCP client session: canary, promote, rollback, shadows."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until_done, write_jsonl
from tests.server.test_lifecycle import ticket_rows
from turing.server.quickstart import LifecycleError, Session

pytestmark = pytest.mark.anyio

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]


async def two_versions(session: Session, tmp_path: Path, tiny_base: Path) -> tuple[str, str, str]:
    """Two model versions of the tiny model (different learning rates) and their dataset id."""
    await session.call("register_base_model", name="tiny", gguf_path=str(tiny_base))
    data = write_jsonl(tmp_path / "tickets.jsonl", ticket_rows())
    dataset = await session.call("prepare_dataset", path=str(data), validation_fraction=0.34)
    found = []
    for rate in (0.01, 0.02):
        run = await session.call(
            "start_finetune",
            dataset_id=dataset["dataset_id"],
            base_model="tiny",
            hyperparameters={"epochs": 1, "batch_size": 4, "learning_rate": rate},
        )
        run = await wait_until_done(session, "get_run", "run_id", run["run_id"])
        assert run["status"] == "succeeded", run["error"]
        found.append((await session.call("export_model", run_id=run["run_id"]))["id"])
    assert found[0] != found[1]
    return found[0], found[1], dataset["dataset_id"]


async def ab_deployment(
    session: Session, tmp_path: Path, tiny_base: Path, **options: Any
) -> tuple[str, str]:
    """Deployment "triage" at revision 2: two tiny-model versions (returned) at 50/50."""
    a, b, _ = await two_versions(session, tmp_path, tiny_base)
    await session.call("deploy", model=a, deployment="triage")
    routes = [{"version_id": a, "weight": 50}, {"version_id": b, "weight": 50}]
    await session.call("set_routes", deployment="triage", routes=routes, **options)
    return a, b


async def audit_trail(session: Session, deployment: str) -> list[dict[str, Any]]:
    found = await session.client.read_resource(f"turing://deployments/{deployment}/audit")
    return json.loads(found.contents[0].text)  # type: ignore[union-attr]


async def ask(session: Session, **options: Any) -> dict[str, Any]:
    return await session.call("query_model", model="triage", messages=ASK, max_tokens=2, **options)


async def test_deploy_canary_promote_and_rollback_make_revisions_with_an_audit_trail(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    a, b, _ = await two_versions(session, tmp_path, tiny_base)
    deployed = await session.call("deploy", model=a, deployment="triage", actor="alice")
    assert deployed["revision"] == 1
    with pytest.raises(LifecycleError, match="'triage' has only revision 1: there is no previous"):
        await session.call("rollback", deployment="triage")

    # Every broken rule is named in one refusal, and nothing changes.
    with pytest.raises(LifecycleError) as refused:
        await session.call(
            "set_routes",
            deployment="triage",
            routes=[
                {"version_id": a, "weight": 60},
                {"version_id": a, "weight": 30},
                {"version_id": "mv-000000000000", "weight": 20},
                {"version_id": b, "weight": -10},
            ],
        )
    message = str(refused.value)
    assert f"routes[1] ({a}): already routed by routes[0]; a version may appear once" in message
    assert "routes[2] (mv-000000000000): no such model version" in message
    assert f"routes[3] ({b}): weight=-10; weights are whole percentages 0..100" in message
    assert "sum to 70" in message and "must sum to exactly 100" in message

    canary = await session.call(
        "canary", deployment="triage", model=b, percent=10, reason="try b", actor="bob"
    )
    assert canary["revision"] == 2 and canary["champion"] == a
    assert canary["routes"] == [{"version_id": a, "weight": 90}, {"version_id": b, "weight": 10}]
    with pytest.raises(LifecycleError, match="already serves exactly these routes"):
        await session.call("canary", deployment="triage", model=b, percent=10)
    with pytest.raises(LifecycleError, match="percent"):
        await session.call("canary", deployment="triage", model=b, percent=True)

    # A routing key keeps its route for the whole revision.
    for key in ("user-1", "user-2", "user-3", "user-4"):
        first, second = await ask(session, routing_key=key), await ask(session, routing_key=key)
        assert first["version_id"] == second["version_id"] and first["revision"] == 2
    with pytest.raises(LifecycleError, match="routing_key=''"):
        await ask(session, routing_key="")

    promoted = await session.call("promote", deployment="triage", actor="bob", reason="b is good")
    assert promoted["revision"] == 3 and promoted["routes"] == [{"version_id": b, "weight": 100}]
    answer = await ask(session)
    assert answer["version_id"] == b and answer["revision"] == 3
    with pytest.raises(LifecycleError, match="nothing to promote"):
        await session.call("promote", deployment="triage")

    back = await session.call("rollback", deployment="triage", reason="b regressed", actor="carol")
    assert back["revision"] == 4 and back["restored_revision"] == 2
    assert back["routes"] == canary["routes"]
    first = await session.call("rollback", deployment="triage", revision=1, actor="carol")
    assert first["revision"] == 5 and first["routes"] == [{"version_id": a, "weight": 100}]
    with pytest.raises(LifecycleError, match="has no revision 9; its revisions are 1 to 5"):
        await session.call("rollback", deployment="triage", revision=9)

    (listed,) = await session.call("list_deployments")
    assert listed["revision"] == 5 and listed["routes"] == [{"version_id": a, "weight": 100}]
    trail = await audit_trail(session, "triage")
    assert [entry["action"] for entry in trail] == [
        "rollback",
        "rollback",
        "promote",
        "canary",
        "deploy",
    ]
    assert [entry["details"]["actor"] for entry in trail] == [
        "carol",
        "carol",
        "bob",
        "bob",
        "alice",
    ]
    assert trail[1]["reason"] == "b regressed" and trail[1]["details"]["restored_revision"] == 2
    assert trail[2]["details"]["previous_routes"] == canary["routes"]
    assert trail[3]["reason"] == "try b" and trail[3]["details"]["revision"] == 2


async def test_a_shadow_route_is_mirrored_and_a_gate_guards_canaries(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    a, b, dataset_id = await two_versions(session, tmp_path, tiny_base)
    await session.call("deploy", model=a, deployment="triage")
    await session.call(
        "set_gate",
        deployment="triage",
        criteria=["accuracy >= 0"],
        dataset_id=dataset_id,
        reason="every change needs a verdict",
    )

    # A shadow needs no verdict: its answers reach nobody, only the telemetry.
    shadowed = await session.call(
        "set_routes",
        deployment="triage",
        routes=[{"version_id": a, "weight": 100}, {"version_id": b, "shadow": True}],
        reason="watch b on real traffic",
    )
    assert shadowed["routes"][1] == {"version_id": b, "weight": 0, "shadow": True}
    (listed,) = await session.call("list_deployments")
    assert listed["routes"] == shadowed["routes"]
    for key in ("user-1", "user-2", "user-3"):
        answer = await ask(session, routing_key=key)
        assert answer["version_id"] == a and answer["shadows"] == [b]

    rows = await telemetry(tmp_path, "triage", expect_shadow_rows=3)
    live = [row for row in rows if not row["shadow"]]
    mirrored = [row for row in rows if row["shadow"]]
    assert {row["version_id"] for row in live} == {a} and len(live) == 3
    assert {row["version_id"] for row in mirrored} == {b}
    assert all(row["error"] is None and row["revision"] == 2 for row in rows)
    assert {row["routing_key"] for row in live} == {row["routing_key"] for row in mirrored}
    assert all(row["routing_key"] and "user" not in row["routing_key"] for row in rows)

    # Live traffic to a version without a passing verdict is refused, unless forced.
    with pytest.raises(LifecycleError) as refused:
        await session.call("canary", deployment="triage", model=b, percent=20)
    assert "canary on 'triage' refused by its gate" in str(refused.value)
    assert f"{b} has no finished evaluation against the gate of 'triage'" in str(refused.value)
    forced = await session.call(
        "canary", deployment="triage", model=b, percent=20, force_reason="approved by on-call"
    )
    assert forced["revision"] == 3 and not forced["gate"][b]["passed"]
    newest = (await audit_trail(session, "triage"))[0]
    assert newest["action"] == "forced_canary" and newest["reason"] == "approved by on-call"
    assert any("no finished evaluation" in line for line in newest["details"]["overridden"])

    # A champion and a challenger at 50/50: promote will not guess which one wins.
    await session.call(
        "set_routes",
        deployment="triage",
        routes=[{"version_id": a, "weight": 50}, {"version_id": b, "weight": 50}],
        force_reason="A/B",
    )
    with pytest.raises(LifecycleError, match="tie at 50%"):
        await session.call("promote", deployment="triage", force_reason="x")

    # Replacing the live version keeps the shadow mirroring.
    await session.call(
        "set_routes",
        deployment="triage",
        routes=[{"version_id": b, "weight": 100}, {"version_id": a, "shadow": True}],
        force_reason="b alone, a watched",
    )
    replaced = await session.call("deploy", model=b, deployment="triage", force_reason="redeploy")
    assert replaced["routes"] == [
        {"version_id": b, "weight": 100},
        {"version_id": a, "weight": 0, "shadow": True},
    ]
    entry = (await audit_trail(session, "triage"))[0]
    assert entry["action"] == "forced_deploy" and entry["details"]["routes"] == replaced["routes"]


async def telemetry(tmp_path: Path, deployment: str, expect_shadow_rows: int) -> list[dict]:
    """The deployment's query rows, once the background shadow requests have been recorded."""
    path = tmp_path / "home" / "registry.db"
    for _ in range(240):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            found = db.execute(
                "SELECT * FROM queries WHERE deployment = ? ORDER BY id", [deployment]
            ).fetchall()
        rows = [dict(row) for row in found]
        if sum(row["shadow"] for row in rows) >= expect_shadow_rows:
            return rows
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expect_shadow_rows} shadow rows not recorded in 120 s: {rows}")


async def loaded_versions(session: Session) -> set[str]:
    """The model versions whose llama.cpp engines the server holds (turing://engines)."""
    found = await session.client.read_resource("turing://engines")
    engines = json.loads(found.contents[0].text)["engines"]  # type: ignore[union-attr]
    return {Path(engine["adapter"]).parent.name for engine in engines}


async def test_deploy_rollback_and_deploy_again_unload_the_replaced_versions_engine(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    a, b, _ = await two_versions(session, tmp_path, tiny_base)
    assert await loaded_versions(session) == set()
    await session.call("deploy", model=a, deployment="triage")
    await ask(session)
    assert await loaded_versions(session) == {a}

    await session.call("deploy", model=b, deployment="triage")
    assert await loaded_versions(session) == set()  # a is unloaded at once, b on first use
    await ask(session)
    assert await loaded_versions(session) == {b}

    await session.call("rollback", deployment="triage")
    assert await loaded_versions(session) == set()
    assert (await ask(session))["version_id"] == a
    assert await loaded_versions(session) == {a}

    await session.call("deploy", model=b, deployment="triage")
    assert (await ask(session))["version_id"] == b
    assert await loaded_versions(session) == {b}

    # A canary keeps both routed versions loaded; promoting it releases the old champion.
    await session.call("canary", deployment="triage", model=a, percent=40)
    answered = set()
    for user in range(16):
        answered.add((await ask(session, routing_key=f"user-{user}"))["version_id"])
    assert answered == {a, b}
    assert await loaded_versions(session) == {a, b}
    await session.call("promote", deployment="triage")
    assert await loaded_versions(session) == {a}
