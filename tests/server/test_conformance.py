"""The official MCP conformance suite's server scenarios against `turing serve --http`.

The suite (`@modelcontextprotocol/conformance`, run with Node) cannot send headers, so it talks
to a small loopback proxy, written here, that adds the bearer token: the server keeps its auth.
`.ci/run` installs the suite into `.ci/node`; TURING_CONFORMANCE_DIR names another install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from tests.helpers import skip_unless_required
from tests.server.test_auth import make_token, turing_http

REPO = Path(__file__).resolve().parents[2]
SUITE_VERSION = "0.1.10"
SCENARIOS = ["server-initialize", "ping", "tools-list", "resources-list", "logging-set-level"]
HOP_BY_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"authorization"}


def conformance_cli() -> Path:
    """The suite's command-line entry point, or a skip saying how to install it."""
    folder = Path(os.environ.get("TURING_CONFORMANCE_DIR") or REPO / ".ci" / "node")
    package = folder / "node_modules" / "@modelcontextprotocol" / "conformance"
    if shutil.which("node") is None:
        skip_unless_required("node is not installed; the MCP conformance suite runs on Node 20")
    if not (package / "package.json").is_file():
        skip_unless_required(
            f"the MCP conformance suite is not installed in {folder}: run .ci/run, or npm install "
            f"--prefix {folder} @modelcontextprotocol/conformance@{SUITE_VERSION}, or set "
            "TURING_CONFORMANCE_DIR"
        )
    version = json.loads((package / "package.json").read_text())["version"]
    assert version == SUITE_VERSION, f"{package} is version {version}, not {SUITE_VERSION}"
    return package / "dist" / "index.js"


class BearerProxy:
    """Forwards every request to `upstream` with an Authorization header and the upstream's Host;
    responses (event streams too) are passed back as they arrive."""

    def __init__(self, upstream: str, secret: str) -> None:
        self.upstream = upstream
        self.authorization = f"Bearer {secret}".encode()
        self.host = upstream.removeprefix("http://").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(key, value) for key, value in scope["headers"] if key not in HOP_BY_HOP]
        headers += [(b"host", self.host), (b"authorization", self.authorization)]
        url = f"{self.upstream}{scope['path']}"
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()

        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=300)) as client,
            anyio.create_task_group() as group,
        ):
            group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
            request = client.build_request(scope["method"], url, headers=headers, content=body)
            reply = await client.send(request, stream=True)
            try:
                kept = [(k, v) for k, v in reply.headers.raw if k.lower() not in HOP_BY_HOP]
                start: Message = {"type": "http.response.start", "status": reply.status_code}
                await send({**start, "headers": kept})
                async for chunk in reply.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await reply.aclose()
            group.cancel_scope.cancel()

    @staticmethod
    async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


@pytest.fixture(scope="module")
def proxied_turing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`turing serve --http` (its own workspace) behind the bearer proxy; yields the proxy URL."""
    home = tmp_path_factory.mktemp("conformance") / "home"
    secret = make_token(home, "viewer")
    with turing_http(home) as upstream:
        config = uvicorn.Config(
            BearerProxy(upstream, secret),
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        proxy = uvicorn.Server(config)
        thread = threading.Thread(target=proxy.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not proxy.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = proxy.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proxy.should_exit = True
            thread.join(timeout=10)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_conformance_scenario_passes(
    scenario: str, proxied_turing: str, tmp_path: Path
) -> None:
    cli = conformance_cli()
    command = ["node", str(cli), "server", "--url", f"{proxied_turing}/mcp"]
    done = subprocess.run(
        [*command, "--scenario", scenario, "--output-dir", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = done.stdout + done.stderr
    checks = [
        check for path in tmp_path.rglob("checks.json") for check in json.loads(path.read_text())
    ]
    not_passed = [check for check in checks if check["status"] != "SUCCESS"]
    assert checks, report
    assert not not_passed, json.dumps(not_passed, indent=2) + report
    assert done.returncode == 0, report
