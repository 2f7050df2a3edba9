"""The model registry through a real MCP client session: aliases, lineage and model cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_deployments import ASK, audit_trail, two_versions
from tests.server.test_evals import finished, trained_version
from turing.server.quickstart import LifecycleError, Session

pytestmark = pytest.mark.anyio


BAD_ALIASES = [
    ({"alias": "champion"}, "follows the deployment's routes and cannot be set"),
    ({"alias": "Stable!"}, "alias name 'Stable!' is not allowed: use 1-32 lowercase"),
    ({"alias": "x", "version_id": "run-0123"}, "give a model version id"),
    ({"alias": "x", "version_id": "mv-000000000000"}, "no model version 'mv-000000000000'"),
    ({"alias": "x", "deployment": "ghost"}, "no deployment 'ghost'"),
    ({"alias": "x", "version_id": "triage@"}, "write deployment@alias"),
]


async def ask(session: Session, model: str) -> dict[str, Any]:
    return await session.call("query_model", model=model, messages=ASK, max_tokens=2)


async def read_text(session: Session, uri: str) -> str:
    found = await session.client.read_resource(uri)
    return found.contents[0].text  # type: ignore[union-attr]


async def test_aliases_follow_the_routes_or_the_caller_and_name_a_model_everywhere(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    a, b, _ = await two_versions(session, tmp_path, tiny_base)
    await session.call("deploy", model=a, deployment="triage", actor="alice")
    with pytest.raises(LifecycleError, match=r"has no alias 'challenger'.*its aliases: champion"):
        await ask(session, "triage@challenger")

    # champion and challenger move with every revision.
    await session.call("canary", deployment="triage", model=b, percent=10, actor="bob")
    answer = await ask(session, "triage@challenger")
    assert answer["version_id"] == b and answer["model"] == "triage@challenger"
    assert answer["deployment"] is None  # pinned to a version: not the deployment's traffic
    assert (await ask(session, "triage@champion"))["version_id"] == a

    # A hand-set alias keeps the version it was given when the routes move on.
    stable = await session.call(
        "set_alias",
        deployment="triage",
        alias="stable",
        version_id="triage@champion",
        reason="known good",
        actor="carol",
    )
    assert stable["version_id"] == a and stable["previous_version_id"] is None
    with pytest.raises(LifecycleError, match="triage@stable already points to"):
        await session.call("set_alias", deployment="triage", alias="stable", version_id=a)
    await session.call("promote", deployment="triage", actor="bob")
    assert (await ask(session, "triage@champion"))["version_id"] == b
    assert (await ask(session, "triage@stable"))["version_id"] == a
    with pytest.raises(LifecycleError, match="its aliases: champion, stable"):
        await ask(session, "triage@challenger")

    # Deploy and canary take an alias as the model.
    back = await session.call("deploy", model="triage@stable", deployment="triage", actor="dan")
    assert back["version_id"] == a and back["revision"] == 4
    await session.call("set_alias", deployment="triage", alias="candidate", version_id=b)
    canary = await session.call("canary", deployment="triage", model="triage@candidate", percent=5)
    assert canary["routes"] == [{"version_id": a, "weight": 95}, {"version_id": b, "weight": 5}]
    with pytest.raises(LifecycleError, match="aliases: candidate, challenger, champion, stable"):
        await session.call("canary", deployment="triage", model="triage@nope", percent=5)
    for arguments, message in BAD_ALIASES:
        with pytest.raises(LifecycleError, match=message):
            await session.call(
                "set_alias", **{"deployment": "triage", "version_id": a, **arguments}
            )

    listed = await session.call("list_aliases", deployment="triage")
    now = {entry["alias"]: (entry["version_id"], entry["follows"]) for entry in listed["aliases"]}
    assert now == {
        "champion": (a, "routes"),
        "challenger": (b, "routes"),
        "candidate": (b, "set_alias"),
        "stable": (a, "set_alias"),
    }
    champion_moves = [m for m in listed["history"] if m["alias"] == "champion"]
    assert [(m["version_id"], m["revision"], m["actor"]) for m in champion_moves] == [
        (a, 1, "alice"),
        (b, 3, "bob"),
        (a, 4, "dan"),
    ]
    challenger_moves = [m for m in listed["history"] if m["alias"] == "challenger"]
    assert [(m["action"], m["version_id"], m["revision"]) for m in challenger_moves] == [
        ("set", b, 2),
        ("clear", None, 3),
        ("set", b, 5),
    ]

    deleted = await session.call(
        "delete_alias", deployment="triage", alias="stable", reason="retired", actor="carol"
    )
    assert deleted["previous_version_id"] == a
    with pytest.raises(LifecycleError, match="no alias 'stable' \\(none is set\\); its aliases: c"):
        await session.call("delete_alias", deployment="triage", alias="stable")
    resource = json.loads(await read_text(session, "turing://deployments/triage/aliases"))
    assert "stable" not in {entry["alias"] for entry in resource["aliases"]}
    stable_moves = [m for m in resource["history"] if m["alias"] == "stable"]
    assert [(m["action"], m["version_id"], m["previous_version_id"]) for m in stable_moves] == [
        ("set", a, None),
        ("delete", None, a),
    ]
    assert [m["reason"] for m in stable_moves] == ["known good", "retired"]
    trail = [e for e in await audit_trail(session, "triage") if e["action"].endswith("_alias")]
    assert [(e["action"], e["details"]["alias"], e["details"]["actor"]) for e in trail] == [
        ("delete_alias", "stable", "carol"),
        ("set_alias", "candidate", ""),
        ("set_alias", "stable", "carol"),
    ]


async def test_lineage_and_model_card_trace_a_version_from_its_data_to_its_deployments(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    model = await trained_version(session, tmp_path, tiny_base)
    version = model["id"]
    await session.call("deploy", model=version, deployment="triage", reason="first")
    started = await session.call(
        "run_eval",
        model="triage@champion",
        dataset_id=model["dataset_id"],
        criteria=["accuracy >= 0"],
    )
    evaluation = await finished(session, started)
    assert evaluation["version_id"] == version and evaluation["verdict"]["passed"]

    lineage = await session.call("get_lineage", model="triage@champion")
    run = await session.call("get_run", run_id=model["run_id"])
    assert lineage["version"]["id"] == version and lineage["version"]["sha256"] == model["sha256"]
    assert lineage["dataset"]["id"] == model["dataset_id"]
    assert lineage["dataset"]["source_path"].endswith("tickets.jsonl")
    assert lineage["dataset"]["train_rows"] + lineage["dataset"]["validation_rows"] == 18
    assert lineage["run"]["id"] == model["run_id"] and lineage["run"]["status"] == "succeeded"
    assert lineage["run"]["config"]["learning_rate"] == 0.01
    assert lineage["checkpoint"]["step"] == run["output_step"]
    (scored,) = lineage["evals"]
    assert scored["eval_id"] == evaluation["eval_id"] and scored["passed"] is True
    accuracy = scored["scores"]["accuracy"]
    assert accuracy["ci"][0] <= accuracy["value"] <= accuracy["ci"][1]
    (deployed,) = lineage["deployments"]
    assert deployed["deployment"] == "triage" and deployed["serving_now"]["weight"] == 100
    assert lineage["aliases"] == ["triage@champion"]
    resource = json.loads(await read_text(session, f"turing://models/{version}/lineage"))
    assert resource["run"] == lineage["run"] and resource["checkpoint"] == lineage["checkpoint"]

    card = await read_text(session, f"turing://models/{version}/card")
    assert card.startswith(f"# Model card: {version}\n")
    for heading in ("Data", "Training", "Evaluation", "Safety", "Intended use and limits"):
        assert f"\n## {heading}\n" in card
    assert f"`{model['dataset_id']}`" in card and f"`{evaluation['eval_id']}`" in card
    assert f"| accuracy | {accuracy['value']:g} [{accuracy['ci'][0]:g}, " in card
    assert "No safety suite has been run on this version" in card
    beside = Path(lineage["version"]["path"]).parent / "MODEL_CARD.md"
    assert beside.read_text() == card

    with pytest.raises(LifecycleError, match="a run has lineage once exported"):
        await session.call("get_lineage", model=model["run_id"])
    with pytest.raises(LifecycleError, match="no model version 'mv-000000000000'"):
        await session.call("get_lineage", model="mv-000000000000")
