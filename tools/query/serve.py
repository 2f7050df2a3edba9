"""Answer chat queries from a deployment, model version or base model, recording each one."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.deploy.versions import route_query
from turing.tools.errors import InvalidInputError, TuringError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 2048


def query_model(
    services: Services,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int = 256,
    temperature: float = 0.0,
) -> dict[str, Any]:
    """Generate the assistant's reply with llama.cpp; blocking, so call it off the event loop."""
    check_messages(messages)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidInputError(
            f"max_tokens={max_tokens}: must be between 1 and {MAX_TOKENS_LIMIT}"
        )
    if not 0.0 <= temperature <= 2.0:
        raise InvalidInputError(f"temperature={temperature}: must be between 0 and 2")
    target = route_query(services, model)

    started = time.perf_counter()
    try:
        engine = services.engines.get(
            Path(target.base_gguf), Path(target.adapter_gguf) if target.adapter_gguf else None
        )
        completion = engine.complete(messages, max_tokens=max_tokens, temperature=temperature)
    except TuringError as exc:
        _record(services, target, None, (time.perf_counter() - started) * 1000, str(exc))
        raise
    _record(services, target, completion, completion.latency_ms, None)

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
    }


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
    services: Services, target: Any, completion: Any, latency_ms: float, error: str | None
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
            "created_at": utc_now(),
        },
    )
