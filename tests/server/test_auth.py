"""Bearer tokens and the HTTP transport's guard: the `turing token` command, MCP over
streamable HTTP with a real SDK client, and the Host/Origin checks against DNS rebinding."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context

from turing.server import auth
from turing.server.access import SCOPE_KEY, Principal
from turing.server.app import create_app
from turing.server.http_api import HttpServer
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}
LOOPBACK_80 = {"127.0.0.1:80", "localhost:80", "[::1]:80"}


def turing_command(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `turing` command on a workspace; stdout and stderr are captured apart."""
    env = {**os.environ, "TURING_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "turing.server.cli", "--log-level", "WARNING", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_token(home: Path, role: str, name: str = "test", project: str = "default") -> str:
    """A token made with `turing token create`; its stdout is the secret alone."""
    done = turing_command(
        home, "token", "create", "--name", name, "--role", role, "--project", project
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def turing_http(home: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`turing serve --http 127.0.0.1:0` as a subprocess; yields its base URL once it answers."""
    log = home.parent / f"{home.name}-serve.log"
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "turing.server.cli", "serve", "--http", "127.0.0.1:0"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*command, *extra],
            env={**os.environ, "TURING_HOME": str(home), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield _wait_for_http(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_for_http(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"turing serve --http exited: {log.read_text()}")
        found = re.search(r"HTTP server on (http://\S+)", log.read_text())
        if found:
            try:
                if httpx.get(f"{found[1]}/health", timeout=2).status_code == 200:
                    return found[1]
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"turing serve --http did not answer in {timeout}s: {log.read_text()}")


def test_a_token_secret_is_printed_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = make_token(home, "operator", name="ci", project="billing")
    assert re.fullmatch(r"turing_[A-Za-z0-9_-]{40,}", secret), secret

    listed = turing_command(home, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["name"], row["role"], row["project"]) for row in rows] == [
        ("ci", "operator", "billing")
    ]
    assert secret not in listed.stdout and "secret_sha256" not in rows[0]
    table = turing_command(home, "token", "list").stdout
    assert rows[0]["id"] in table and "operator" in table and secret not in table

    stored = b"".join(path.read_bytes() for path in home.glob("registry.db*"))
    assert secret.encode() not in stored
    with closing(sqlite3.connect(home / "registry.db")) as db:
        (digest,) = db.execute("SELECT secret_sha256 FROM tokens").fetchone()
    assert digest == hashlib.sha256(secret.encode()).hexdigest()

    revoked = turing_command(home, "token", "revoke", rows[0]["id"])
    assert revoked.returncode == 0, revoked.stderr
    again = turing_command(home, "token", "revoke", rows[0]["id"])
    assert again.returncode == 2 and "already revoked" in again.stderr
    unknown = turing_command(home, "token", "revoke", "tok-nope")
    assert unknown.returncode == 2 and "no token 'tok-nope'" in unknown.stderr
    bad_role = turing_command(home, "token", "create", "--name", "x", "--role", "root")
    assert bad_role.returncode == 2 and "invalid choice: 'root'" in bad_role.stderr


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    opened = Services.open(Workspace(tmp_path / "home", tmp_path / "cache"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("name", "role", "project", "message"),
    [
        ("", "viewer", "default", "name='': give 1-100 characters"),
        ("x" * 101, "viewer", "default", "give 1-100 characters"),
        ("a\nb", "viewer", "default", "control characters"),
        ("ci", "owner", "default", "role='owner': give one of viewer, operator, admin"),
        ("ci", "viewer", "", "project='': give '\\*'"),
        ("ci", "viewer", "../x", "project='../x'"),
    ],
)
def test_token_creation_names_the_bad_field(
    services: Services, name: str, role: str, project: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        auth.create_token(services, name, role, project)
    assert auth.list_tokens(services) == []


def test_verify_knows_live_tokens_only_and_records_their_use(services: Services) -> None:
    row, secret = auth.create_token(services, "alice", "admin", "*", created_by="root")
    principal = auth.verify(services, secret)
    assert principal == Principal(f"alice ({row['id']})", "admin", "*", row["id"])
    used = services.registry.get("tokens", row["id"])["last_used_at"]
    assert used is not None
    auth.verify(services, secret)  # within a minute: no second write
    assert services.registry.get("tokens", row["id"])["last_used_at"] == used

    for wrong in ("", secret + "x", secret[:-1], "x" * 10_000):
        assert auth.verify(services, wrong) is None
    auth.revoke_token(services, row["id"])
    assert auth.verify(services, secret) is None
    with pytest.raises(ConflictError, match="already revoked"):
        auth.revoke_token(services, row["id"])
    with pytest.raises(NotFoundError, match="no token 'tok-0'"):
        auth.revoke_token(services, "tok-0")
    actions = [entry["action"] for entry in services.registry.rows("audit", order_by="id")]
    assert actions == ["token_created", "token_revoked"]


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        ("127.0.0.1", (), LOOPBACK_80),
        ("localhost", (), LOOPBACK_80),
        ("::1", (), LOOPBACK_80),
        ("10.0.0.7", (), {"10.0.0.7:80"}),
        # A name without a port is also answered bare, as it arrives through a TLS proxy.
        ("fe80::1", ("Box.lan",), {"[fe80::1]:80", "box.lan:80", "box.lan"}),
        (
            "0.0.0.0",
            ("box.lan:8443",),
            {"127.0.0.1:80", "localhost:80", "[::1]:80", "box.lan:8443"},
        ),
    ],
)
def test_the_server_answers_to_its_own_address_only(
    host: str, extra: tuple[str, ...], expected: set[str]
) -> None:
    assert auth.allowed_hosts(host, 80, extra) == expected


def whoami(ctx: Context) -> dict[str, Any]:
    """The principal the HTTP layer put in this request's scope."""
    principal = ctx.request_context.request.scope["state"][SCOPE_KEY]  # type: ignore[union-attr]
    return {"actor": principal.actor, "role": principal.role, "project": principal.project}


@pytest.fixture
def mcp_http(services: Services) -> Iterator[str]:
    """The Turing MCP server over streamable HTTP on a free loopback port, in this process."""
    app = create_app(services)
    app.tool()(whoami)
    server = HttpServer(services, "127.0.0.1", 0, mcp=app)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        services.jobs.stop_ticking()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def list_and_call(url: str, secret: str, tool: str) -> tuple[set[str], Any]:
    """Tool names, and one tool's result, through the SDK's streamable HTTP client."""
    async with (
        httpx.AsyncClient(headers=bearer(secret), timeout=60) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        tools = {tool.name for tool in (await client.list_tools()).tools}
        return tools, await client.call_tool(tool, {})


@pytest.mark.anyio
async def test_a_token_lists_tools_and_its_principal_reaches_the_tool(
    mcp_http: str, services: Services
) -> None:
    _, viewer = auth.create_token(services, "dash", "viewer", "billing")
    tools, refused = await list_and_call(mcp_http, viewer, "whoami")
    assert {"prepare_dataset", "query_model", "whoami"} <= tools
    assert refused.is_error  # an unlisted tool needs admin

    row, admin = auth.create_token(services, "ops", "admin", "billing")
    _, called = await list_and_call(mcp_http, admin, "whoami")
    assert called.structured_content == {
        "actor": f"ops ({row['id']})",
        "role": "admin",
        "project": "billing",
    }


@pytest.mark.anyio
async def test_the_sdk_client_without_a_token_cannot_connect(mcp_http: str) -> None:
    statuses: list[int] = []

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with httpx.AsyncClient(timeout=30, event_hooks={"response": [record]}) as http:
        with pytest.raises(ExceptionGroup) as raised:
            async with Client(streamable_http_client(f"{mcp_http}/mcp", http_client=http)):
                pass
    assert raised.group_contains(MCPError)
    assert statuses and set(statuses) == {401}, statuses


def test_requests_without_a_live_token_get_401_and_foreign_hosts_403(
    mcp_http: str, services: Services
) -> None:
    row, secret = auth.create_token(services, "ci", "viewer")
    port = mcp_http.rsplit(":", 1)[1]
    good = {**bearer(secret), **MCP_HEADERS}

    def post(headers: dict[str, str], path: str = "/mcp") -> httpx.Response:
        return httpx.post(f"{mcp_http}{path}", json=INITIALIZE, headers=headers, timeout=30)

    assert post(good).status_code == 200
    assert post(
        {**good, "host": f"localhost:{port}", "origin": f"http://localhost:{port}"}
    ).is_success
    for public in ("/health", "/dashboard"):  # the dashboard's page shell holds no data
        assert httpx.get(f"{mcp_http}{public}", timeout=30).status_code == 200, public
    assert httpx.get(f"{mcp_http}/metrics", headers=bearer(secret), timeout=30).status_code == 200

    for headers, path in (
        (MCP_HEADERS, "/mcp"),
        ({**MCP_HEADERS, "authorization": "Bearer turing_wrong"}, "/mcp"),
        ({**MCP_HEADERS, "authorization": f"Basic {secret}"}, "/mcp"),
        ({}, "/metrics"),
        ({}, "/v1/models"),
        ({}, "/dashboard/api/overview"),
        ({}, "/no-such-route"),
    ):
        refused = post(headers, path)
        assert refused.status_code == 401, (path, refused.text)
        assert "bearer token is required" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"].startswith("Bearer")

    for changed, problem in (
        ({"host": f"evil.example:{port}"}, "Host header 'evil.example"),
        ({"host": "127.0.0.1"}, "Host header '127.0.0.1'"),  # the port is part of the check
        ({"host": f"127.0.0.1:{int(port) + 1}"}, "is not this server's address"),
        ({"origin": "http://evil.example"}, "Origin 'http://evil.example'"),
        ({"origin": f"https://127.0.0.1:{int(port) + 1}"}, "Origin"),
        ({"origin": "null"}, "Origin 'null'"),
    ):
        for path in ("/mcp", "/health"):
            refused = post({**good, **changed}, path)
            assert refused.status_code == 403, (changed, path, refused.text)
            assert problem in refused.json()["error"]["message"]

    auth.revoke_token(services, row["id"])
    assert post(good).status_code == 401


def test_an_mcp_session_answers_only_the_token_that_opened_it(
    mcp_http: str, services: Services
) -> None:
    _, first = auth.create_token(services, "one", "admin")
    _, second = auth.create_token(services, "two", "admin")
    opened = httpx.post(
        f"{mcp_http}/mcp", json=INITIALIZE, headers={**bearer(first), **MCP_HEADERS}, timeout=30
    )
    session = {"mcp-session-id": opened.headers["mcp-session-id"], **MCP_HEADERS}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    own = httpx.post(f"{mcp_http}/mcp", json=ping, headers={**bearer(first), **session})
    assert own.status_code == 200, own.text
    other = httpx.post(f"{mcp_http}/mcp", json=ping, headers={**bearer(second), **session})
    assert other.status_code == 404, other.text


def test_serve_http_refuses_a_public_address_unless_allowed(tmp_path: Path) -> None:
    done = turing_command(tmp_path / "home", "serve", "--http", "0.0.0.0:0", timeout=120)
    assert done.returncode == 2
    assert "'0.0.0.0' is not a loopback address" in done.stderr
    assert "--allow-remote" in done.stderr


def test_serve_http_carries_mcp_and_the_api_for_a_token_made_by_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = make_token(home, "viewer")
    with turing_http(home) as url:
        models = httpx.get(f"{url}/v1/models", headers=bearer(secret), timeout=30)
        assert models.status_code == 200 and models.json()["object"] == "list"
        opened = httpx.post(
            f"{url}/mcp", json=INITIALIZE, headers={**bearer(secret), **MCP_HEADERS}, timeout=30
        )
        assert opened.status_code == 200 and "turing" in opened.text
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        listed = json.loads(turing_command(home, "token", "list", "--json").stdout)
        assert listed["last_used_at"] is not None  # the server wrote to the CLI's registry
