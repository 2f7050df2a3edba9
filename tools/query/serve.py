"""Answer chat queries from a deployment, model version or base model, recording each one.

A deployment's query is answered by the route its weights (or the caller's routing key) choose,
then mirrored to the revision's shadow versions in the background. The MCP tool and the HTTP
API share this path: `open_query` starts an answer, iterating it streams the text, and its end
(finished, failed or abandoned) is recorded once in the telemetry.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turing.server import access
from turing.server.services import Services
from turing.tools.deploy.kill import serving_target
from turing.tools.deploy.routing import check_routing_key, key_digest
from turing.tools.deploy.versions import ModelTarget, route_query, version_target
from turing.tools.errors import ConflictError, InvalidInputError, TuringError
from turing.tools.query import feedback
from turing.tools.query.shadow import mirror

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 2048
# Worker threads a transport may use for queries. Callers waiting for a busy engine each hold
# one; engines bound their own lines (TURING_ENGINE_QUEUE), so this only needs to exceed them.
QUERY_THREADS = 512
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 64
SHADOW_DROPPED = "shadow copy dropped: the mirror queue was full"
ABANDONED = "abandoned: the caller stopped reading the answer"


@dataclass(frozen=True)
class Sampling:
    """How to generate: token budget, temperature, nucleus mass and stop strings."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse values outside the allowed ranges, naming each one."""
        problems = []
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            problems.append(
                f"max_tokens={self.max_tokens}: must be between 1 and {MAX_TOKENS_LIMIT}"
            )
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature={self.temperature}: must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p}: must be in (0, 1]")
        if len(self.stop) > MAX_STOP_STRINGS:
            problems.append(f"stop has {len(self.stop)} strings; at most {MAX_STOP_STRINGS}")
        for stop in self.stop:
            if not stop or len(stop) > MAX_STOP_LENGTH:
                problems.append(f"stop string {stop!r}: must be 1 to {MAX_STOP_LENGTH} characters")
        if problems:
            raise InvalidInputError("; ".join(problems))


def query_model(
    services: Services,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int = 256,
    temperature: float = 0.0,
    routing_key: str | None = None,
    top_p: float = 1.0,
    stop: list[str] | None = None,
) -> dict[str, Any]:
    """Generate the assistant's reply with llama.cpp; blocking, so call it off the event loop.

    A routing key (e.g. a user id) sends every query with that key to the same route of the
    deployment's current revision.
    """
    sampling = Sampling(max_tokens, temperature, top_p, tuple(stop or ()))
    answer = open_query(services, model, messages, sampling, routing_key)
    answer.finish()
    return answer.describe()


def open_query(
    services: Services,
    model: str,
    messages: list[dict[str, Any]],
    sampling: Sampling,
    routing_key: str | None = None,
    transport: str = "mcp",
) -> Answer:
    """Route a query and start answering it; blocking, so call it off the event loop.

    Raises a malformed request or an unknown model before routing (nothing is recorded: no
    version was involved), and a prompt too long for the routed model's context or a busy
    engine before any text is generated (recorded against that version).
    """
    access.check_visible(services, "model", model)  # another project's model does not exist
    check_messages(messages)
    sampling.check()
    check_routing_key(routing_key)
    # The kill switch acts here, before any engine: a killed route's share goes to the others.
    target = serving_target(services, route_query(services, model, routing_key), routing_key)
    return Answer(services, target, messages, sampling, key_digest(routing_key), transport)


class Answer:
    """One query being answered: iterate it for text deltas, or call `finish` for the whole text.

    The answer holds its engine until it ends; it ends when the text is complete, when
    generation fails, or when `close` is called (the caller went away). Each end is recorded
    once, and the query is then mirrored to the route's shadow versions.
    """

    def __init__(
        self,
        services: Services,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        sampling: Sampling,
        key: str | None = None,
        transport: str = "mcp",
        shadow: bool = False,
    ) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = time.time()
        self.target = target
        self._services = services
        self._messages = messages
        self._sampling = sampling
        self._key = key
        self._transport = transport
        self._shadow = shadow
        self._started = time.perf_counter()
        self._first_piece_at: float | None = None
        self._ended = False
        self._recorded: Any = None
        self.logged = False  # whether its text went to the deployment's query log
        try:
            self._stream = _open_stream(services, target, messages, sampling)
        except TuringError as exc:
            self._end(exc, None)
            raise

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            piece: str = next(self._stream)
        except StopIteration:
            self._end(None, self._stream.completion)
            raise
        except TuringError as exc:
            self._end(exc, self._stream.completion)
            raise
        self._first_piece_at = self._first_piece_at or time.perf_counter()
        return piece

    @property
    def completion(self) -> Any:
        """The finished Completion: text, token counts, finish reason, and the latency and time
        to first token the caller saw (waiting for the engine included)."""
        return self._recorded

    def finish(self) -> Any:
        """Generate the rest of the answer and return the Completion."""
        for _ in self:
            pass
        return self._recorded

    def close(self) -> None:
        """Stop generating (the caller went away) and free the engine; recorded as abandoned."""
        if not self._ended:
            self._stream.close()
            self._end(ABANDONED, self._stream.completion)

    def describe(self) -> dict[str, Any]:
        """The reply as query_model returns it: text, who answered, timings, token counts."""
        completion = self._recorded
        target = self.target
        return {
            "text": completion.text,
            "query_id": self.id,
            "logged": self.logged,
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

    def _end(self, error: BaseException | str | None, completion: Any) -> None:
        if self._ended:
            return
        self._ended = True
        elapsed = (time.perf_counter() - self._started) * 1000
        if completion is not None:
            # Timings as the caller saw them: from the request to its first piece of text and
            # to its end, waiting in the engine's line included.
            first = self._first_piece_at
            first_ms = (first - self._started) * 1000 if first else elapsed
            completion = dataclasses.replace(
                completion, latency_ms=elapsed, time_to_first_token_ms=first_ms
            )
        self._recorded = completion
        # Only whole answers are logged; a shadow's reached nobody, so nobody can rate it.
        answered = error is None and completion is not None and not self._shadow
        self.logged = answered and feedback.logging_enabled(self._services, self.target.deployment)
        _record(
            self._services,
            self.target,
            completion,
            elapsed,
            error,
            self._key,
            self._shadow,
            messages=self._messages,
            transport=self._transport,
            log_id=self.id if self.logged else None,
        )
        if not self._shadow and not isinstance(error, InvalidInputError):
            # A request the live route refused (e.g. too long) is not worth a shadow's time.
            for version_id in self.target.shadows:
                _mirror(
                    self._services,
                    self.target,
                    version_id,
                    self._messages,
                    self._sampling,
                    self._key,
                    self._transport,
                )


def _open_stream(
    services: Services, target: ModelTarget, messages: list[dict[str, Any]], sampling: Sampling
) -> Any:
    """The target engine's stream; an engine evicted between lookup and use is loaded again.

    A remote version streams from its OpenAI-compatible server instead.
    """
    if target.endpoint:
        from turing.tools.query.remote import RemoteStream

        return RemoteStream(
            target.endpoint,
            target.remote_model or "",
            messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop),
            api_key_env=target.api_key_env,
        )
    adapter = Path(target.adapter_gguf) if target.adapter_gguf else None
    for attempt in (1, 2):
        engine = services.engines.get(Path(target.base_gguf), adapter)
        try:
            return engine.stream(
                messages,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop=list(sampling.stop),
            )
        except ConflictError:
            if attempt == 2 or not engine.retired:
                raise
    raise AssertionError("unreachable")


def _mirror(
    services: Services,
    target: ModelTarget,
    version_id: str,
    messages: list[dict[str, Any]],
    sampling: Sampling,
    key: str | None,
    transport: str,
) -> None:
    """Queue the same request for a shadow version; its answer only reaches the telemetry."""
    copied = [dict(message) for message in messages]

    def run() -> None:
        shadow = version_target(services, version_id, target.deployment, target.revision)
        try:
            Answer(services, shadow, copied, sampling, key, transport, shadow=True).finish()
        except TuringError as exc:
            logger.warning("shadow request to %s of %s failed: %s", version_id, shadow.name, exc)

    if not mirror.submit(f"{target.deployment}/{version_id}", run):
        # The loss is visible where shadow results are read: a shadow row with the reason.
        dropped = version_target(services, version_id, target.deployment, target.revision)
        _record(
            services,
            dropped,
            None,
            0.0,
            SHADOW_DROPPED,
            key,
            True,
            messages=copied,
            transport=transport,
        )


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Refuse a conversation the chat template cannot render, naming the bad message."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("messages is empty: give at least one user message")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidInputError(
                f"messages[{index}].role={role!r}: allowed roles are {', '.join(ROLES)}"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise InvalidInputError(f"messages[{index}].content must be a string")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = content[exc.start : exc.end]
            raise InvalidInputError(
                f"messages[{index}].content has {bad!r} at character {exc.start}, a lone "
                "surrogate that is not valid Unicode text; send UTF-8 text"
            ) from None
    if messages[-1]["role"] == "assistant":
        raise InvalidInputError("the last message is from the assistant; end with a user message")


def _record(
    services: Services,
    target: ModelTarget,
    completion: Any,
    latency_ms: float,
    error: BaseException | str | None,
    routing_key: str | None = None,
    shadow: bool = False,
    *,
    messages: list[dict[str, Any]] | None = None,
    transport: str = "mcp",
    log_id: str | None = None,
) -> None:
    """Queue the request's telemetry row (written in the background, never on the reply path).

    `routing_key` is the key's digest; give the exception itself as `error` to keep its type.
    With `log_id`, the conversation and answer also go to the query log under that query_id.
    """
    services.telemetry.record(
        target,
        completion,
        latency_ms=latency_ms,
        error=error,
        messages=messages,
        routing_key_digest=routing_key,
        shadow=shadow,
        transport=transport,
        log_id=log_id,
    )
