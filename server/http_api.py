"""The HTTP server: MCP over streamable HTTP at `/mcp`, the OpenAI-compatible API
(`/v1/chat/completions`, streaming too, and `/v1/models`), the query counters for Prometheus at
`/metrics` and the dashboard, every route behind the bearer-token middleware of `auth`.

Any OpenAI client (the official `openai` package, agent SDKs, curl) can use a deployment, a
model version or a base model by name. Requests take the same path as the MCP `query_model`
tool: routing, shadow mirroring, telemetry. Errors use OpenAI's error body, so clients raise
their usual exceptions (400 bad request, 404 unknown model, 429 busy engine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from turing.server import access, dashboard
from turing.server.auth import AccessMiddleware, allowed_hosts
from turing.server.services import Services
from turing.tools.deploy import aliases
from turing.tools.errors import (
    BusyError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TuringError,
    UpstreamError,
)
from turing.tools.query import serve
from turing.tools.query.serve import MAX_TOKENS_LIMIT, Sampling

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

logger = logging.getLogger(__name__)

ROUTING_HEADER = "x-turing-routing-key"
PULL_PIECES = 16  # pieces generated between checks that a non-streaming client is still there
MAX_BODY_BYTES = 4 << 20
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text exposition format
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role

# Fields a chat completion request may carry. The ones Turing cannot honour are refused by
# name unless they hold their no-op value, so a client never gets an answer that silently
# ignored what it asked for.
_SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "seed",
    "metadata",
    "store",
}
_NO_OPS: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "top_logprobs": (0, None),
    "tools": ((), [], None),
    "tool_choice": ("none", None),
    "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}),
    "service_tier": (None, "auto", "default"),
    "logit_bias": (None, {}),
}


# Accepted for compatibility and not used; still checked, so a malformed request is refused.
_OPTIONAL_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("seed", int, "a whole number"),
    ("store", bool, "true or false"),
    ("metadata", dict, "an object"),
)


@dataclass(frozen=True)
class ChatRequest:
    """A parsed `/v1/chat/completions` body."""

    model: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    stream: bool
    include_usage: bool
    routing_key: str | None


def create_http_app(
    services: Services, hosts: Collection[str], mcp: MCPServer | None = None
) -> Starlette:
    """Build the HTTP app over the server's services (shared with the MCP tools).

    Args:
        services: The server's services.
        hosts: The Host header values it answers to, e.g. {"127.0.0.1:8100", "localhost:8100"}
            (see `auth.allowed_hosts`); any other Host or Origin is refused.
        mcp: The MCP server to carry at /mcp over streamable HTTP; None serves the rest only.
    """
    # Requests wait for a busy engine on worker threads; anyio's default of 40 threads would
    # let waiters starve the request that holds the engine. Engines bound their own lines.
    threads = anyio.CapacityLimiter(serve.QUERY_THREADS)

    async def chat_completions(request: Request) -> Response:
        try:
            chat = parse_chat_request(await _read_json(request), request.headers)
            answer = await anyio.to_thread.run_sync(
                lambda: serve.open_query(
                    services,
                    chat.model,
                    chat.messages,
                    chat.sampling,
                    routing_key=chat.routing_key,
                    transport="http",
                ),
                limiter=threads,
            )
        except TuringError as exc:
            return error_response(exc)
        headers = {
            "x-turing-version": answer.target.version_id or answer.target.name,
            "x-turing-revision": str(answer.target.revision or ""),
        }
        if chat.stream:
            return StreamingResponse(
                _event_stream(answer, chat, threads),
                media_type="text/event-stream",
                headers=headers,
            )
        try:
            finished = await _finish_unless_gone(answer, request, threads)
        except TuringError as exc:
            return error_response(exc)
        if not finished:
            return Response(status_code=499)  # nobody is left to read it
        return JSONResponse(completion_body(answer, chat), headers=headers)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": describe_models(services)})

    async def get_model(request: Request) -> Response:
        asked = name = request.path_params["model"]
        if aliases.is_reference(name):
            try:
                access.check_visible(services, "model", name)  # as if another project's were not
                name = aliases.resolve_reference(services, name)
            except TuringError as exc:
                return error_response(exc)
        for model in describe_models(services):
            if model["id"] == name:
                return JSONResponse(model)
        return error_response(NotFoundError(f"no model {asked!r}; GET /v1/models lists them"))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        from turing.tools.query.traffic_metrics import prometheus_text

        text = await anyio.to_thread.run_sync(prometheus_text, services, limiter=threads)
        return Response(text, media_type=PROMETHEUS_TYPE)

    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    public_paths = {"/health"}
    routes += dashboard.routes(services)
    public_paths |= dashboard.PUBLIC_PATHS
    sessions = None
    if mcp is not None:
        from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

        sessions = _mcp_sessions(mcp, hosts)
        routes.append(Route("/mcp", StreamableHTTPASGIApp(sessions)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sessions is None:
            yield
            return
        async with sessions.run():  # the MCP sessions' task group lives as long as the server
            yield

    guard = Middleware(AccessMiddleware, services=services, hosts=hosts, public_paths=public_paths)
    return Starlette(routes=routes, middleware=[guard], lifespan=lifespan)


def _mcp_sessions(mcp: MCPServer, hosts: Collection[str]) -> StreamableHTTPSessionManager:
    """The SDK's session manager for `mcp`, its own Host/Origin check set to ours as well."""
    from mcp.server.transport_security import TransportSecuritySettings

    origins = sorted(f"{scheme}://{host}" for host in hosts for scheme in ("http", "https"))
    security = TransportSecuritySettings(allowed_hosts=sorted(hosts), allowed_origins=origins)
    mcp.streamable_http_app(transport_security=security)  # builds the manager; the app is unused
    return mcp.session_manager


async def _read_json(request: Request) -> dict[str, Any]:
    body = b""
    async for part in request.stream():  # read in parts, so a huge body is refused early
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise InvalidInputError(f"request body is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidInputError("request body must be a JSON object")
    return parsed


def parse_chat_request(body: dict[str, Any], headers: Any = None) -> ChatRequest:
    """Check a chat completion body field by field; the error names the field and the rule."""
    unknown = sorted(set(body) - _SUPPORTED - set(_NO_OPS))
    if unknown:
        raise InvalidInputError(
            f"unsupported field(s) {', '.join(unknown)}; supported: {', '.join(sorted(_SUPPORTED))}"
        )
    for name, no_ops in _NO_OPS.items():
        if name in body and body[name] not in no_ops:
            raise InvalidInputError(f"{name}={body[name]!r} is not supported by Turing's models")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInputError("model is required: a deployment, model version or base model")
    n = body.get("n", 1)
    if not (_is_int(n) and n == 1):
        raise InvalidInputError(f"n={n!r}: only n=1 is supported")
    for name, kinds, rule in _OPTIONAL_TYPES:
        if body.get(name) is not None and not isinstance(body[name], kinds):
            raise InvalidInputError(f"{name}={body[name]!r}: must be {rule}")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = MAX_TOKENS_LIMIT if max_tokens is None else max_tokens
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    if not _is_int(max_tokens):
        raise InvalidInputError(f"max_tokens={max_tokens!r}: must be a whole number")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not _is_number(value):
            raise InvalidInputError(f"{name}={value!r}: must be a number")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInputError(f"stream={stream!r}: must be true or false")
    options = body.get("stream_options") or {}
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(options, dict) or set(options) - {"include_usage"} or usage not in (0, 1):
        raise InvalidInputError("stream_options may only hold include_usage (true or false)")
    if not isinstance(usage, bool):
        raise InvalidInputError(f"stream_options.include_usage={usage!r}: must be true or false")

    key = (headers or {}).get(ROUTING_HEADER) or body.get("user")
    if key is not None and not isinstance(key, str):
        raise InvalidInputError(f"user={key!r}: must be a string")
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            stop=_stop_strings(body.get("stop")),
        ),
        stream=stream,
        include_usage=usage,
        routing_key=key,
    )


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInputError("messages must be a non-empty list of {role, content} objects")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidInputError(f"messages[{index}] must be an object with role and content")
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones can be served
            content = _join_text_parts(content, index)
        messages.append({"role": ROLE_ALIASES.get(str(role), role), "content": content})
    serve.check_messages(messages)
    return messages


def _join_text_parts(parts: list[Any], index: int) -> str:
    texts = []
    for number, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidInputError(
                f"messages[{index}].content[{number}] is of type {kind!r}; only text parts "
                "are supported"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"messages[{index}].content[{number}].text must be a string")
        texts.append(text)
    return "".join(texts)


def _stop_strings(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise InvalidInputError("stop must be a string or a list of strings")
    return tuple(stops)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def completion_body(answer: serve.Answer, chat: ChatRequest) -> dict[str, Any]:
    """The `chat.completion` object of a finished answer."""
    completion = answer.completion
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": int(answer.created),
        "model": chat.model,
        "system_fingerprint": answer.target.version_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
        "turing": _turing_fields(answer),
    }


def _usage(answer: serve.Answer) -> dict[str, int]:
    completion = answer.completion
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _turing_fields(answer: serve.Answer) -> dict[str, Any]:
    completion = answer.completion
    return {
        "deployment": answer.target.deployment,
        "revision": answer.target.revision,
        "version_id": answer.target.version_id,
        "base_model": answer.target.base_model,
        "latency_ms": round(completion.latency_ms, 2),
        "time_to_first_token_ms": round(completion.time_to_first_token_ms, 2),
    }


async def _finish_unless_gone(
    answer: serve.Answer, request: Request, threads: anyio.CapacityLimiter
) -> bool:
    """Generate the whole answer, stopping early (False) when the client disconnects."""

    def pull() -> bool:  # True once the answer has ended
        return any(next(answer, None) is None for _ in range(PULL_PIECES))

    finished = False
    try:
        while not (finished := await anyio.to_thread.run_sync(pull, limiter=threads)):
            if await request.is_disconnected():
                break
    finally:
        if not finished:  # the client left, or this request was cancelled: end it anyway
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(answer.close, limiter=threads)
    return finished


async def _event_stream(
    answer: serve.Answer, chat: ChatRequest, threads: anyio.CapacityLimiter
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": int(answer.created),
            "model": chat.model,
            "system_fingerprint": answer.target.version_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(body)}\n\n"

    deltas = iter(answer)
    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            piece = await anyio.to_thread.run_sync(next, deltas, None, limiter=threads)
            if piece is None:
                break
            yield chunk({"content": piece})
        finished = True
        yield chunk({}, answer.completion.finish_reason)
        if chat.include_usage:
            usage = {"id": answer.id, "object": "chat.completion.chunk", "choices": []}
            usage.update(created=int(answer.created), model=chat.model, usage=_usage(answer))
            usage["turing"] = _turing_fields(answer)
            yield f"data: {json.dumps(usage)}\n\n"
    except TuringError as exc:
        # The status line has gone out; the error travels as the stream's last event.
        yield f"data: {json.dumps(error_body(exc))}\n\n"
    finally:
        if not finished:
            # A client that went away cancels this generator; the shield lets the answer end
            # (and be recorded as abandoned) anyway.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(answer.close, limiter=threads)
    yield "data: [DONE]\n\n"


def error_body(exc: TuringError) -> dict[str, Any]:
    """OpenAI's error object for a Turing error."""
    kind, _ = _error_kind(exc)
    return {"error": {"message": str(exc), "type": kind, "param": None, "code": None}}


def error_response(exc: TuringError) -> JSONResponse:
    """The HTTP response of a Turing error: OpenAI's body and the matching status."""
    _, status = _error_kind(exc)
    headers = {"retry-after": "1"} if isinstance(exc, BusyError) else None
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


def _error_kind(exc: TuringError) -> tuple[str, int]:
    if isinstance(exc, BusyError):
        return "rate_limit_error", 429
    if isinstance(exc, UpstreamError):
        return "upstream_error", 502
    if isinstance(exc, NotFoundError):
        return "not_found_error", 404
    if isinstance(exc, ConflictError):
        return "conflict_error", 409
    return "invalid_request_error", 400


def describe_models(services: Services) -> list[dict[str, Any]]:
    """Deployments, model versions and base models, as OpenAI model objects with lineage."""
    from turing.tools.base_models import DEFAULT_BASE_MODEL, get_base_model
    from turing.tools.deploy.versions import describe_deployments

    get_base_model(services, DEFAULT_BASE_MODEL)  # the bundled base is registered on first use
    models = []
    bases = {row["name"]: row for row in services.registry.rows("base_models", order_by="name")}
    all_versions = services.registry.rows("model_versions", order_by="created_at")
    version_rows = access.keep_visible(all_versions)  # the caller's project's only
    versions = {row["id"]: row for row in version_rows}
    for deployment in describe_deployments(services):
        first = versions.get(deployment["routes"][0]["version_id"], {})
        models.append(
            _model_object(
                deployment["deployment"],
                deployment["updated_at"],
                root=first.get("base_model"),
                parent=None,
                kind="deployment",
                revision=deployment["revision"],
                routes=deployment["routes"],
            )
        )
    for row in version_rows:
        models.append(
            _model_object(
                row["id"],
                row["created_at"],
                root=row["base_model"],
                parent=row["base_model"],
                kind="version",
                run_id=row["run_id"],
                format=row["format"],
            )
        )
    for name, row in bases.items():
        models.append(
            _model_object(name, row.get("created_at"), root=name, parent=None, kind="base")
        )
    return models


def _model_object(
    name: str, created: str | None, root: str | None, parent: str | None, **turing: Any
) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": _epoch(created),
        "owned_by": "turing",
        "root": root,
        "parent": parent,
        "turing": turing,
    }


def _epoch(stamp: str | None) -> int:
    from datetime import datetime

    if not stamp:
        return 0
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def check_bind_host(host: str, allow_remote: bool = False) -> bool:
    """Refuse a non-loopback address unless `allow_remote`; True when the address is loopback."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise InvalidInputError(
            f"host {host!r} is not a loopback address; Turing listens on 127.0.0.1, ::1 or "
            "localhost unless told to listen elsewhere (--allow-remote), because anyone who "
            "can reach the port can try tokens and the traffic is not encrypted"
        )
    return loopback


def _listen(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A listening TCP socket. It is made with the TCP protocol named (not 0, as
    `socket.create_server` leaves it): asyncio turns Nagle's algorithm off only on connections
    of such sockets, and with it on, an answer written in two parts waits ~40 ms for an ACK."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """The HTTP server run by uvicorn, on this thread (`run`) or its own thread (`start`).

    The socket is bound when the server is made, so the port (also when 0 asked for any free
    one) and with it the Host header values the server answers to are known from the start.
    """

    def __init__(
        self,
        services: Services,
        host: str = "127.0.0.1",
        port: int = 8100,
        *,
        mcp: MCPServer | None = None,
        allow_remote: bool = False,
        extra_hosts: Iterable[str] = (),
    ) -> None:
        """Bind `host`:`port` and build the app.

        Args:
            services: The server's services.
            host: The address to listen on; loopback unless `allow_remote`.
            port: 1-65535, or 0 for any free port.
            mcp: The MCP server to carry at /mcp; None serves the API, metrics and dashboard.
            allow_remote: Listen on a non-loopback address (a warning is logged).
            extra_hosts: More names clients use in the Host header, e.g. "turing.lan".
        """
        import uvicorn

        if not check_bind_host(host, allow_remote):
            logger.warning(
                "listening on %s, which is not a loopback address: every request still needs "
                "a bearer token, but the traffic is not encrypted; put a TLS proxy in front",
                host,
            )
        if not 0 <= port <= 65535:
            raise InvalidInputError(f"port {port}: give 1-65535 (or 0 for any free port)")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = _listen(host, port, family)
        except OSError as exc:
            raise InvalidInputError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.host = host
        self.hosts = allowed_hosts(host, self.port, extra_hosts)
        # log_config=None: uvicorn's default config prints access lines to stdout; its loggers
        # propagate to ours (stderr) instead. An open MCP event stream never ends by itself, so
        # shutting down waits for it only briefly.
        config = uvicorn.Config(
            create_http_app(services, self.hosts, mcp),
            host=host,
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="turing-http"
        )
        self._thread.daemon = True

    def run(self) -> None:
        """Serve on this thread until interrupted (Ctrl-C or SIGTERM)."""
        logger.info("Turing HTTP server on %s (MCP at /mcp, OpenAI API at /v1)", self.url)
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 10.0) -> None:
        """Start serving on a thread; returns once requests are answered."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise InvalidInputError(
                    f"the HTTP server on {self.address} did not start: see the log above"
                )
            time.sleep(0.02)
        logger.info("Turing HTTP server on %s (MCP at /mcp, OpenAI API at /v1)", self.url)

    @property
    def address(self) -> str:
        """host:port, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The server's base URL, e.g. http://127.0.0.1:8100."""
        return f"http://{self.address}"

    @property
    def port(self) -> int:
        """The bound port (the real one when made with port 0)."""
        return int(self._socket.getsockname()[1])

    def stop(self) -> None:
        """Stop accepting requests and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
