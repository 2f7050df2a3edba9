"""Roles, projects and the audit trail, through real MCP sessions over HTTP with real tokens."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import Result, TextResourceContents
from starlette.requests import Request

from tests.helpers import write_jsonl
from tests.server.test_lifecycle import ticket_rows
from tests.server.test_runs import CancelTask, TaskId, Tasks, get_task
from turing.server import access, auth
from turing.server.app import create_app
from turing.server.http_api import HttpServer
from turing.server.quickstart import LifecycleError, Session
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools import audit

# Who the tests connect as: token name -> (role, project).
TOKENS = {
    "viewer": ("viewer", "shop"),
    "operator": ("operator", "shop"),
    "admin": ("admin", "shop"),
    "outsider": ("operator", "lab"),
    "root": ("admin", "*"),
}
# A registered model version needs no training: a remote one, never contacted (check=false).
REMOTE = {"endpoint": "http://127.0.0.1:9/v1", "model": "elsewhere", "check": False}


@dataclass
class Platform:
    """A Turing HTTP server (MCP at /mcp) on a loopback port, and one secret per token."""

    url: str
    services: Services
    secrets: dict[str, str]
    data: Path

    @asynccontextmanager
    async def session(self, who: str, **options: Any) -> AsyncIterator[Session]:
        """A real MCP client session over HTTP carrying the bearer token `who`."""
        headers = {"authorization": f"Bearer {self.secrets[who]}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=120) as http,
            Client(streamable_http_client(f"{self.url}/mcp", http_client=http), **options) as c,
        ):
            yield Session(c)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """The server over a fresh workspace, with the scheduler stopped: queued runs stay queued,
    since what is tested is who may see and touch them, not their training."""
    cache = Path(os.environ["TURING_CACHE"])
    services = Services.open(Workspace(tmp_path / "home", cache))
    app = create_app(services)
    services.jobs.stop_ticking()
    secrets = {
        name: auth.create_token(services, name, role, project)[1]
        for name, (role, project) in TOKENS.items()
    }
    server = HttpServer(services, "127.0.0.1", 0, mcp=app)
    server.start()
    data = write_jsonl(tmp_path / "tickets.jsonl", ticket_rows())
    try:
        yield Platform(server.url, services, secrets, data)
    finally:
        server.stop()
        services.close()


pytestmark = pytest.mark.anyio


async def read_json(session: Session, uri: str) -> Any:
    found = await session.client.read_resource(uri)
    content = found.contents[0]
    assert isinstance(content, TextResourceContents), content
    return json.loads(content.text)


async def test_every_tool_has_a_role_and_every_rule_a_tool(tmp_path: Path) -> None:
    services = Services.open(Workspace(tmp_path / "home", Path(os.environ["TURING_CACHE"])))
    app = create_app(services)
    services.jobs.stop_ticking()
    tools = {tool.name for tool in await app.list_tools()}
    assert sorted(tools - set(access.TOOL_RULES)) == [], "tools without a role"
    assert sorted(set(access.TOOL_RULES) - tools) == [], "roles of tools that do not exist"
    assert all(rule.role in access.ROLES for rule in access.TOOL_RULES.values())


async def test_each_role_may_do_its_part_and_a_refusal_names_the_role_needed(
    platform: Platform,
) -> None:
    async with platform.session("viewer") as viewer:
        assert await viewer.call("list_datasets") == []
        assert await read_json(viewer, "turing://deployments") == []
        with pytest.raises(LifecycleError, match=r"prepare_dataset needs the operator role.*"):
            await viewer.call("prepare_dataset", path=str(platform.data))
        with pytest.raises(LifecycleError, match="has the viewer role"):
            await viewer.call("prepare_dataset", path=str(platform.data))

    async with platform.session("operator") as operator:
        dataset = await operator.call("prepare_dataset", path=str(platform.data))
        with pytest.raises(LifecycleError, match="register_remote_model needs the admin role"):
            await operator.call("register_remote_model", **REMOTE)
        with pytest.raises(LifecycleError, match="register_base_model needs the admin role"):
            await operator.call("register_base_model", name="mine", gguf_path="/x.gguf")

    async with platform.session("admin") as admin:
        version = (await admin.call("register_remote_model", **REMOTE))["id"]

    async with platform.session("operator") as operator:
        web = await operator.call("deploy", model=version, deployment="web")
        assert web["revision"] == 1
        staging = await operator.call(
            "deploy", model=version, deployment="web-staging", environment="staging"
        )
        assert staging["revision"] == 1
        with pytest.raises(LifecycleError, match="into the prod environment needs the admin"):
            await operator.call("deploy", model=version, deployment="web-prod", environment="prod")
        with pytest.raises(LifecycleError, match=r"with a force_reason .* needs the admin role"):
            await operator.call("deploy", model=version, deployment="web", force_reason="now")
        await operator.call("set_pricing", deployment="web", price_per_1k_tokens=0.01)

    async with platform.session("admin") as admin:
        await admin.call("deploy", model=version, deployment="web-prod", environment="prod")

    async with platform.session("operator") as operator:
        for tool, arguments in (
            ("rollback", {}),
            ("set_pricing", {"price_per_1k_tokens": 0.02}),
            ("set_alias", {"alias": "stable", "version_id": version}),
        ):
            with pytest.raises(
                LifecycleError, match="on prod deployment 'web-prod' needs the admin"
            ):
                await operator.call(tool, deployment="web-prod", **arguments)
        # Reading prod stays open to every role.
        listed = {d["deployment"]: d for d in await operator.call("list_deployments")}
        assert {name: d["environment"] for name, d in listed.items()} == {
            "web": "dev",
            "web-prod": "prod",
            "web-staging": "staging",
        }
        assert {d["project"] for d in listed.values()} == {"shop"}
        assert dataset["dataset_id"] in {
            d["dataset_id"] for d in await operator.call("list_datasets")
        }


async def test_a_project_sees_and_names_only_its_own_objects(platform: Platform) -> None:
    async with platform.session("admin") as admin:
        version = (await admin.call("register_remote_model", **REMOTE))["id"]
    async with platform.session("operator") as operator:
        dataset = await operator.call("prepare_dataset", path=str(platform.data))
        run = await operator.call("start_finetune", dataset_id=dataset["dataset_id"])
        await operator.call("deploy", model=version, deployment="web")
    shop = {"dataset": dataset["dataset_id"], "run": run["run_id"], "version": version}

    async with platform.session("outsider") as outsider:
        assert await outsider.call("list_datasets") == []
        assert await outsider.call("list_runs") == []
        assert await outsider.call("list_deployments") == []
        assert await outsider.call("list_evals") == []
        assert (await outsider.call("list_models"))["model_versions"] == []
        # Named, another project's objects do not exist.
        for tool, arguments, message in (
            ("get_run", {"run_id": shop["run"]}, f"no run '{shop['run']}'"),
            ("cancel_run", {"run_id": shop["run"]}, f"no run '{shop['run']}'"),
            ("get_metrics", {"deployment": "web"}, "no deployment 'web'"),
            ("get_lineage", {"model": shop["version"]}, "no model version"),
            ("query_model", {"model": "web@champion", "messages": []}, "no deployment 'web'"),
            ("start_finetune", {"dataset_id": shop["dataset"]}, "no dataset"),
            ("deploy", {"model": shop["version"], "deployment": "mine"}, "no model version"),
        ):
            with pytest.raises(LifecycleError, match=message):
                await outsider.call(tool, **arguments)
        # Deployment names are shared: another project's is taken, whatever it holds.
        with pytest.raises(LifecycleError, match="deployment name 'web' is taken"):
            await outsider.call(
                "set_gate", deployment="web", criteria=["accuracy >= 0.5"], dataset_id="x"
            )
        for uri in (
            f"turing://datasets/{shop['dataset']}/report",
            f"turing://runs/{shop['run']}/events",
            "turing://deployments/web/audit",
            f"turing://models/{shop['version']}/card",
        ):
            with pytest.raises(MCPError, match=r"no (dataset|run|deployment|model version)"):
                await outsider.client.read_resource(uri)
        assert await read_json(outsider, "turing://runs") == []
        # The same file makes a dataset of the outsider's own, under another id.
        own = await outsider.call("prepare_dataset", path=str(platform.data))
        assert own["dataset_id"] != shop["dataset"]

    async with platform.session("viewer") as viewer:
        assert [r["run_id"] for r in await viewer.call("list_runs")] == [shop["run"]]
        assert (await viewer.call("get_run", run_id=shop["run"]))["status"] == "queued"
        assert [d["dataset_id"] for d in await viewer.call("list_datasets")] == [shop["dataset"]]
    async with platform.session("root") as root:
        assert len(await root.call("list_datasets")) == 2
        assert [d["deployment"] for d in await root.call("list_deployments")] == ["web"]


async def test_every_mutating_call_is_audited_with_its_caller_and_secrets_masked(
    platform: Platform,
) -> None:
    async with platform.session("viewer") as viewer:
        await viewer.call("list_datasets")  # reading is not audited
        with pytest.raises(LifecycleError):
            await viewer.call("prepare_dataset", path=str(platform.data))
    async with platform.session("operator") as operator:
        with pytest.raises(LifecycleError):  # a misspelt argument fails the call, audited too
            await operator.call("prepare_dataset", path=str(platform.data), api_key="sk-live-123")
        await operator.call("prepare_dataset", path=str(platform.data), pii="keep")

    async with platform.session("admin") as admin:
        trail = [row for row in await read_json(admin, "turing://audit") if row["tool"]]
    assert [(row["tool"], row["actor"].split(" ")[0]) for row in trail] == [
        ("prepare_dataset", "operator"),
        ("prepare_dataset", "operator"),
        ("prepare_dataset", "viewer"),
    ]
    done, misspelt, refused = trail
    assert done["result"] == "ok" and done["project"] == "shop"
    assert done["arguments"] == {"path": str(platform.data), "pii": "keep"}
    assert misspelt["arguments"]["api_key"] == audit.MASK
    assert "api_key" in misspelt["result"] and "sk-live" not in misspelt["result"]
    assert "prepare_dataset needs the operator role" in refused["result"]
    assert refused["actor"] == f"viewer ({auth.list_tokens(platform.services)[0]['id']})"

    # The secret is nowhere in the registry, and another project sees none of these rows.
    with closing(sqlite3.connect(platform.services.workspace.registry_path)) as db:
        rows = db.execute("SELECT * FROM audit").fetchall()
    assert rows and not any("sk-live-123" in str(value) for row in rows for value in row)
    async with platform.session("outsider") as outsider:  # only the making of its own token
        trail = await read_json(outsider, "turing://audit")
        assert [(row["action"], row["project"]) for row in trail] == [("token_created", "lab")]


async def test_names_are_checked_as_the_tool_reads_them_and_actors_come_from_tokens(
    platform: Platform,
) -> None:
    async with platform.session("root") as root:
        version = (await root.call("register_remote_model", **REMOTE))["id"]
        await root.call("deploy", model=version, deployment="lab-web", force_reason="a test")
    with platform.services.registry.db.conn:  # the deployment belongs to the lab project
        platform.services.registry.db.execute(
            "UPDATE deployments SET project = 'lab' WHERE name = 'lab-web'"
        )
        platform.services.registry.db.execute(
            "UPDATE model_versions SET project = 'lab' WHERE id = ?", [version]
        )

    async with platform.session("operator") as operator:
        # Padding does not slip another project's name past the check, wherever it sits.
        for padded in (f" {version}", f"{version}\t", f"\xa0{version}\n", " lab-web@champion"):
            with pytest.raises(LifecycleError, match=r"no (model version|deployment)"):
                await operator.call("kill_version", version_id=padded, reason="x")
        for source in ("queries://lab-web\n", "queries://lab\t-web?min_rating=0"):
            with pytest.raises(LifecycleError, match="holds no spaces or control characters"):
                await operator.call("prepare_dataset", path=source)
        # An unknown tool is unknown, not a matter of roles.
        result = await operator.client.call_tool("no_such_tool", {})
        assert result.is_error and "Unknown tool" in str(result.content), result.content
    async with platform.session("admin") as admin:
        # A project's admin may not send the server's environment to an endpoint it picks.
        with pytest.raises(LifecycleError, match=r"needs an admin of every project \('\*'\)"):
            await admin.call("register_remote_model", api_key_env="HOME", **REMOTE)
        own = (await admin.call("register_remote_model", **REMOTE))["id"]
        await admin.call("deploy", model=own, deployment="shop-web", force_reason="a test")
    async with platform.session("operator") as operator:
        await operator.call("kill_version", version_id=own, reason="test", actor="admin")
        listed = await operator.call("list_incidents", deployment="shop-web")
    [killed] = listed["killed_versions"]
    assert killed["actor"].startswith("operator (tok-") and killed["actor"].endswith(" for admin")
    assert listed["incidents"][0]["trigger"].startswith("kill_version by operator (tok-")

    # Another project's alias is not found over the OpenAI API either, and leaks no version.
    headers = {"authorization": f"Bearer {platform.secrets['operator']}"}
    reply = httpx.get(f"{platform.url}/v1/models/lab-web@champion", headers=headers)
    assert reply.status_code == 404 and version not in reply.text, reply.text
    assert "no deployment 'lab-web'" in reply.text


async def test_personal_data_in_reasons_and_results_is_redacted_in_the_audit_trail(
    platform: Platform,
) -> None:
    async with platform.session("admin") as admin:
        version = (await admin.call("register_remote_model", **REMOTE))["id"]
        reason = "call ana@example.com about card 4111 1111 1111 1111"
        await admin.call("deploy", model=version, deployment="web", force_reason=reason)
        with pytest.raises(LifecycleError):
            await admin.call(
                "set_alias", deployment="web", alias="ana@example.com", version_id=version
            )
    with closing(sqlite3.connect(platform.services.workspace.registry_path)) as db:
        rows = db.execute("SELECT * FROM audit").fetchall()
    text = "\n".join(str(value) for row in rows for value in row)
    assert "[EMAIL]" in text and "[PAYMENT_CARD]" in text
    assert "ana@example.com" not in text and "4111 1111" not in text


async def test_tasks_of_runs_answer_only_their_project_and_cancelling_one_needs_an_operator(
    platform: Platform,
) -> None:
    async with platform.session("operator") as operator:
        dataset = await operator.call("prepare_dataset", path=str(platform.data))
        run_id = (await operator.call("start_finetune", dataset_id=dataset["dataset_id"]))["run_id"]
    cancel = CancelTask(params=TaskId(task_id=run_id))

    async with platform.session("outsider", extensions=[Tasks()]) as outsider:
        with pytest.raises(MCPError, match=f"Failed to retrieve task: no run '{run_id}'"):
            await get_task(outsider.client, run_id)
        with pytest.raises(MCPError, match=f"no run '{run_id}'"):
            await outsider.client.session.send_request(cancel, Result)
    async with platform.session("viewer", extensions=[Tasks()]) as viewer:
        assert (await get_task(viewer.client, run_id)).status == "working"
        with pytest.raises(MCPError, match="cancel_run needs the operator role"):
            await viewer.client.session.send_request(cancel, Result)
    async with platform.session("operator", extensions=[Tasks()]) as operator:
        await operator.client.session.send_request(cancel, Result)
        assert (await get_task(operator.client, run_id)).status == "cancelled"

    async with platform.session("root") as root:
        trail = [row for row in await read_json(root, "turing://audit") if row["tool"]]
    cancels = [(row["actor"].split(" ")[0], row["result"]) for row in trail[:3]]
    assert [actor for actor, _ in cancels] == ["operator", "viewer", "outsider"]
    assert cancels[0][1] == "ok" and "needs the operator role" in cancels[1][1]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("OPENAI_API_KEY", True),
        ("access_token", True),
        ("token", True),
        ("password", True),
        ("client_secret", True),
        ("Authorization", True),
        ("max_tokens", False),
        ("tokens_in", False),
        ("api_key_env", False),
        ("path", False),
    ],
)
def test_secret_arguments_are_recognised_by_name(key: str, secret: bool) -> None:
    assert audit.is_secret_key(key) is secret


def test_masking_reaches_nested_arguments_and_bearer_values() -> None:
    masked = audit.mask_secrets(
        {"headers": {"Authorization": "x"}, "routes": [{"token": "t"}], "note": "Bearer abc"}
    )
    assert masked == {
        "headers": {"Authorization": "***"},
        "routes": [{"token": "***"}],
        "note": "***",
    }


def test_an_http_request_without_a_verified_caller_is_refused() -> None:
    request = Request(
        {"type": "http", "method": "POST", "path": "/mcp", "headers": [], "state": {}}
    )
    with pytest.raises(access.AccessDeniedError, match="no verified caller"):
        access.principal_of(request)
    assert access.principal_of(None) is access.LOCAL
