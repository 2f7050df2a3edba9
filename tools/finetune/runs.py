"""Fine-tuning runs as managed jobs: queue, start, watch, cancel, resume, choose a checkpoint.

A new run is `queued`; the scheduler (`advance`, ticked by the server about once a second)
starts the oldest queued runs while fewer than TURING_MAX_RUNNING (default 1) are running.
A run that failed or was cancelled can be queued again under the same id to continue from its
latest checkpoint, and any of a finished run's checkpoints can be made its output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from turing.server import access
from turing.server.jobs import JOB_NAME, RESULT_NAME, write_json_atomic
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.datasets.store import split_path
from turing.tools.errors import ConflictError, InvalidInputError
from turing.tools.finetune import checkpoints, preflight
from turing.tools.finetune.train import TrainParams

logger = logging.getLogger(__name__)

WORKER = "turing.tools.finetune.worker"
MAX_RUNNING_ENV = "TURING_MAX_RUNNING"
MAX_PROCESSES = 64
EVENTS_SHOWN = 5
WAIT_POLL_SECONDS = 1.0
MAX_WAIT_SECONDS = 3600.0
_CHECKPOINT_REF = re.compile(r"^(run-[0-9a-z]{1,32})(?:/step-(\d{1,9}))?$")
_SELECT_LOCK = threading.Lock()
RUN_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
# LoRA settings a checkpoint fixes: (manifest key, training parameter).
_LORA_SHAPE = (("rank", "lora_rank"), ("alpha", "lora_alpha"), ("target_modules", "target_modules"))

Report = Callable[[float, float | None, str | None], Awaitable[None]]


# ---- Starting and scheduling ----


def start_run(
    services: Services,
    dataset_id: str,
    base_model: str = DEFAULT_BASE_MODEL,
    hyperparameters: dict[str, Any] | None = None,
    from_checkpoint: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Validate the request, queue the run, and return it at once.

    Unless given, max_seq_len is the one the dataset's rows were measured against, and with
    `from_checkpoint` the LoRA rank, alpha and target modules are the checkpoint's.
    """
    if hyperparameters is not None and not isinstance(hyperparameters, dict):
        raise InvalidInputError(
            f'hyperparameters must be an object, e.g. {{"epochs": 2}}; got {hyperparameters!r}'
        )
    given = dict(hyperparameters or {})
    init_checkpoint = None
    if from_checkpoint is not None:
        manifest, source = resolve_checkpoint(services, from_checkpoint)
        chosen = {key: value for key, value in given.items() if value is not None}
        given = {**_lora_shape(manifest, source), **chosen}

    # Every problem of the request at once, from the registry and the GGUF metadata alone.
    request = preflight.check_request(services, dataset_id, base_model, given)
    bad_count = isinstance(processes, bool) or not isinstance(processes, int)
    if bad_count or not 1 <= processes <= MAX_PROCESSES:
        request.problems.insert(
            0,
            preflight.Problem(
                "error", "processes", processes, f"must be an integer from 1 to {MAX_PROCESSES}"
            ),
        )
    preflight.raise_if_errors(request.problems)
    warnings = [str(problem) for problem in request.problems if problem.severity == "warning"]
    assert request.base is not None
    base, params = request.base, request.params
    if from_checkpoint is not None:
        _check_fits(from_checkpoint, manifest, source, base["name"], params)
        init_checkpoint = manifest["path"]

    run_id = "run-" + uuid.uuid4().hex[:10]
    folder = services.workspace.folder("runs", run_id)
    job = {
        "base_gguf": base["gguf_path"],
        "train_path": str(split_path(services, dataset_id, "train")),
        "validation_path": str(split_path(services, dataset_id, "validation")),
        "params": asdict(params),
        "resume": False,
        "init_checkpoint": init_checkpoint,
        "processes": processes,
    }
    write_json_atomic(folder / JOB_NAME, job)
    now = utc_now()
    services.registry.insert(
        "runs",
        {
            "id": run_id,
            "dataset_id": dataset_id,
            "base_model": base["name"],
            "params": asdict(params),
            "status": jobs.QUEUED,
            "pid": None,
            "folder": str(folder),
            "created_at": now,
            "queued_at": now,
            "attempts": 0,
            "project": access.owner_project((request.dataset or {}).get("project")),
        },
    )

    note = f"queued from checkpoint {from_checkpoint}" if from_checkpoint else "queued"
    jobs.append_event(folder, "queued", note, processes=processes, init_checkpoint=init_checkpoint)
    logger.info("run %s queued on dataset %s over %s", run_id, dataset_id, base["name"])
    services.jobs.wake()
    return {**describe_run(services, run_id), "warnings": warnings}


def max_running() -> int:
    """How many runs may train at once: TURING_MAX_RUNNING, 1 when unset."""
    raw = os.environ.get(MAX_RUNNING_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInputError(f"{MAX_RUNNING_ENV}={raw!r}: must be a whole number of at least 1")
    return int(raw)


def advance(services: Services) -> None:
    """One scheduler tick: record jobs that ended, then start queued runs while slots are free.

    The oldest queued run starts first. Called about once a second by the server's scheduler
    thread and never on the event loop.
    """
    jobs.refresh_active(services)
    running = services.registry.rows("runs", "status in ('running', 'cancelling')")
    free = max_running() - len(running)
    if free <= 0:
        return
    queued = services.registry.rows("runs", "status = 'queued'", order_by="queued_at, created_at")
    for row in queued[:free]:
        _launch(services, row)


def _launch(services: Services, row: dict[str, Any]) -> None:
    run_id, folder = row["id"], Path(row["folder"])
    claim = {"status": "running", "pid": None, "started_at": utc_now()}
    if not jobs.transition(services, "runs", run_id, (jobs.QUEUED,), claim):
        return  # cancelled meanwhile, or started by another server on this workspace

    try:
        job = json.loads((folder / JOB_NAME).read_text())
        pid = services.jobs.start(WORKER, folder, processes=int(job.get("processes") or 1))
    except (OSError, ValueError) as exc:
        error = f"the worker could not be started: {type(exc).__name__}: {exc}"
        services.registry.update(
            "runs",
            run_id,
            {
                "status": "failed",
                "error": error,
                "result": {"status": "failed", "error": error},
                "finished_at": utc_now(),
            },
        )
        logger.error("run %s: %s", run_id, error)
        return
    services.registry.update("runs", run_id, {"pid": pid, "attempts": (row["attempts"] or 0) + 1})
    logger.info("run %s started (pid %d)", run_id, pid)

    # A cancel that came while the worker was launching found no pid to signal.
    if services.registry.get("runs", run_id)["status"] == "cancelling":
        services.jobs.stop(pid, folder)


# ---- Reading ----


def get_run(services: Services, run_id: str) -> dict[str, Any]:
    """The run's row, brought up to date with its worker."""
    row = services.registry.get("runs", run_id, "run")
    return jobs.refresh(services, "runs", row)


def describe_run(services: Services, run_id: str) -> dict[str, Any]:
    """Status, progress, checkpoints, recent events and result of a run, for a caller."""
    row = get_run(services, run_id)
    folder = Path(row["folder"])
    metrics = jobs.read_events(folder)
    steps = [event for event in metrics if event.get("type") == "step"]
    validations = [event for event in metrics if event.get("type") == "validation"]
    result = row["result"] or {}
    return {
        "run_id": row["id"],
        "status": row["status"],
        "queue_position": queue_position(services, row),
        "dataset_id": row["dataset_id"],
        "base_model": row["base_model"],
        "hyperparameters": row["params"],
        "progress": steps[-1] if steps else None,
        "last_validation": validations[-1] if validations else None,
        "checkpoints": [
            {"step": c["step"], "metrics": c.get("metrics", {}), "created_at": c.get("created_at")}
            for c in checkpoints.list_checkpoints(folder)
        ],
        "output_step": result.get("output_step"),
        "output_metrics": result.get("output_metrics"),
        "resumable": bool(result.get("resumable")) and row["status"] in ("failed", "cancelled"),
        "resume_step": result.get("resume_step"),
        "events": jobs.read_events(folder, jobs.EVENTS_NAME)[-EVENTS_SHOWN:],
        "result": row["result"],
        "error": row["error"],
        "attempts": row.get("attempts"),
        "created_at": row["created_at"],
        "started_at": row.get("started_at"),
        "finished_at": row["finished_at"],
        "log_uri": f"turing://runs/{row['id']}/log",
        "metrics_uri": f"turing://runs/{row['id']}/metrics",
        "events_uri": f"turing://runs/{row['id']}/events",
    }


def queue_position(services: Services, row: dict[str, Any]) -> int | None:
    """1 for the next queued run to start, 2 for the one after, ...; None when not queued."""
    if row["status"] != jobs.QUEUED:
        return None
    queued = services.registry.rows("runs", "status = 'queued'", order_by="queued_at, created_at")
    ids = [item["id"] for item in queued]
    return ids.index(row["id"]) + 1 if row["id"] in ids else None


def list_runs(services: Services, status: str | None = None) -> list[dict[str, Any]]:
    """Every run, newest first, optionally only those with one status."""
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInputError(f"status={status!r}: must be one of {', '.join(RUN_STATUSES)}")
    where, params = access.project_clause()
    rows = services.registry.rows("runs", where, params, order_by="created_at desc")
    rows = [jobs.refresh(services, "runs", row) for row in rows]
    return [
        {
            "run_id": row["id"],
            "status": row["status"],
            "dataset_id": row["dataset_id"],
            "base_model": row["base_model"],
            "created_at": row["created_at"],
            "final_loss": (row["result"] or {}).get("final_loss"),
        }
        for row in rows
        if status is None or row["status"] == status
    ]


async def wait_for_run(
    services: Services, run_id: str, timeout_seconds: float, report: Report
) -> dict[str, Any]:
    """Wait until the run ends or the timeout passes, reporting each new step; describe it.

    Polls the run's row and the end of its metrics file off the event loop (in a worker
    thread), sleeping asynchronously in between, so other requests go on being served.

    Args:
        services: The server's services.
        run_id: The run to wait for.
        timeout_seconds: Longest wait, 0 to 3600 seconds.
        report: Sends one progress notification: (progress, total, message).
    """
    if not 0 <= timeout_seconds <= MAX_WAIT_SECONDS:
        raise InvalidInputError(
            f"timeout_seconds={timeout_seconds}: must be from 0 to {MAX_WAIT_SECONDS:.0f}"
        )
    deadline = anyio.current_time() + timeout_seconds
    reported_step, reported_queue = 0, False
    while True:
        row = await anyio.to_thread.run_sync(get_run, services, run_id)
        # Read after the status, so the last step of a run that just ended is still reported.
        step = await anyio.to_thread.run_sync(jobs.last_event, Path(row["folder"]), "step")
        if step is not None and step["step"] > reported_step:
            await report(step["step"], step["total_steps"], progress_message(step))
            reported_step = step["step"]
        elif row["status"] == jobs.QUEUED and not reported_queue:
            position = await anyio.to_thread.run_sync(queue_position, services, row)
            await report(0, None, f"queued (position {position})")
            reported_queue = True

        left = deadline - anyio.current_time()
        if row["status"] in jobs.ENDED or left <= 0:
            break
        await anyio.sleep(min(WAIT_POLL_SECONDS, left))
    return await anyio.to_thread.run_sync(describe_run, services, run_id)


def progress_message(step: dict[str, Any]) -> str:
    """One line on a training step: step, loss, speed and time left."""
    eta = int(step.get("eta_seconds") or 0)
    minutes, seconds = divmod(eta, 60)
    return (
        f"step {step['step']}/{step['total_steps']}: loss {step['loss']:.4f}, "
        f"{step.get('tokens_per_second', 0):.0f} tokens/s, ETA {minutes}m{seconds:02d}s"
    )


# ---- Changing ----


def cancel_run(services: Services, run_id: str) -> dict[str, Any]:
    """Cancel a queued run at once, or ask a running one to stop at its next step."""
    row = get_run(services, run_id)
    folder = Path(row["folder"])
    if row["status"] == jobs.QUEUED:
        ended = {"status": "cancelled", "finished_at": utc_now()}
        if jobs.transition(services, "runs", run_id, (jobs.QUEUED,), ended):
            result = {"status": "cancelled", "error": None, **jobs.resume_point(folder)}
            services.registry.update("runs", run_id, {"result": result})
            jobs.append_event(folder, "cancel_requested", "cancelled while queued; never started")
            logger.info("run %s cancelled while queued", run_id)
            return {"run_id": run_id, "status": "cancelled"}
        row = get_run(services, run_id)  # the scheduler started it meanwhile

    if row["status"] not in jobs.ACTIVE:
        raise ConflictError(
            f"run {run_id} is already {row['status']}; only queued or running runs can be cancelled"
        )
    jobs.transition(services, "runs", run_id, ("running",), {"status": "cancelling"})
    jobs.append_event(folder, "cancel_requested", "asked to stop; it ends at its next step")
    pid = services.registry.get("runs", run_id)["pid"]  # read after the status change
    services.jobs.stop(pid, folder)
    return {"run_id": run_id, "status": "cancelling"}


def resume_run(services: Services, run_id: str) -> dict[str, Any]:
    """Queue a failed or cancelled run again to continue from its latest checkpoint."""
    row = get_run(services, run_id)
    if row["status"] not in ("failed", "cancelled"):
        raise ConflictError(
            f"run {run_id} is {row['status']}; only failed or cancelled runs can be resumed"
        )
    folder = Path(row["folder"])
    latest = checkpoints.latest_resumable(folder)
    if latest is None:
        raise ConflictError(
            f"run {run_id} has no checkpoint to resume from (none holds the trainer state); "
            "start a new run, or use from_checkpoint to start from one of its adapters"
        )

    job = json.loads((folder / JOB_NAME).read_text())
    write_json_atomic(folder / JOB_NAME, {**job, "resume": True})
    (folder / RESULT_NAME).unlink(missing_ok=True)  # the new attempt writes its own
    again = {
        "status": jobs.QUEUED,
        "pid": None,
        "queued_at": utc_now(),
        "finished_at": None,
        "error": None,
        "result": None,
    }
    if not jobs.transition(services, "runs", run_id, ("failed", "cancelled"), again):
        raise ConflictError(f"run {run_id} changed status meanwhile; read it again")

    jobs.append_event(
        folder,
        "queued",
        f"queued again to resume from step {latest['step']}",
        resume_step=latest["step"],
    )
    logger.info("run %s queued to resume from step %d", run_id, latest["step"])
    services.jobs.wake()
    return describe_run(services, run_id)


def select_checkpoint(services: Services, run_id: str, step: int) -> dict[str, Any]:
    """Make one of a succeeded run's checkpoints its output adapter."""
    row = get_run(services, run_id)
    if row["status"] != "succeeded":
        raise ConflictError(
            f"run {run_id} is {row['status']}; only a succeeded run's output can be chosen"
        )
    folder = Path(row["folder"])
    manifest = checkpoints.find_checkpoint(folder, step)
    # One choice at a time: the files in adapter/ and the step recorded must be the same one.
    with _SELECT_LOCK:
        adapter = checkpoints.set_output(folder, manifest)
        row = services.registry.get("runs", run_id)
        previous = (row["result"] or {}).get("output_step")
        result = {
            **(row["result"] or {}),
            "output_step": step,
            "output_metrics": manifest.get("metrics", {}),
            "adapter_dir": str(adapter.resolve()),
        }
        services.registry.update("runs", run_id, {"result": result})
    jobs.append_event(
        folder,
        "output_selected",
        f"checkpoint at step {step} is now the run's output",
        step=step,
        previous_step=previous,
        metrics=manifest.get("metrics", {}),
    )
    logger.info("run %s output is now step %d (was %s)", run_id, step, previous)
    return describe_run(services, run_id)


def adapter_dir(services: Services, run_id: str) -> Path:
    """The trained adapter of a finished run, or an error saying why there is none."""
    row = get_run(services, run_id)
    if row["status"] != "succeeded":
        raise ConflictError(f"run {run_id} is {row['status']}; only a succeeded run has an adapter")
    return Path(row["result"]["adapter_dir"])


# ---- Starting from another run's checkpoint ----


def resolve_checkpoint(services: Services, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint a reference names, with the row of the run it belongs to.

    Args:
        services: The server's services.
        ref: "run-xxxx" for that run's output checkpoint, or "run-xxxx/step-000050".
    """
    match = _CHECKPOINT_REF.match(ref.strip())
    if match is None:
        raise InvalidInputError(
            f"from_checkpoint={ref!r} is not a checkpoint reference; use a run id for its "
            "output (e.g. 'run-0123456789') or a run id and step ('run-0123456789/step-000050')"
        )
    source = services.registry.get("runs", match.group(1), "run")
    folder = Path(source["folder"])
    if match.group(2) is not None:
        return checkpoints.find_checkpoint(folder, int(match.group(2))), source

    step = (source["result"] or {}).get("output_step")
    if step is None:
        steps = [str(c["step"]) for c in checkpoints.list_checkpoints(folder)]
        raise ConflictError(
            f"run {source['id']} ({source['status']}) has no output checkpoint; name one of its "
            f"steps instead, as '{source['id']}/step-000050' (steps: {', '.join(steps) or 'none'})"
        )
    return checkpoints.find_checkpoint(folder, int(step)), source


def _lora_shape(manifest: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    lora = manifest.get("lora") or {}
    params = source.get("params") or {}
    return {
        param: lora[key] if key in lora else params[param]
        for key, param in _LORA_SHAPE
        if key in lora or param in params
    }


def _check_fits(
    ref: str,
    manifest: dict[str, Any],
    source: dict[str, Any],
    base_model: str,
    params: TrainParams,
) -> None:
    """Refuse a checkpoint whose adapter cannot be loaded into the requested run."""
    theirs = _lora_shape(manifest, source)
    ours = asdict(params)
    problems = []
    for _, param in _LORA_SHAPE:
        mine, its = ours[param], theirs.get(param)
        if param == "target_modules" and its is not None:
            mine, its = sorted(mine), sorted(its)
        if its is not None and mine != its:
            problems.append(f"{param}: the checkpoint has {its}, this run asks for {mine}")
    if source["base_model"] != base_model:
        problems.append(
            f"base model: the checkpoint was trained on {source['base_model']!r}, "
            f"this run uses {base_model!r}"
        )
    if problems:
        raise InvalidInputError(
            f"from_checkpoint={ref!r} does not fit this run: "
            + "; ".join(problems)
            + ". Leave those settings out to take the checkpoint's, or start without it."
        )
