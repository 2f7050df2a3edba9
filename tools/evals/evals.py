"""Evaluation jobs: score a model (base, run, version or deployment) beside the base model and
the deployment's champion, in a worker process, and keep the verdict of a gate."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import anyio

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.datasets.jsonl import write_jsonl
from turing.tools.deploy import aliases
from turing.tools.deploy.versions import (
    ModelTarget,
    champion_version,
    export_run,
    find_version,
    resolve_model,
    version_target,
)
from turing.tools.errors import ConflictError, InvalidInputError
from turing.tools.evals import gating
from turing.tools.evals.spec import DEFAULT_EXPORT_TOLERANCE, EvalSpec, parse_spec, resolve
from turing.tools.finetune.runs import MAX_WAIT_SECONDS, WAIT_POLL_SECONDS, Report

logger = logging.getLogger(__name__)

WORKER = "turing.tools.evals.worker"
BACKENDS = ("auto", "torch", "llama_cpp", "both")
STATUSES = ("running", "cancelling", "succeeded", "failed", "cancelled")


def start_eval(
    services: Services,
    model: str,
    spec_args: dict[str, Any],
    *,
    compare_base: bool = True,
    champion: str | None = None,
    backend: str = "auto",
    gate: str | None = None,
) -> dict[str, Any]:
    """Start scoring a model in a worker process; returns the eval at once.

    Args:
        services: The server's services.
        model: A run id, model version id, deployment name or base model name.
        spec_args: The `EvalSpec` fields given (None for a default). With a gate they must be
            left out: the gate's spec is used.
        compare_base: Also score the base model on the same rows and prompts.
        champion: A deployment whose current main version is scored beside the model.
        backend: "auto", "torch", "llama_cpp", or "both" (llama.cpp, plus the PyTorch adapter
            to check the export).
        gate: Judge the model by this deployment's gate: its spec, its champion, through
            llama.cpp; a run is exported to a model version first.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    gate_row = None
    if gate is not None:
        gate_row, spec = _gate_request(services, gate, spec_args, champion, backend)
        champion = gate
        target = _served_target(services, model)
        backend = "both" if spec.export_tolerance is not None else "llama_cpp"
    else:
        spec = parse_spec(spec_args)
        target = resolve_model(services, model)
        backend = _choose_backend(target, backend, spec)
    if target.endpoint:
        raise InvalidInputError(
            f"{target.version_id or model} answers from {target.endpoint}: evaluate the model "
            "on that server; a deployment's gate can be passed over for it with force_reason"
        )
    prepared = resolve(services, spec, _training_dataset(services, target))

    champion_id = champion_version(services, champion) if champion else None
    if champion and champion_id is None and gate is None:
        raise InvalidInputError(f"champion {champion!r} is not a deployment; list_deployments")
    candidates = _candidates(services, target, backend, compare_base, champion_id)

    eval_id = "ev-" + uuid.uuid4().hex[:10]
    folder = services.workspace.folder("evals", eval_id)
    write_jsonl(prepared["rows"], folder / "rows.jsonl")
    rows = len(prepared["rows"])
    job = {
        "candidates": candidates,
        "rows_path": str(folder / "rows.jsonl"),
        "scorer": prepared["scorer"],
        "safety": prepared["safety"],
        "perplexity": spec.perplexity,
        "criteria": spec.criteria,
        "champion_version": champion_id,
        "export_tolerance": spec.export_tolerance
        if spec.export_tolerance is not None
        else DEFAULT_EXPORT_TOLERANCE,
        "max_new_tokens": _answer_budget(prepared["rows"]),
    }
    request = {
        **spec.to_dict(),
        "metrics": prepared["scorer"]["metrics"],
        "compare_base": compare_base,
        "champion": champion,
        "champion_version": champion_id,
        "candidates": [candidate["role"] for candidate in candidates],
    }
    pid = services.jobs.start(WORKER, folder, job)
    services.registry.insert(
        "evals",
        {
            "id": eval_id,
            "model": model,
            "model_kind": target.kind,
            "backend": backend,
            "dataset_id": spec.dataset_id,
            "split": spec.split,
            "status": "running",
            "pid": pid,
            "folder": str(folder),
            "created_at": utc_now(),
            "request": request,
            "version_id": target.version_id,
            "gate": gate,
            "gate_revision": gate_row["revision"] if gate_row else None,
        },
    )
    logger.info(
        "eval %s of %s (%s) on %s/%s: %d rows, candidates %s%s",
        eval_id,
        model,
        backend,
        spec.dataset_id,
        spec.split,
        rows,
        request["candidates"],
        f", gate {gate} r{gate_row['revision']}" if gate_row else "",
    )
    return get_eval(services, eval_id)


def _gate_request(
    services: Services,
    gate: str,
    spec_args: dict[str, Any],
    champion: str | None,
    backend: str,
) -> tuple[dict[str, Any], EvalSpec]:
    gate_row = gating.current_gate(services, gate)
    if gate_row is None:
        raise InvalidInputError(f"deployment {gate!r} has no gate; declare one with set_gate")
    overridden = sorted(key for key, value in spec_args.items() if value is not None)
    if champion is not None:
        overridden.append("champion")
    if backend not in ("auto", "llama_cpp"):
        overridden.append("backend")
    if overridden:
        raise InvalidInputError(
            f"with gate={gate!r} the gate decides what is measured; leave out {overridden} "
            "(or change the gate with set_gate)"
        )
    return gate_row, gating.gate_spec(gate_row)


def _served_target(services: Services, model: str) -> ModelTarget:
    """What a gate judges: the model version that would be deployed (a run is exported)."""
    if model.startswith("run-"):
        return version_target(services, export_run(services, model)["id"])
    if model.startswith("mv-") or aliases.is_reference(model):
        return version_target(services, find_version(services, model)["id"])
    raise InvalidInputError(
        f"model {model!r}: a gate judges a run (exported now), a model version (mv-...) or "
        "an alias (deployment@alias)"
    )


def _training_dataset(services: Services, target: ModelTarget) -> str | None:
    """The dataset the model was fine-tuned on (None for a base model)."""
    run_id = target.name if target.kind == "run" else None
    if target.version_id:
        run_id = services.registry.get("model_versions", target.version_id)["run_id"]
    run = services.registry.find("runs", run_id) if run_id else None
    return run["dataset_id"] if run else None


def _choose_backend(target: ModelTarget, backend: str, spec: EvalSpec) -> str:
    if backend == "auto":
        backend = "torch" if target.kind == "run" else "llama_cpp"
        if spec.export_tolerance is not None and target.kind != "base":
            backend = "both"
    if backend in ("torch", "both") and target.kind != "base" and not target.adapter_dir:
        raise InvalidInputError(f"{target.name} has no PyTorch adapter; use backend='llama_cpp'")
    if backend in ("llama_cpp", "both") and target.kind == "run":
        raise InvalidInputError(
            f"run {target.name} has no GGUF yet: export_model or deploy it, then evaluate the "
            "model version (or use backend='torch')"
        )
    if backend == "both" and target.kind == "base":
        raise InvalidInputError("backend 'both' checks an adapter's export; a base model has none")
    return backend


def _candidates(
    services: Services,
    target: ModelTarget,
    backend: str,
    compare_base: bool,
    champion_id: str | None,
) -> list[dict[str, Any]]:
    main_backend = "torch" if backend == "torch" else "llama_cpp"

    def spec(role: str, model: ModelTarget, chosen: str) -> dict[str, Any]:
        adapter = model.adapter_dir if chosen == "torch" else model.adapter_gguf
        return {
            "role": role,
            "name": model.version_id or model.name,
            "backend": chosen,
            "base_gguf": model.base_gguf,
            "adapter": adapter if model.kind != "base" else None,
        }

    found = [spec("model", target, main_backend)]
    if compare_base and target.kind != "base":
        base = resolve_model(services, target.base_model)
        found.append(spec("base", base, main_backend))
    if champion_id is not None:
        champion = version_target(services, champion_id)
        if champion.endpoint:
            raise InvalidInputError(
                f"the champion {champion_id} answers from {champion.endpoint} and cannot be "
                "scored here; compare without champion, or against a local version"
            )
        if main_backend == "torch" and not champion.adapter_dir:
            raise InvalidInputError(f"champion {champion_id} has no PyTorch adapter to compare")
        found.append(spec("champion", champion, main_backend))
    if backend == "both":
        found.append(spec("model_torch", target, "torch"))
    return found


def _answer_budget(rows: list[dict[str, Any]]) -> int:
    # References are short labels or answers; room for twice their length in characters is
    # more than enough tokens and keeps a rambling model from running for hundreds of tokens.
    longest = max(len(row["messages"][-1]["content"]) for row in rows)
    return min(512, max(16, longest // 2 + 16))


# ---- Reading ----


def get_eval(services: Services, eval_id: str) -> dict[str, Any]:
    """Status, progress, scores, comparisons and verdict of an evaluation."""
    row = jobs.refresh(services, "evals", services.registry.get("evals", eval_id, "eval"))
    _record_verdict(services, row)
    progress = jobs.last_event(Path(row["folder"]), "progress")
    result = row["result"] or {}
    described = {
        "eval_id": row["id"],
        "status": row["status"],
        "model": row["model"],
        "model_kind": row["model_kind"],
        "version_id": row.get("version_id"),
        "backend": row["backend"],
        "dataset_id": row["dataset_id"],
        "split": row["split"],
        "gate": row.get("gate"),
        "gate_revision": row.get("gate_revision"),
        "request": row.get("request"),
        "progress": progress,
        "error": row["error"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "predictions_uri": f"turing://evals/{row['id']}/predictions",
        "report_uri": f"turing://evals/{row['id']}/report",
    }
    for key in ("verdict", "scores", "comparisons", "export_check", "empty_answers", "rows"):
        if key in result:
            described[key] = result[key]
    if "safety" in (row.get("request") or {}) and row["request"].get("safety"):
        described["safety_uri"] = f"turing://evals/{row['id']}/safety"
    return described


def _record_verdict(services: Services, row: dict[str, Any]) -> None:
    """Copy a finished eval's verdict into its row, once, so deploys can look it up."""
    verdict = (row.get("result") or {}).get("verdict")
    if verdict is None or row.get("passed") is not None:
        return
    services.registry.update("evals", row["id"], {"passed": int(bool(verdict["passed"]))})
    row["passed"] = int(bool(verdict["passed"]))
    logger.info(
        "eval %s verdict: %s%s",
        row["id"],
        "passed" if verdict["passed"] else "failed",
        "" if verdict["passed"] else f" ({'; '.join(verdict['failing'])})",
    )


def list_evals(
    services: Services,
    status: str | None = None,
    model: str | None = None,
    gate: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Evaluations, newest first, with their headline numbers."""
    if status is not None and status not in STATUSES:
        raise InvalidInputError(f"status {status!r} is not one of: {', '.join(STATUSES)}")
    if not 1 <= limit <= 1000:
        raise InvalidInputError(f"limit={limit}: must be from 1 to 1000")
    jobs.refresh_active(services)
    clauses, params = [], []
    if status:
        clauses.append("status = ?")
        params.append(status)
    if model:
        clauses.append("(model = ? OR version_id = ?)")
        params += [model, model]
    if gate:
        clauses.append("gate = ?")
        params.append(gate)
    # An evaluation belongs to the project of the dataset it scores.
    scope, scope_params = access.project_clause(
        "dataset_id IN (SELECT id FROM datasets WHERE project = ?)"
    )
    if scope:
        clauses.append(scope)
        params += scope_params
    rows = services.registry.rows(
        "evals", " AND ".join(clauses) or None, params or None, order_by="created_at desc"
    )[:limit]
    listed = []
    for row in rows:
        result = row["result"] or {}
        verdict = result.get("verdict")
        model_scores = (result.get("scores") or {}).get("model", {})
        listed.append(
            {
                "eval_id": row["id"],
                "status": row["status"],
                "model": row["model"],
                "version_id": row.get("version_id"),
                "dataset_id": row["dataset_id"],
                "gate": row.get("gate"),
                "passed": None if verdict is None else verdict["passed"],
                "scores": {metric: entry["value"] for metric, entry in model_scores.items()},
                "created_at": row["created_at"],
            }
        )
    return listed


async def wait_for_eval(
    services: Services, eval_id: str, timeout_seconds: float, report: Report
) -> dict[str, Any]:
    """Wait until the eval ends or the timeout passes, reporting progress; describe it."""
    if not 0 <= timeout_seconds <= MAX_WAIT_SECONDS:
        raise InvalidInputError(
            f"timeout_seconds={timeout_seconds}: must be from 0 to {MAX_WAIT_SECONDS:.0f}"
        )
    deadline = anyio.current_time() + timeout_seconds
    reported = -1
    while True:
        found = await anyio.to_thread.run_sync(get_eval, services, eval_id)
        progress = found["progress"]
        if progress is not None and progress["done"] > reported:
            message = (
                f"{progress['phase']}: {progress['candidate_done']}/{progress['candidate_total']} "
                f"answers ({progress['done']}/{progress['total']} in all)"
            )
            await report(progress["done"], progress["total"], message)
            reported = progress["done"]
        left = deadline - anyio.current_time()
        if found["status"] in jobs.ENDED or left <= 0:
            return found
        await anyio.sleep(min(WAIT_POLL_SECONDS, left))


def cancel_eval(services: Services, eval_id: str) -> dict[str, Any]:
    """Ask a running evaluation to stop; it ends cancelled and keeps no scores."""
    row = jobs.refresh(services, "evals", services.registry.get("evals", eval_id, "eval"))
    if row["status"] not in jobs.ACTIVE:
        raise ConflictError(
            f"eval {eval_id} is already {row['status']}; only a running eval can be cancelled"
        )
    jobs.transition(services, "evals", eval_id, ("running",), {"status": "cancelling"})
    pid = services.registry.get("evals", eval_id)["pid"]
    services.jobs.stop(pid, Path(row["folder"]))
    logger.info("eval %s asked to stop", eval_id)
    return {"eval_id": eval_id, "status": "cancelling"}
