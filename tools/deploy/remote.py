"""Remote model versions: a route that answers from another OpenAI-compatible server.

Scale-out without new machinery: another Turing, llama.cpp's `llama-server` or vLLM serving the
same base model becomes a model version, and a deployment weighs it like a local one (canary,
A/B, shadow, rollback), with the same telemetry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.base_models import get_base_model
from turing.tools.errors import ConflictError, InvalidInputError, UpstreamError

logger = logging.getLogger(__name__)

REMOTE_FORMAT = "openai-remote"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_MODEL_NAME = 200
PROBE_SECONDS = 10.0


def register_remote_version(
    services: Services,
    endpoint: str,
    model: str,
    base_model: str,
    api_key_env: str | None = None,
    check: bool = True,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Register a model served by an OpenAI-compatible server as a model version (once).

    Args:
        services: The server's services.
        endpoint: The server's API base URL, as an OpenAI client takes it, e.g.
            "http://10.0.0.7:8100/v1"; requests go to {endpoint}/chat/completions.
        model: The model name that server answers to (a deployment, for another Turing).
        base_model: The base model it runs; routes of one deployment share a base model.
        api_key_env: The environment variable of this server process holding the API key,
            sent as a bearer token; the key itself is never stored.
        check: Ask the server's /models first and refuse when it does not list `model`.
        reason: Why, for the audit trail.
        actor: Who registers it, for the audit trail.

    Returns:
        The model version row; the id hashes the endpoint and model, so registering the same
        pair again returns the same version.
    """
    endpoint = check_endpoint(endpoint)
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
        raise InvalidInputError(f"model={model!r}: give the remote model name, 1-200 characters")
    if api_key_env is not None and not ENV_NAME.fullmatch(api_key_env):
        raise InvalidInputError(
            f"api_key_env={api_key_env!r}: give the name of an environment variable "
            "(letters, digits and '_'), not the key itself"
        )
    if api_key_env and not os.environ.get(api_key_env):
        raise InvalidInputError(f"api_key_env={api_key_env}: that variable is not set here")
    base = get_base_model(services, base_model)

    project = access.owner_project()
    content = f"{REMOTE_FORMAT}\n{endpoint}\n{model}"
    if project != access.DEFAULT_PROJECT:  # each project registers its own version
        content += f"\n{project}"
    digest = hashlib.sha256(content.encode()).hexdigest()
    version_id = "mv-" + digest[:12]
    existing = services.registry.find("model_versions", version_id)
    if existing is not None:
        if (existing["base_model"], existing["api_key_env"]) != (base["name"], api_key_env):
            raise ConflictError(
                f"{version_id} ({model} at {endpoint}) is registered with base model "
                f"{existing['base_model']!r} and api_key_env {existing['api_key_env']!r}; "
                "model versions never change"
            )
        return existing
    if check:
        _check_lists_model(endpoint, model, api_key_env)

    row = {
        "id": version_id,
        "run_id": None,
        "base_model": base["name"],
        "format": REMOTE_FORMAT,
        "gguf_path": "",
        "sha256": None,
        "endpoint": endpoint,
        "remote_model": model,
        "api_key_env": api_key_env,
        "created_at": utc_now(),
        "project": project,
    }
    services.registry.insert("model_versions", row)
    audit.record(
        services,
        "register_remote",
        version_id,
        reason,
        endpoint=endpoint,
        remote_model=model,
        base_model=base["name"],
        actor=actor,
    )
    logger.info("model version %s answers from %s at %s", version_id, model, endpoint)
    return services.registry.get("model_versions", version_id, "model version")  # as stored


def check_endpoint(endpoint: Any) -> str:
    """An http(s) base URL without credentials, query or fragment, its trailing '/' removed."""
    problem = None
    if not isinstance(endpoint, str):
        problem = "must be a string"
    else:
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "must be an http:// or https:// URL with a host"
        elif parts.username or parts.password:
            problem = "must not carry credentials; name the key's variable in api_key_env"
        elif parts.query or parts.fragment:
            problem = "must not have a query or fragment"
    if problem:
        raise InvalidInputError(f"endpoint={endpoint!r} {problem}, e.g. 'http://127.0.0.1:8100/v1'")
    return str(endpoint).strip().rstrip("/")


def _check_lists_model(endpoint: str, model: str, api_key_env: str | None) -> None:
    import httpx2 as httpx

    headers = {}
    if api_key_env:
        headers["authorization"] = f"Bearer {os.environ[api_key_env]}"
    try:
        reply = httpx.get(f"{endpoint}/models", headers=headers, timeout=PROBE_SECONDS)
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"{endpoint}/models could not be reached: {exc}; start that server, or pass "
            "check=false to register it anyway"
        ) from exc
    if reply.status_code != 200:
        raise UpstreamError(f"{endpoint}/models answered {reply.status_code}: {reply.text[:300]}")
    try:
        names = [entry["id"] for entry in reply.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(f"{endpoint}/models is not an OpenAI model list: {exc}") from exc
    if model not in names:
        shown = ", ".join(map(str, names[:20])) or "none"
        raise InvalidInputError(f"{endpoint} does not serve model {model!r}; it lists: {shown}")
