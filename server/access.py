"""Who is calling, and what they may do: principals, roles, projects and the checks of each call.

On stdio the caller is the local user, who owns the workspace: an admin of every project. Over
HTTP the bearer token decides; the HTTP layer puts the token's principal in the request's scope
(`scope["state"]["turing_principal"]`) and `GuardedServer` makes it current for the call, checks
the role the tool needs (`TOOL_RULES`), hides other projects' objects, keeps path arguments
inside the allowed folders (`containment`) and writes every mutating call to the audit trail.
"""

from __future__ import annotations

import contextvars
import logging
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult

from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError, TuringError

if TYPE_CHECKING:
    from turing.server.containment import Containment
    from turing.server.services import Services

logger = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")
ENVIRONMENTS = ("dev", "staging", "prod")
SCOPE_KEY = "turing_principal"
DEFAULT_PROJECT = "default"
QUERY_LOG_SOURCE = "queries://"
EVERY_PROJECT = "*"


@dataclass(frozen=True)
class Principal:
    """A caller: "local" on stdio, a token's name and id over HTTP."""

    actor: str
    role: str  # one of ROLES
    project: str  # the project it acts in; "*" for every project
    token_id: str | None = None

    def at_least(self, role: str) -> bool:
        """Whether this caller's role is `role` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def scoped(self) -> bool:
        """Whether this caller sees one project only (not every project)."""
        return self.project != EVERY_PROJECT

    def describe(self) -> str:
        """The caller as a refusal names it, e.g. "token ci (tok-1a2b), project 'shop'"."""
        if self.token_id is None:
            return self.actor
        return f"token {self.actor}, project {self.project!r}"


LOCAL = Principal(actor="local", role="admin", project=EVERY_PROJECT)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "turing_principal", default=LOCAL
)


def current() -> Principal:
    """The principal of the call being served (LOCAL outside any HTTP request)."""
    return _current.get()


def acting_as(principal: Principal) -> contextvars.Token[Principal]:
    """Make `principal` current; give the returned token to `restore` when the call ends."""
    return _current.set(principal)


def restore(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


@contextmanager
def calling_as(principal: Principal) -> Iterator[Principal]:
    """Make `principal` current for the duration of a `with` block."""
    token = acting_as(principal)
    try:
        yield principal
    finally:
        restore(token)


class AccessDeniedError(TuringError):
    """The caller's role does not allow the call; the message names the role it needs."""


def principal_of(request: Any) -> Principal:
    """The caller of a request: LOCAL without an HTTP request (stdio, in-process clients), else
    the principal the HTTP layer verified and put in the request's scope.

    Raises:
        AccessDeniedError: An HTTP request without a verified principal: the server refuses
            rather than guess who is calling.
    """
    if request is None:
        return LOCAL
    state = request.scope.get("state") or {}
    principal = state.get(SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise AccessDeniedError(
            "this HTTP request carries no verified caller; send Authorization: Bearer <token> "
            "(tokens come from `turing token create`)"
        )
    return principal


def principal_of_context(context: Context[Any, Any] | None) -> Principal:
    """The caller of an MCP request context (LOCAL for a call made without one)."""
    if context is None:
        return LOCAL
    try:
        request = context.request_context.request
    except ValueError:  # a direct call from inside this process, outside any request
        return LOCAL
    return principal_of(request)


# ---- Roles ----


@dataclass(frozen=True)
class ToolRule:
    """What a tool asks of its caller: the least role, and whether its calls are audited."""

    role: str
    mutating: bool


VIEW = ToolRule("viewer", mutating=False)
OPERATE = ToolRule("operator", mutating=True)
ADMINISTER = ToolRule("admin", mutating=True)

# Every tool the server offers, with the least role that may call it. Over this floor, admin is
# needed for anything that changes a prod deployment, for a force_reason (overriding a gate)
# and for deploying into or out of prod (`required_role`). A tool missing here needs admin.
TOOL_RULES: dict[str, ToolRule] = {
    # Reading and querying.
    "list_datasets": VIEW,
    "get_run": VIEW,
    "wait_for_run": VIEW,
    "list_runs": VIEW,
    "get_eval": VIEW,
    "wait_for_eval": VIEW,
    "list_evals": VIEW,
    "get_gate": VIEW,
    "list_deployments": VIEW,
    "list_models": VIEW,
    "list_aliases": VIEW,
    "get_lineage": VIEW,
    "query_model": VIEW,
    "get_metrics": VIEW,
    "compare_routes": VIEW,
    "get_slo": VIEW,
    "list_incidents": VIEW,
    "get_chart": VIEW,
    # Whoever may query may rate an answer; the rating is audited like any change.
    "record_feedback": ToolRule("viewer", mutating=True),
    # Checking a fine-tuning request costs a short training probe but changes nothing.
    "preflight_finetune": ToolRule("operator", mutating=False),
    # Logged conversations are other callers' words, redacted or not.
    "list_logged_queries": ToolRule("operator", mutating=False),
    # Preparing, training, evaluating and deploying (prod deployments need admin).
    "prepare_dataset": OPERATE,
    "start_finetune": OPERATE,
    "cancel_run": OPERATE,
    "resume_run": OPERATE,
    "select_checkpoint": OPERATE,
    "run_eval": OPERATE,
    "cancel_eval": OPERATE,
    "set_gate": OPERATE,
    "export_model": OPERATE,
    "deploy": OPERATE,
    "set_routes": OPERATE,
    "canary": OPERATE,
    "promote": OPERATE,
    "rollback": OPERATE,
    "set_alias": OPERATE,
    "delete_alias": OPERATE,
    "set_pricing": OPERATE,
    "set_slo": OPERATE,
    "set_query_logging": OPERATE,
    # Stopping a harmful version is open to operators wherever it serves; serving it again is
    # an admin's decision.
    "kill_version": OPERATE,
    "lift_kill": ADMINISTER,
    # Shared by every project, or reaching beyond this machine with the server's own secrets.
    "register_base_model": ADMINISTER,
    "register_remote_model": ADMINISTER,
}
UNLISTED = ToolRule("admin", mutating=True)
RESOURCE_ROLE = "viewer"
PROMPT_ROLE = "viewer"


def tool_rule(tool: str) -> ToolRule:
    """The rule of a tool; a tool missing from TOOL_RULES needs admin and is audited."""
    return TOOL_RULES.get(tool, UNLISTED)


def required_role(services: Services, tool: str, arguments: Mapping[str, Any]) -> tuple[str, str]:
    """The least role that may make this call, and why (for the refusal's message)."""
    rule = tool_rule(tool)
    if tool not in TOOL_RULES:
        return "admin", f"{tool} is not in the role table"
    if not rule.mutating:
        return rule.role, tool
    if _given(arguments.get("force_reason")):
        return "admin", f"{tool} with a force_reason (overriding a gate)"
    environment = arguments.get("environment")
    if environment == "prod":
        return "admin", f"{tool} into the prod environment"
    deployment = arguments.get("deployment")
    if isinstance(deployment, str) and deployment_environment(services, deployment) == "prod":
        return "admin", f"{tool} on prod deployment {deployment!r}"
    return rule.role, tool


def check_role(principal: Principal, needed: str, what: str) -> None:
    """Refuse a caller below `needed`, naming the role needed and the caller's own."""
    if not principal.at_least(needed):
        raise AccessDeniedError(
            f"permission denied: {what} needs the {needed} role; the caller, "
            f"{principal.describe()}, has the {principal.role} role"
        )


def deployment_environment(services: Services, deployment: str) -> str | None:
    """The environment of an existing deployment (dev, staging or prod), or None."""
    row = services.registry.find("deployments", deployment)
    return None if row is None else str(row.get("environment") or "dev")


def _given(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# ---- Projects ----


def owner_project(inherited: str | None = None) -> str:
    """The project a new object belongs to: the caller's, else (for a caller of every project)
    the project of the object it derives from, else "default"."""
    principal = current()
    if principal.scoped:
        return principal.project
    return inherited or DEFAULT_PROJECT


def visible(project: str | None) -> bool:
    """Whether the current caller may see an object of `project` (NULL: the default project)."""
    principal = current()
    return not principal.scoped or (project or DEFAULT_PROJECT) == principal.project


def project_clause(condition: str = "project = ?") -> tuple[str | None, list[str]]:
    """A SQL condition (with its parameters) keeping the current caller's project's rows;
    (None, []) for a caller of every project. `condition` holds one `?` for the project."""
    principal = current()
    if not principal.scoped:
        return None, []
    return condition, [principal.project]


def keep_visible(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows (with a `project` column) that the current caller may see."""
    return [row for row in rows if visible(row.get("project"))]


def visible_deployments(services: Services) -> set[str]:
    """The names of the deployments the current caller may see, to filter rows that name a
    deployment but carry no project (incidents, queries, metrics)."""
    where, params = project_clause()
    return {row["name"] for row in services.registry.rows("deployments", where, params)}


# The kinds of object a tool argument names, and where each is registered.
_ARGUMENT_KINDS = {
    "dataset_id": "dataset",
    "run_id": "run",
    "eval_id": "eval",
    "deployment": "deployment",
    "gate": "deployment",
    "champion": "deployment",
    "model": "model",
    "version_id": "model",
    "from_checkpoint": "run",
    "query_id": "query",
}
# Arguments that are lists of names, e.g. the runs of a chart.
_LIST_ARGUMENT_KINDS = {"runs": "run", "evals": "eval"}
# Tools that create the deployment they name when it does not exist yet.
_CREATE_DEPLOYMENT = frozenset({"deploy", "set_routes", "set_gate"})
_TABLES = {
    "dataset": "datasets",
    "run": "runs",
    "eval": "evals",
    "deployment": "deployments",
    "version": "model_versions",
}
_LABELS = {"version": "model version", "query": "logged query"}


def object_project(services: Services, kind: str, key: str) -> tuple[str, str] | None:
    """The project and kind of the registered object a name refers to, or None when it names
    nothing registered in a project (a base model, or nothing at all).

    Args:
        services: The server's services.
        kind: dataset, run, eval, deployment or model (a run, a version, a deployment or an
            alias such as "triage@champion").
        key: The name as the caller gave it; "run-x/step-000050" names run-x.
    """
    if kind == "run":
        key = key.split("/", 1)[0]
    if kind == "query":  # a logged query belongs to its deployment's project
        logged = services.registry.rows("query_log", "id = ?", [key])
        owner = object_project(services, "deployment", logged[0]["deployment"]) if logged else None
        return None if owner is None else (owner[0], kind)
    if kind == "model":
        if "@" in key:
            return object_project(services, "deployment", key.split("@", 1)[0])
        for candidate in ("run", "version", "deployment"):
            found = object_project(services, candidate, key)
            if found is not None:
                return found
        return None
    row = services.registry.find(_TABLES[kind], key)
    if row is None:
        return None
    if kind == "eval":
        dataset = services.registry.find("datasets", row["dataset_id"])
        return (dataset or {}).get("project") or DEFAULT_PROJECT, kind
    return row.get("project") or DEFAULT_PROJECT, kind


def check_visible(services: Services, kind: str, key: str, creating: bool = False) -> None:
    """Refuse a name of another project's object as if it did not exist.

    Args:
        services: The server's services.
        kind: As for `object_project`.
        key: The name the caller gave.
        creating: The call would create a deployment of this name: a name another project
            holds is then refused as taken (deployment names are shared by every project).
    """
    if not current().scoped:
        return
    found = object_project(services, kind, key)
    if found is None or visible(found[0]):
        return
    if creating and found[1] == "deployment":
        raise ConflictError(f"deployment name {key!r} is taken; choose another name")
    # Worded as the registry words a name that does not exist: "deployment@alias" names the
    # deployment, "run-x/step-000050" the run.
    shown = key.split("@", 1)[0] if found[1] == "deployment" else key.split("/", 1)[0]
    label = _LABELS.get(found[1], found[1])
    raise NotFoundError(f"no {label} {shown!r}; list them to see what exists")


def check_names(services: Services, tool: str, arguments: Mapping[str, Any]) -> None:
    """Refuse a call that names another project's dataset, run, eval, version or deployment."""
    for name, value in _named(arguments):
        creating = tool in _CREATE_DEPLOYMENT and name == "deployment"
        check_visible(services, _kind(name), value, creating)


def named_objects(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (kind, name) of every object a call's arguments name, in argument order."""
    return [(_kind(name), value) for name, value in _named(arguments)]


def _kind(argument: str) -> str:
    return _ARGUMENT_KINDS.get(argument) or _LIST_ARGUMENT_KINDS[argument]


def _named(arguments: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The (argument, value) pairs that name objects, including the version of each route."""
    for name, value in arguments.items():
        if name in _ARGUMENT_KINDS and isinstance(value, str) and value:
            yield name, value
        if isinstance(value, str) and value.startswith(QUERY_LOG_SOURCE):
            # A dataset source of logged queries: "queries://<deployment>[?filters]".
            deployment = value.removeprefix(QUERY_LOG_SOURCE).split("?", 1)[0].split("/", 1)[0]
            if deployment:
                yield "deployment", deployment
        if name in _LIST_ARGUMENT_KINDS and isinstance(value, list):
            yield from ((name, item) for item in value if isinstance(item, str) and item)
        if name == "routes" and isinstance(value, list):
            for route in value:
                version = route.get("version_id") if isinstance(route, dict) else None
                if isinstance(version, str) and version:
                    yield "version_id", version


# Resource URIs name objects by their first path segment: turing://runs/{run_id}/log, ...
_URI_KINDS = {
    "runs": "run",
    "datasets": "dataset",
    "evals": "eval",
    "deployments": "deployment",
    "models": "model",
}


def check_resource_uri(services: Services, uri: str) -> None:
    """Refuse a resource URI that leaves Turing's namespace or names another project's object.

    Raises:
        InvalidInputError: Not a turing:// URI, or a segment that is empty, "." or "..", or
            that decodes to a path separator.
        NotFoundError: The object it names belongs to another project.
    """
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "turing":
        raise InvalidInputError(f"resource {uri!r}: only turing:// resources exist here")
    segments = [parsed.netloc, *parsed.path.split("/")[1:]] if parsed.path else [parsed.netloc]
    for segment in segments:
        decoded = urllib.parse.unquote(segment)
        if decoded in ("", ".", "..") or any(c in decoded for c in "/\\\0"):
            raise InvalidInputError(
                f"resource {uri!r}: segment {segment!r} is not a name; resource URIs hold "
                "names and ids only"
            )
    if len(segments) > 1 and segments[0] in _URI_KINDS:
        check_visible(services, _URI_KINDS[segments[0]], urllib.parse.unquote(segments[1]))


# ---- Checking each call ----


def admit_call(
    services: Services,
    tool: str,
    arguments: dict[str, Any],
    containment: Containment | None = None,
) -> dict[str, Any]:
    """Check a tool call of the current caller; returns the arguments to call it with.

    In order: names of other projects' objects are not found; the caller's role must reach
    what the call needs; path arguments must resolve inside the allowed folders, and are
    replaced by their resolved form so that the tool opens what was checked.
    """
    principal = current()
    arguments = normalized_names(arguments)
    check_names(services, tool, arguments)
    needed, what = required_role(services, tool, arguments)
    check_role(principal, needed, what)
    key_env = arguments.get("api_key_env") if tool == "register_remote_model" else None
    if principal.scoped and _given(key_env):
        # The key is read from the server's own environment, which every project shares.
        raise AccessDeniedError(
            "permission denied: register_remote_model with an api_key_env sends a variable of "
            "the server's environment to the endpoint, which needs an admin of every project "
            f"('*'); the caller, {principal.describe()}, acts in one project"
        )
    if containment is not None:
        arguments = containment.check_arguments(tool, arguments, principal)
    return arguments


def normalized_names(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments with the names of objects stripped of surrounding whitespace, so that the
    project check and the tool see the same name; a logged-query source holding whitespace or
    control characters is refused (URL parsing would drop some of them)."""
    normalized = dict(arguments)
    for name, value in arguments.items():
        if name in _ARGUMENT_KINDS and isinstance(value, str):
            normalized[name] = value.strip()
        elif name in _LIST_ARGUMENT_KINDS and isinstance(value, list):
            normalized[name] = [item.strip() if isinstance(item, str) else item for item in value]
        elif name == "routes" and isinstance(value, list):
            normalized[name] = [
                {**route, "version_id": route["version_id"].strip()}
                if isinstance(route, dict) and isinstance(route.get("version_id"), str)
                else route
                for route in value
            ]
        elif (
            isinstance(value, str)
            and value.strip().startswith(QUERY_LOG_SOURCE)
            and any(char.isspace() or not char.isprintable() for char in value)
        ):
            raise InvalidInputError(
                f"{name}={value!r}: a queries:// source holds no spaces or control "
                "characters; give queries://<deployment>[?filters]"
            )
    return normalized


def acting_actor(principal: Principal, given: Any) -> str:
    """Who a tool called with a token records as acting: the token's holder (a name the call
    passes is kept as whom it acts for). On stdio the local user's own `actor` stands."""
    given = given.strip() if isinstance(given, str) else ""
    if given and given != principal.actor:
        return f"{principal.actor} for {given}"
    return principal.actor


class GuardedServer(MCPServer):
    """The MCP server with Turing's access rules around every tool call, resource read and
    prompt: the caller's principal is current for the call, its role and project are checked,
    path arguments are contained, and mutating calls are audited (success or failure)."""

    def __init__(self, services: Services, containment: Containment, **settings: Any) -> None:
        super().__init__(**settings)
        self.services = services
        self.containment = containment

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        """Call a tool as the request's caller, after the access checks."""
        principal = principal_of_context(context)
        tool = self._tool_manager.get_tool(name)
        if tool is None:  # the SDK's "Unknown tool" error; nothing to check or audit
            return await super().call_tool(name, arguments, context)
        with calling_as(principal):
            try:
                admitted = await anyio.to_thread.run_sync(
                    admit_call, self.services, name, dict(arguments), self.containment
                )
                if principal.token_id and "actor" in tool.parameters.get("properties", {}):
                    admitted["actor"] = acting_actor(principal, admitted.get("actor"))
                result = await super().call_tool(name, admitted, context)
            except Exception as exc:
                await self._audit(name, arguments, str(exc))
                raise
            failed = isinstance(result, CallToolResult) and result.is_error
            await self._audit(name, arguments, _result_text(result) if failed else "ok")
            return result

    async def read_resource(self, uri: Any, context: Context[Any, Any] | None = None) -> Any:
        """Read a resource as the request's caller: viewers and above, their project only."""
        principal = principal_of_context(context)
        with calling_as(principal):
            check_role(principal, RESOURCE_ROLE, f"reading {uri}")
            await anyio.to_thread.run_sync(check_resource_uri, self.services, str(uri))
            return await super().read_resource(uri, context)

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> Any:
        """Render a prompt as the request's caller (viewers and above)."""
        principal = principal_of_context(context)
        with calling_as(principal):
            check_role(principal, PROMPT_ROLE, f"the prompt {name}")
            try:
                return await super().get_prompt(name, arguments, context)
            except ValueError as exc:  # an unknown prompt or a missing argument: the caller's
                raise MCPError(INVALID_PARAMS, str(exc)) from exc

    async def _audit(self, tool: str, arguments: Mapping[str, Any], result: str) -> None:
        if not tool_rule(tool).mutating:
            return
        from turing.tools import audit

        await anyio.to_thread.run_sync(
            lambda: audit.record_call(self.services, tool, dict(arguments), result)
        )


def _result_text(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content) or "error"
