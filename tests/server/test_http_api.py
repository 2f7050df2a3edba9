"""The OpenAI-compatible HTTP API, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.server.test_auth import make_token, turing_http
from tests.server.test_deployments import ab_deployment
from turing.server import auth
from turing.server.http_api import HttpServer, check_bind_host, parse_chat_request
from turing.server.quickstart import LifecycleError, Session
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools.base_models import register_base_model
from turing.tools.errors import InvalidInputError

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]


@dataclass
class Api:
    """An HTTP server under test: its API's base URL, its services and a viewer's secret."""

    url: str
    services: Services
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret}"}


@pytest.fixture
def api(tmp_path: Path, tiny_base: Path) -> Iterator[Api]:
    """The HTTP server on a free loopback port over a workspace with the tiny model as base
    `tiny`, and a viewer token (the least role that may query)."""
    services = Services.open(Workspace(tmp_path / "home", tmp_path / "cache"))
    register_base_model(services, "tiny", str(tiny_base))
    _, secret = auth.create_token(services, "test", "viewer")
    server = HttpServer(services, "127.0.0.1", 0)
    server.start()
    try:
        yield Api(f"{server.url}/v1", services, secret)
    finally:
        server.stop()
        services.close()


def client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url, api_key=api.secret, max_retries=0, timeout=60)


def test_models_lists_base_models_with_their_lineage(api: Api) -> None:
    listed = {model.id: model for model in client(api).models.list()}
    assert {"tiny", "smollm2-135m-instruct"} <= set(listed)
    tiny = listed["tiny"].model_dump()
    assert tiny["owned_by"] == "turing" and tiny["root"] == "tiny"
    assert tiny["turing"]["kind"] == "base"
    assert client(api).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="no model 'nope'"):
        client(api).models.retrieve("nope")


def test_chat_completion_and_its_stream_give_the_same_greedy_text(
    api: Api,
) -> None:
    services = api.services
    answer = client(api).chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    text = answer.choices[0].message.content
    assert answer.object == "chat.completion" and answer.model == "tiny"
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.choices[0].finish_reason in ("stop", "length")

    chunks = list(
        client(api).chat.completions.create(
            model="tiny",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [answer.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert "<|im_end|>" not in text and "<|im_start|>" not in text

    services.telemetry.flush()
    with closing(sqlite3.connect(services.workspace.registry_path)) as db:
        rows = db.execute("SELECT version_id, error, transport FROM queries").fetchall()
    assert rows == [("tiny", None, "http"), ("tiny", None, "http")]

    # Queries naming a base model belong to no project: a token of one project sees none of
    # them, a token of every project sees them all.
    metrics_url = api.url.removesuffix("/v1") + "/metrics"
    scoped = httpx.get(metrics_url, headers=api.headers, timeout=30)
    assert scoped.status_code == 200 and 'version="tiny"' not in scoped.text
    _, everyone = auth.create_token(api.services, "ops", "viewer", "*")
    scraped = httpx.get(metrics_url, headers={"authorization": f"Bearer {everyone}"}, timeout=30)
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = dict(
        line.rsplit(" ", 1) for line in scraped.text.splitlines() if not line.startswith("#")
    )
    live = '{deployment="",version="tiny",traffic="live"}'
    assert samples["turing_queries_total" + live] == "2"
    assert samples["turing_completion_tokens_total" + live] == str(
        2 * answer.usage.completion_tokens
    )
    assert "# TYPE turing_queries_total counter" in scraped.text


def test_a_stop_string_ends_the_answer_without_being_sent(api: Api) -> None:
    whole = client(api).chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    text = whole.choices[0].message.content or ""
    assert len(text) >= 4, text
    stop = text[2:4]
    chunks = client(api).chat.completions.create(
        model="tiny",
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        stop=[stop],
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": ASK}, "model is required"),
        ({"model": "nope", "messages": ASK}, "no model 'nope'"),
        ({"model": "tiny", "messages": []}, "messages must be a non-empty list"),
        (
            {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
            "messages\\[0\\].role",
        ),
        ({"model": "tiny", "messages": ASK, "temperature": 3}, "temperature=3.0: must be between"),
        ({"model": "tiny", "messages": ASK, "max_tokens": 0}, "max_tokens=0"),
        ({"model": "tiny", "messages": ASK, "max_tokens": "9"}, "max_tokens='9'"),
        ({"model": "tiny", "messages": ASK, "n": 2}, "only n=1"),
        ({"model": "tiny", "messages": ASK, "stop": ["a"] * 5}, "at most 4"),
        ({"model": "tiny", "messages": ASK, "tools": [{"type": "function"}]}, "tools="),
        (
            {"model": "tiny", "messages": ASK, "temprature": 0},
            "unsupported field\\(s\\) temprature",
        ),
        ({"model": "tiny", "messages": ASK, "routing_key": "x" * 300}, "routing_key"),
        ({"model": "tiny", "messages": ASK, "n": True}, "only n=1"),
        ({"model": "tiny", "messages": ASK, "seed": "abc"}, "seed='abc': must be a whole number"),
        (
            {
                "model": "tiny",
                "messages": ASK,
                "stream": True,
                "stream_options": {"include_usage": "no"},
            },
            "include_usage",
        ),
        (
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": [{"type": "text", "text": {}}]}],
            },
            r"content\[0\].text must be a string",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "ok \ud800"}]},
            r"messages\[0\].content has '\\ud800' at character 3, a lone surrogate",
        ),
    ],
)
def test_bad_requests_get_openai_errors_naming_the_field(
    api: Api, body: dict[str, Any], message: str
) -> None:
    # json.dumps escapes a lone surrogate as \\ud800, as JavaScript clients send it.
    raw = json.dumps(body).encode()
    reply = httpx.post(f"{api.url}/chat/completions", content=raw, headers=api.headers, timeout=60)
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["type"] in ("invalid_request_error", "not_found_error")
    assert re.search(message, error["message"]), error["message"]


def test_a_body_that_is_not_json_is_refused(api: Api) -> None:
    reply = httpx.post(
        f"{api.url}/chat/completions", content=b"{not json", headers=api.headers, timeout=10
    )
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json()["error"]["message"]


def test_text_content_parts_are_joined_and_other_parts_refused() -> None:
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]
    parsed = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert parsed.messages == [{"role": "user", "content": "hello there"}]
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    with pytest.raises(InvalidInputError, match=r"content\[0\] is of type 'image_url'"):
        parse_chat_request({"model": "m", "messages": [{"role": "user", "content": image}]})
    developer = parse_chat_request(
        {"model": "m", "messages": [{"role": "developer", "content": "be brief"}, ASK[0]]}
    )
    assert developer.messages[0]["role"] == "system"


def test_only_loopback_addresses_are_served_unless_allowed() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        assert check_bind_host(host)
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        with pytest.raises(InvalidInputError, match="not a loopback address"):
            check_bind_host(host)
        assert not check_bind_host(host, allow_remote=True)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_client.py"


def test_the_example_openai_client_script_answers_whole_and_streamed(api: Api) -> None:
    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TURING_TOKEN": api.secret, "TURING_URL": api.url}
        command = [sys.executable, str(EXAMPLE), *arguments, "--max-tokens", "8"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    whole = run("tiny", "Say hello")
    assert whole.returncode == 0 and whole.stdout.strip(), whole.stderr
    assert re.search(r"\[tiny, \d+ tokens in, \d+ out\]", whole.stderr), whole.stderr
    streamed = run("tiny", "Say hello", "--stream")
    assert streamed.returncode == 0 and streamed.stdout.strip(), streamed.stderr
    assert re.search(r"\[\d+ tokens\]", streamed.stderr), streamed.stderr
    missing = run("nope", "Say hello")
    assert missing.returncode == 1 and missing.stderr.startswith("error: "), missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_openai_client_needs_a_live_token(api: Api) -> None:
    anonymous = openai.OpenAI(base_url=api.url, api_key="turing_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="bearer token is required"):
        anonymous.models.list()
    token_id = auth.list_tokens(api.services)[0]["id"]
    assert client(api).models.retrieve("tiny").id == "tiny"
    auth.revoke_token(api.services, token_id)
    with pytest.raises(openai.AuthenticationError):
        client(api).models.retrieve("tiny")


@pytest.mark.anyio
async def test_a_deployment_made_over_mcp_answers_openai_clients_in_the_same_server(
    tmp_path: Path, tiny_base: Path
) -> None:
    """`turing serve --http` serves MCP and the OpenAI API from one process, with tokens."""
    home = tmp_path / "home"
    admin = {"authorization": f"Bearer {make_token(home, 'admin', name='agent')}"}
    viewer = {"authorization": f"Bearer {make_token(home, 'viewer', name='app')}"}
    inputs = {"TURING_ALLOWED_INPUT_DIRS": os.pathsep.join(map(str, (tmp_path, tiny_base.parent)))}
    with turing_http(home, env=inputs) as url:
        async with (
            httpx.AsyncClient(headers=admin, timeout=120) as mcp_http,
            Client(streamable_http_client(f"{url}/mcp", http_client=mcp_http)) as mcp_client,
        ):
            session = Session(mcp_client)
            a, b = await ab_deployment(session, tmp_path, tiny_base)
            async with httpx.AsyncClient(headers=viewer, timeout=60) as http:
                models = (await http.get(f"{url}/v1/models")).json()["data"]
                triage = next(model for model in models if model["id"] == "triage")
                assert triage["root"] == "tiny" and triage["turing"]["revision"] == 2
                assert {a, b} <= {model["id"] for model in models}

                seen = set()
                for user in ("ann", "bob", "cy", "di", "ed", "flo"):
                    body = {"model": "triage", "messages": ASK, "max_tokens": 2, "user": user}
                    first = await http.post(f"{url}/v1/chat/completions", json=body)
                    again = await http.post(f"{url}/v1/chat/completions", json=body)
                    assert first.status_code == 200, first.text
                    version = first.json()["system_fingerprint"]
                    assert again.json()["system_fingerprint"] == version  # sticky by user
                    assert first.headers["x-turing-revision"] == "2"
                    seen.add(version)
                assert seen <= {a, b}

            for bad in ({"max_tokens": "5"}, {"temperature": True}, {"max_tokens": 2.5}):
                with pytest.raises(LifecycleError, match="validation error"):
                    await session.call("query_model", model="triage", messages=ASK, **bad)

            found = await session.client.read_resource("turing://deployments/triage/metrics")
            metrics = json.loads(found.contents[0].text)  # type: ignore[union-attr]
    assert metrics["live"]["count"] == 12, metrics
    assert metrics["live"]["errors"] == 0, metrics


def test_a_stream_the_client_abandons_frees_the_engine_and_is_recorded(
    api: Api,
) -> None:
    services = api.services
    body = {"model": "tiny", "messages": ASK, "max_tokens": 2000, "temperature": 1, "stream": True}
    url = f"{api.url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=api.headers, timeout=60) as reply:
        for number, _ in enumerate(reply.iter_lines()):
            if number == 3:
                break  # leave after the first pieces of text
    after = client(api).chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=3,  # type: ignore[arg-type]
    )
    assert after.usage is not None and after.usage.completion_tokens >= 1

    services.telemetry.flush()
    with closing(sqlite3.connect(services.workspace.registry_path)) as db:
        rows = db.execute("SELECT error, completion_tokens FROM queries ORDER BY id").fetchall()
    assert len(rows) == 2, rows
    (error, tokens), answered = rows
    assert answered[0] is None
    # The tiny random model samples from ~49k tokens at temperature 1: it almost never ends a
    # 2,000-token answer by itself within the moment the client stays.
    assert error is not None and error.startswith("abandoned"), rows
    assert tokens < 2000


def test_more_callers_than_worker_threads_all_get_answers(api: Api) -> None:
    """Callers waiting for a busy engine must not starve the one that holds it."""

    async def ask_all() -> list[int]:
        async with httpx.AsyncClient(headers=api.headers, timeout=120) as http:
            body = {"model": "tiny", "messages": ASK, "max_tokens": 4, "temperature": 0}
            replies = await asyncio.gather(
                *(http.post(f"{api.url}/chat/completions", json=body) for _ in range(60))
            )
        return [reply.status_code for reply in replies]

    assert asyncio.run(ask_all()) == [200] * 60
