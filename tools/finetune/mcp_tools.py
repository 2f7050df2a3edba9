"""MCP tools of the fine-tuning stage, and the MCP tasks extension over fine-tuning runs.

A client that declares the tasks extension (`io.modelcontextprotocol/tasks`, protocol
2026-07-28) on a `start_finetune` or `resume_run` call gets a task back instead of a plain
result. The task id is the run id, so a task outlives the connection and the server process:
`tasks/get` reports the run (working while queued or running; completed with the run's
description as the tool result; cancelled), and `tasks/cancel` cancels the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, CallToolResult, RequestParams, TextContent
from mcp_types.jsonrpc import INVALID_PARAMS, INVALID_REQUEST
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from turing.server import access
from turing.server.services import Services
from turing.tools import audit, jobs
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.base_models import register_base_model as register_base
from turing.tools.errors import NotFoundError
from turing.tools.finetune import preflight, runs

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TASK_TOOLS = ("start_finetune", "resume_run")
TASK_POLL_MS = 2000
_TASK_STATUS = {
    "queued": "working",
    "running": "working",
    "cancelling": "working",
    "succeeded": "completed",
    # A run that failed is a tool-level failure: the task completes with an isError result;
    # the task status `failed` is reserved for JSON-RPC errors.
    "failed": "completed",
    "cancelled": "cancelled",
}


def register(app: MCPServer, services: Services) -> None:
    """Declare the fine-tuning tools on the app."""

    @app.tool()
    def start_finetune(
        dataset_id: str,
        base_model: str = DEFAULT_BASE_MODEL,
        hyperparameters: dict[str, Any] | None = None,
        from_checkpoint: str | None = None,
        processes: int = 1,
    ) -> dict[str, Any]:
        """Queue LoRA fine-tuning of a base model on a dataset; returns the run at once.

        The run starts as soon as a training slot is free (status queued, then running) and
        trains in a background process for minutes. Follow it with wait_for_run (progress
        notifications, returns when done) or get_run; it is done when its status is succeeded,
        failed or cancelled. Checkpoints are taken during training; a failed or cancelled run
        can continue with resume_run.

        Args:
            dataset_id: A dataset from prepare_dataset.
            base_model: A registered base model; the default is the bundled SmolLM2-135M-Instruct.
            hyperparameters: Optional overrides, e.g. {"epochs": 3, "learning_rate": 0.001,
                "batch_size": 16, "lora_rank": 16, "lora_alpha": 32, "max_seq_len": 512,
                "checkpoint_every": 50, "early_stopping_patience": 3,
                "selection_metric": "validation_loss", "precision": "bf16", "seed": 0}.
                Unknown keys or bad values are all reported together. To pick the checkpoint
                by a task metric, set "eval_metric" (exact_match, accuracy, macro_f1, token_f1,
                rouge_l or json_valid; accuracy and macro_f1 need a dataset with labels) and
                "selection_metric": "eval_metric": every checkpoint then answers the first
                "eval_rows" (default 64) validation rows greedily and records eval_<metric>;
                early stopping follows it too.
            from_checkpoint: Start from another run's adapter weights instead of fresh ones:
                "run-xxxx" (that run's output checkpoint) or "run-xxxx/step-000050". The LoRA
                rank, alpha and target modules default to the checkpoint's; different ones, or
                a different base model, are refused.
            processes: Training processes on this machine (1 to 64); more than 1 trains data
                parallel under torchrun.
        """
        return runs.start_run(
            services, dataset_id, base_model, hyperparameters, from_checkpoint, processes
        )

    @app.tool()
    def preflight_finetune(
        dataset_id: str,
        base_model: str = DEFAULT_BASE_MODEL,
        hyperparameters: dict[str, Any] | None = None,
        probe: bool = True,
    ) -> dict[str, Any]:
        """Check a fine-tuning request whole and estimate its cost, without starting it.

        Returns every problem together (field, value, what is wrong, what to do): target
        modules the architecture lacks, a rank above a layer's width, unusual learning rates,
        fp16 on a CPU, a batch that will not fit in memory, a dataset prepared for another base
        model or template, a max_seq_len that would leave rows without an answer. With probe
        (about a minute), a child process runs three real training steps and extrapolates the
        run's steps, tokens, seconds and peak memory; without it the estimate is static.
        Takes dataset_id, base_model and hyperparameters as start_finetune does; ok is true
        when nothing blocks a start. One probe runs at a time; meanwhile others get a static
        estimate.
        """
        return preflight.preflight(services, dataset_id, base_model, hyperparameters, probe)

    @app.tool()
    def get_run(run_id: str) -> dict[str, Any]:
        """Status, progress, checkpoints, recent events and result of a fine-tuning run.

        Returns status (queued, running, cancelling, succeeded, failed, cancelled),
        queue_position while queued, progress (step, total_steps, loss, tokens/s, ETA),
        checkpoints (step, metrics), output_step (the checkpoint that is the run's output),
        resumable (whether resume_run can continue it), the last events and the result.
        """
        return runs.describe_run(services, run_id)

    @app.tool()
    async def wait_for_run(
        run_id: str, ctx: Context, timeout_seconds: float = 60
    ) -> dict[str, Any]:
        """Wait until a run ends or timeout_seconds pass, then return it as get_run does.

        While waiting, each new training step is sent as a progress notification (step of
        total_steps, with loss, tokens/s and ETA) when the call carries a progress token. Call
        it again while the returned status is still queued, running or cancelling.

        Args:
            run_id: The run to wait for.
            timeout_seconds: Longest wait in seconds, 0 to 3600 (default 60).
        """
        return await runs.wait_for_run(services, run_id, timeout_seconds, ctx.report_progress)

    @app.tool()
    def list_runs(status: str | None = None) -> list[dict[str, Any]]:
        """List fine-tuning runs, newest first.

        Args:
            status: Only runs with this status: queued, running, cancelling, succeeded, failed
                or cancelled.
        """
        return runs.list_runs(services, status)

    @app.tool()
    def cancel_run(run_id: str) -> dict[str, Any]:
        """Cancel a fine-tuning run: a queued one at once, a running one at its next step.

        A running run ends with status cancelled and keeps its checkpoints (see resume_run).
        """
        return runs.cancel_run(services, run_id)

    @app.tool()
    def resume_run(run_id: str) -> dict[str, Any]:
        """Continue a failed or cancelled run from its latest checkpoint, under the same run id.

        The run is queued again and picks up the optimiser, schedule and data position where
        the checkpoint left them. Only runs whose get_run shows resumable: true can resume.
        """
        return runs.resume_run(services, run_id)

    @app.tool()
    def select_checkpoint(run_id: str, step: int) -> dict[str, Any]:
        """Make an earlier checkpoint of a succeeded run its output (what deploy and run_eval use).

        Use it when get_run's checkpoints show a step with better metrics than output_step.

        Args:
            run_id: A succeeded run.
            step: One of the steps listed in the run's checkpoints.
        """
        return runs.select_checkpoint(services, run_id, step)

    @app.tool()
    def register_base_model(name: str, gguf_path: str) -> dict[str, Any]:
        """Register a local GGUF model file (llama architecture) as a base model for fine-tuning."""
        return register_base(services, name, gguf_path)


class TaskParams(RequestParams):
    """Parameters of tasks/get and tasks/cancel."""

    task_id: str


class UpdateTaskParams(TaskParams):
    """Parameters of tasks/update; runs never ask for input, so responses are ignored."""

    input_responses: dict[str, Any] | None = None


class RunTasks(Extension):
    """The MCP tasks extension over fine-tuning runs: one task per run, keyed by its id."""

    identifier = TASKS_EXTENSION

    def __init__(self, services: Services) -> None:
        self._services = services

    def methods(self) -> Sequence[MethodBinding]:
        """tasks/get, tasks/update and tasks/cancel, on the protocol versions that have them."""
        versions = frozenset(MODERN_PROTOCOL_VERSIONS)
        return (
            MethodBinding("tasks/get", TaskParams, self._get, versions),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, versions),
            MethodBinding("tasks/cancel", TaskParams, self._cancel, versions),
        )

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        """Answer a task-capable call from a client that declared tasks with the run's task."""
        result = await call_next(ctx)
        wants_task = (
            params.name in TASK_TOOLS
            and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
            and _declares_tasks(ctx)
        )
        if not wants_task or not isinstance(result, CallToolResult) or result.is_error:
            return result
        described = result.structured_content or {}
        return {"resultType": "task", **run_task(described)}

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        with access.calling_as(_caller(ctx)):
            return run_task(await self._describe(params.task_id), detailed=True)

    async def _update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams
    ) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        with access.calling_as(_caller(ctx)):
            await self._describe(params.task_id)
        return {}

    async def _cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams
    ) -> HandlerResult:
        require_client_extension(ctx, TASKS_EXTENSION)
        arguments = {"run_id": params.task_id}
        with access.calling_as(_caller(ctx)):
            try:  # audited as a call of cancel_run, which it is
                described = await self._describe(params.task_id, "cancel_run")
                if described["status"] not in jobs.ENDED:  # cancelling a finished task: no-op
                    await anyio.to_thread.run_sync(runs.cancel_run, self._services, params.task_id)
            except Exception as exc:
                await self._audit(arguments, str(exc))
                raise
            await self._audit(arguments, "ok")
        return {}

    async def _describe(self, task_id: str, tool: str = "get_run") -> dict[str, Any]:
        """The run of a task, once the caller passes the checks of `tool` on it."""

        def admitted() -> dict[str, Any]:
            access.admit_call(self._services, tool, {"run_id": task_id})
            return runs.describe_run(self._services, task_id)

        try:
            return await anyio.to_thread.run_sync(admitted)
        except NotFoundError as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to retrieve task: {exc}") from None
        except access.AccessDeniedError as exc:
            raise MCPError(code=INVALID_REQUEST, message=str(exc)) from None

    async def _audit(self, arguments: dict[str, Any], result: str) -> None:
        await anyio.to_thread.run_sync(
            audit.record_call, self._services, "cancel_run", arguments, result
        )


def _caller(ctx: ServerRequestContext[Any, Any]) -> access.Principal:
    """The principal of a tasks request (its HTTP request's, or the local user on stdio)."""
    try:
        return access.principal_of(ctx.request)
    except access.AccessDeniedError as exc:
        raise MCPError(code=INVALID_REQUEST, message=str(exc)) from None


def run_task(described: dict[str, Any], detailed: bool = False) -> dict[str, Any]:
    """A run as a task of the tasks extension; `detailed` inlines the finished run's result."""
    status = _TASK_STATUS[described["status"]]
    progress = described.get("progress") or {}
    updated = described.get("finished_at") or progress.get("time") or described["created_at"]
    task: dict[str, Any] = {
        "taskId": described["run_id"],
        "status": status,
        "statusMessage": _status_message(described),
        "createdAt": described["created_at"],
        "lastUpdatedAt": updated,
        "ttlMs": None,  # runs are kept for good
        "pollIntervalMs": TASK_POLL_MS,
    }
    if detailed and status == "completed":
        failed = described["status"] == "failed"
        content = TextContent(type="text", text=json.dumps(described, indent=2))
        tool_result = CallToolResult(
            content=[content], structured_content=described, is_error=failed
        )
        task["result"] = tool_result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return task


def _status_message(described: dict[str, Any]) -> str:
    status = described["status"]
    if status == "queued":
        return f"run {described['run_id']} is queued (position {described['queue_position']})"
    if status == "running" and described.get("progress"):
        return f"run {described['run_id']} is training, " + runs.progress_message(
            described["progress"]
        )
    if status == "failed":
        return f"run {described['run_id']} failed: {described['error']}"
    return f"run {described['run_id']} is {status}"


def _declares_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(
        capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions
    )
