"""Fine-tuning runs: start a training worker, report its progress, cancel it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.base_models import DEFAULT_BASE_MODEL, get_base_model
from turing.tools.datasets.store import split_path
from turing.tools.errors import ConflictError
from turing.tools.finetune.train import parse_params

logger = logging.getLogger(__name__)

WORKER = "turing.tools.finetune.worker"


def start_run(
    services: Services,
    dataset_id: str,
    base_model: str = DEFAULT_BASE_MODEL,
    hyperparameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the request, start a training worker, and return the new run at once.

    Unless given, max_seq_len is the one the dataset's rows were measured against.
    """
    given = dict(hyperparameters or {})
    params = parse_params(given)
    dataset = services.registry.get("datasets", dataset_id, "dataset")
    if "max_seq_len" not in given and dataset.get("max_seq_len"):
        params = parse_params({**given, "max_seq_len": dataset["max_seq_len"]})
    base = get_base_model(services, base_model)

    run_id = "run-" + uuid.uuid4().hex[:10]
    folder = services.workspace.folder("runs", run_id)
    job = {
        "base_gguf": base["gguf_path"],
        "train_path": str(split_path(services, dataset_id, "train")),
        "validation_path": str(split_path(services, dataset_id, "validation")),
        "params": asdict(params),
    }
    pid = services.jobs.start(WORKER, folder, job)

    services.registry.insert(
        "runs",
        {
            "id": run_id,
            "dataset_id": dataset_id,
            "base_model": base["name"],
            "params": asdict(params),
            "status": "running",
            "pid": pid,
            "folder": str(folder),
            "created_at": utc_now(),
        },
    )
    logger.info("run %s started on dataset %s over %s", run_id, dataset_id, base["name"])
    return describe_run(services, run_id)


def get_run(services: Services, run_id: str) -> dict[str, Any]:
    """The run's row, brought up to date with its worker."""
    row = services.registry.get("runs", run_id, "run")
    return jobs.refresh(services, "runs", row)


def describe_run(services: Services, run_id: str) -> dict[str, Any]:
    """Status, latest progress and result of a run, as a caller wants to see it."""
    row = get_run(services, run_id)
    events = jobs.read_events(Path(row["folder"]))
    steps = [event for event in events if event.get("type") == "step"]
    validations = [event for event in events if event.get("type") == "validation"]
    return {
        "run_id": row["id"],
        "status": row["status"],
        "dataset_id": row["dataset_id"],
        "base_model": row["base_model"],
        "hyperparameters": row["params"],
        "progress": steps[-1] if steps else None,
        "last_validation": validations[-1] if validations else None,
        "result": row["result"],
        "error": row["error"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "log_uri": f"turing://runs/{row['id']}/log",
        "metrics_uri": f"turing://runs/{row['id']}/metrics",
    }


def list_runs(services: Services, status: str | None = None) -> list[dict[str, Any]]:
    """Every run, newest first, optionally only those with one status."""
    rows = services.registry.rows("runs", order_by="created_at desc")
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


def cancel_run(services: Services, run_id: str) -> dict[str, Any]:
    """Ask a running run to stop; it ends as cancelled at its next step."""
    row = get_run(services, run_id)
    if row["status"] not in jobs.ACTIVE:
        raise ConflictError(f"run {run_id} is already {row['status']}; only running runs cancel")
    services.jobs.stop(row["pid"], Path(row["folder"]))
    services.registry.update("runs", run_id, {"status": "cancelling"})
    return {"run_id": run_id, "status": "cancelling"}


def adapter_dir(services: Services, run_id: str) -> Path:
    """The trained adapter of a finished run, or an error saying why there is none."""
    row = get_run(services, run_id)
    if row["status"] != "succeeded":
        raise ConflictError(f"run {run_id} is {row['status']}; only a succeeded run has an adapter")
    return Path(row["result"]["adapter_dir"])
