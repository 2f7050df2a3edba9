"""Answer chat queries from a deployment, model version or base model, recording each one.

A deployment's query is answered by the route its weights (or the caller's routing key) choose,
then mirrored to the revision's shadow versions in the background.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.deploy.routing import check_routing_key, key_digest
from turing.tools.deploy.versions import ModelTarget, route_query, version_target
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.query.shadow import mirror

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 2048
SHADOW_DROPPED = "shadow copy dropped: the mirror queue was full"


def query_model(
    services: Services,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int = 256,
    temperature: float = 0.0,
    routing_key: str | None = None,
) -> dict[str, Any]:
    """Generate the assistant's reply with llama.cpp; blocking, so call it off the event loop.

    A routing key (e.g. a user id) sends every query with that key to the same route of the
    deployment's current revision.
    """
    check_messages(messages)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidInputError(
            f"max_tokens={max_tokens}: must be between 1 and {MAX_TOKENS_LIMIT}"
        )
    if not 0.0 <= temperature <= 2.0:
        raise InvalidInputError(f"temperature={temperature}: must be between 0 and 2")
    check_routing_key(routing_key)
    target = route_query(services, model, routing_key)
    key = key_digest(routing_key)

    try:
        completion = _answer(services, target, messages, max_tokens, temperature, key, False)
    finally:
        for version_id in target.shadows:
            _mirror(services, target, version_id, messages, max_tokens, temperature, key)

    return {
        "text": completion.text,
        "model": target.name,
        "version_id": target.version_id,
        "deployment": target.deployment,
        "revision": target.revision,
        "base_model": target.base_model,
        "finish_reason": completion.finish_reason,
        "latency_ms": round(completion.latency_ms, 2),
        "time_to_first_token_ms": round(completion.time_to_first_token_ms, 2),
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "shadows": list(target.shadows),
    }


def _answer(
    services: Services,
    target: ModelTarget,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float,
    key: str | None,
    shadow: bool,
) -> Any:
    """One completion from the target's engine, recorded in the queries table either way."""
    started = time.perf_counter()
    try:
        engine = services.engines.get(
            Path(target.base_gguf), Path(target.adapter_gguf) if target.adapter_gguf else None
        )
        completion = engine.complete(messages, max_tokens=max_tokens, temperature=temperature)
    except TuringError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        _record(services, target, None, elapsed, str(exc), key, shadow)
        raise
    _record(services, target, completion, completion.latency_ms, None, key, shadow)
    return completion


def _mirror(
    services: Services,
    target: ModelTarget,
    version_id: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float,
    key: str | None,
) -> None:
    """Queue the same request for a shadow version; its answer only reaches the telemetry."""
    copied = [dict(message) for message in messages]

    def run() -> None:
        shadow = version_target(services, version_id, target.deployment, target.revision)
        try:
            _answer(services, shadow, copied, max_tokens, temperature, key, True)
        except TuringError as exc:
            logger.warning("shadow request to %s of %s failed: %s", version_id, shadow.name, exc)

    if not mirror.submit(f"{target.deployment}/{version_id}", run):
        # The loss is visible where shadow results are read: a shadow row with the reason.
        dropped = version_target(services, version_id, target.deployment, target.revision)
        _record(services, dropped, None, 0.0, SHADOW_DROPPED, key, True)


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Refuse a conversation the chat template cannot render, naming the bad message."""
    if not messages:
        raise InvalidInputError("messages is empty: give at least one user message")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidInputError(
                f"messages[{index}].role={role!r}: allowed roles are {', '.join(ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            raise InvalidInputError(f"messages[{index}].content must be a string")
    if messages[-1]["role"] == "assistant":
        raise InvalidInputError("the last message is from the assistant; end with a user message")


def _record(
    services: Services,
    target: ModelTarget,
    completion: Any,
    latency_ms: float,
    error: str | None,
    routing_key: str | None = None,
    shadow: bool = False,
) -> None:
    services.registry.insert(
        "queries",
        {
            "deployment": target.deployment,
            "revision": target.revision,
            "version_id": target.version_id or target.name,
            "latency_ms": latency_ms,
            "time_to_first_token_ms": completion.time_to_first_token_ms if completion else None,
            "prompt_tokens": completion.prompt_tokens if completion else None,
            "completion_tokens": completion.completion_tokens if completion else None,
            "error": error,
            "shadow": int(shadow),
            "routing_key": routing_key,
            "created_at": utc_now(),
        },
    )
