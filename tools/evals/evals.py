"""Evaluations: score a model (base, run, version or deployment) on a dataset split."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.datasets.jsonl import write_jsonl
from turing.tools.datasets.store import load_split
from turing.tools.deploy.versions import ModelTarget, resolve_model
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

WORKER = "turing.tools.evals.worker"
BACKENDS = ("auto", "torch", "llama_cpp")


def start_eval(
    services: Services,
    model: str,
    dataset_id: str,
    split: str = "validation",
    limit: int | None = None,
    compare_base: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """Start scoring a model on a split in a worker process; returns the eval id at once."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit={limit}: must be a positive number of rows, or omitted")
    target = resolve_model(services, model)
    backend = _choose_backend(target, backend)
    rows = load_split(services, dataset_id, split)[:limit]
    if not rows:
        raise InvalidInputError(f"split {split!r} of dataset {dataset_id} has no rows to score")

    eval_id = "ev-" + uuid.uuid4().hex[:10]
    folder = services.workspace.folder("evals", eval_id)
    write_jsonl(rows, folder / "rows.jsonl")
    job = {
        "backend": backend,
        "base_gguf": target.base_gguf,
        "adapter": target.adapter_dir if backend == "torch" else target.adapter_gguf,
        "rows_path": str(folder / "rows.jsonl"),
        "compare_base": compare_base and target.kind != "base",
    }
    pid = services.jobs.start(WORKER, folder, job)
    services.registry.insert(
        "evals",
        {
            "id": eval_id,
            "model": model,
            "model_kind": target.kind,
            "backend": backend,
            "dataset_id": dataset_id,
            "split": split,
            "status": "running",
            "pid": pid,
            "folder": str(folder),
            "created_at": utc_now(),
        },
    )
    logger.info(
        "eval %s of %s (%s) on %s/%s: %d rows",
        eval_id,
        model,
        backend,
        dataset_id,
        split,
        len(rows),
    )
    return get_eval(services, eval_id)


def get_eval(services: Services, eval_id: str) -> dict[str, Any]:
    """Status, progress and scores of an evaluation."""
    row = jobs.refresh(services, "evals", services.registry.get("evals", eval_id, "eval"))
    events = jobs.read_events(Path(row["folder"]))
    return {
        "eval_id": row["id"],
        "status": row["status"],
        "model": row["model"],
        "model_kind": row["model_kind"],
        "backend": row["backend"],
        "dataset_id": row["dataset_id"],
        "split": row["split"],
        "progress": events[-1] if events else None,
        "result": row["result"],
        "error": row["error"],
        "predictions_uri": f"turing://evals/{row['id']}/predictions",
    }


def _choose_backend(target: ModelTarget, backend: str) -> str:
    if backend == "auto":
        return "torch" if target.kind == "run" else "llama_cpp"
    if backend == "torch" and target.kind != "base" and not target.adapter_dir:
        raise InvalidInputError(f"{target.name} has no PyTorch adapter; use backend='llama_cpp'")
    if backend == "llama_cpp" and target.kind == "run":
        raise InvalidInputError(
            f"run {target.name} has no GGUF yet: deploy it, then evaluate the model version "
            "(or use backend='torch')"
        )
    return backend
