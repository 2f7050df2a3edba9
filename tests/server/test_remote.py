"""Remote model versions: a deployment route answered by another Turing over HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import openai
import pytest

from turing.server import auth
from turing.server.http_api import HttpServer
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools.base_models import register_base_model
from turing.tools.deploy import lineage, versions
from turing.tools.deploy.remote import register_remote_version
from turing.tools.errors import InvalidInputError, UpstreamError
from turing.tools.query import serve, traffic_metrics

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]


KEY_ENV = "TURING_TEST_REMOTE_TOKEN"  # the front's variable holding a token of the remote


def turing_with_http(home: Path, tiny_base: Path) -> tuple[Services, HttpServer, str]:
    """A Turing with its HTTP API on a loopback port, and the secret of a viewer token."""
    services = Services.open(Workspace(home, home.parent / "cache"))
    register_base_model(services, "tiny", str(tiny_base))
    _, secret = auth.create_token(services, "front", "viewer")
    server = HttpServer(services, "127.0.0.1", 0)
    server.start()
    return services, server, secret


@pytest.fixture
def two_turings(
    tmp_path: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Services, str, Services, str]]:
    """A remote Turing and a front Turing, each with its HTTP API on a loopback port; the
    front's environment holds a token of the remote in KEY_ENV."""
    remote, remote_http, remote_secret = turing_with_http(tmp_path / "remote", tiny_base)
    front, front_http, front_secret = turing_with_http(tmp_path / "front", tiny_base)
    monkeypatch.setenv(KEY_ENV, remote_secret)
    monkeypatch.setenv("TURING_TEST_FRONT_TOKEN", front_secret)
    try:
        yield remote, f"{remote_http.url}/v1", front, f"{front_http.url}/v1"
    finally:
        for server, services in ((front_http, front), (remote_http, remote)):
            server.stop()
            services.close()


def front_client(front_url: str) -> openai.OpenAI:
    secret = os.environ["TURING_TEST_FRONT_TOKEN"]
    return openai.OpenAI(base_url=front_url, api_key=secret, max_retries=0)


def closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_deployment_routes_to_a_remote_turing_and_answers_as_it_does(
    two_turings: tuple[Services, str, Services, str],
) -> None:
    remote, remote_url, front, front_url = two_turings
    with pytest.raises(UpstreamError, match="answered 401"):  # a Turing needs its token
        register_remote_version(front, remote_url, "tiny", "tiny")
    version = register_remote_version(
        front, remote_url, "tiny", "tiny", api_key_env=KEY_ENV, reason="scale out"
    )
    assert version["format"] == "openai-remote" and version["endpoint"] == remote_url
    assert register_remote_version(front, remote_url + "/", "tiny", "tiny", KEY_ENV) == version
    versions.deploy(front, version["id"], "scaled")

    direct = serve.query_model(remote, "tiny", ASK, max_tokens=10)
    routed = serve.query_model(front, "scaled", ASK, max_tokens=10)
    assert routed["text"] == direct["text"]
    assert routed["version_id"] == version["id"] and routed["deployment"] == "scaled"
    assert routed["completion_tokens"] == direct["completion_tokens"]

    client = front_client(front_url)
    chunks = client.chat.completions.create(
        model="scaled",
        messages=ASK,
        max_tokens=10,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct["text"]

    front_live = traffic_metrics.deployment_metrics(front, "scaled")["live"]
    assert front_live["count"] == 2 and front_live["errors"] == 0
    assert front_live["tokens_out"] == 2 * direct["completion_tokens"]
    remote.telemetry.flush()
    import sqlite3

    with closing(sqlite3.connect(remote.workspace.registry_path)) as db:
        transports = [row[0] for row in db.execute("SELECT transport FROM queries")]
    assert sorted(transports) == ["http", "http", "mcp"]  # the direct query came in-process

    found = lineage.get_lineage(front, version["id"])
    assert found["version"]["id"] == version["id"]
    card = lineage.model_card(front, version["id"])
    assert f"answered by model `tiny` at {remote_url}" in card and "scaled" in card


def test_an_unreachable_remote_is_a_clear_error_recorded_against_the_route(
    two_turings: tuple[Services, str, Services, str],
) -> None:
    _, _, front, front_url = two_turings
    gone = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(UpstreamError, match="could not be reached"):
        register_remote_version(front, gone, "tiny", "tiny")
    version = register_remote_version(front, gone, "tiny", "tiny", check=False)
    versions.deploy(front, version["id"], "down")

    with pytest.raises(UpstreamError, match=f"remote {gone} could not be reached"):
        serve.query_model(front, "down", ASK, max_tokens=4)
    client = front_client(front_url)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="down", messages=ASK, max_tokens=4)  # type: ignore[arg-type]
    assert raised.value.status_code == 502
    live = traffic_metrics.deployment_metrics(front, "down")["live"]
    assert live["count"] == 2 and live["errors"] == 2


def test_registration_refuses_what_it_cannot_serve(
    two_turings: tuple[Services, str, Services, str],
) -> None:
    _, remote_url, front, _ = two_turings
    with pytest.raises(InvalidInputError, match=r"does not serve model 'nope'; it lists: .*tiny"):
        register_remote_version(front, remote_url, "nope", "tiny", api_key_env=KEY_ENV)
    for endpoint, message in (
        ("ftp://127.0.0.1/v1", "http:// or https:// URL"),
        ("http://user:secret@127.0.0.1/v1", "must not carry credentials"),
        ("http://127.0.0.1/v1?x=1", "query or fragment"),
        ("127.0.0.1:8100", "http:// or https:// URL"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            register_remote_version(front, endpoint, "tiny", "tiny")
    with pytest.raises(InvalidInputError, match="not the key itself"):
        register_remote_version(front, remote_url, "tiny", "tiny", api_key_env="sk-123 456")
    with pytest.raises(InvalidInputError, match="TURING_TEST_UNSET_KEY: that variable is not set"):
        register_remote_version(
            front, remote_url, "tiny", "tiny", api_key_env="TURING_TEST_UNSET_KEY"
        )
    assert front.registry.rows("model_versions") == []
