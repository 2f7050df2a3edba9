"""Numbered schema migrations of the registry; each runs once, in order, in a transaction."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def _initial_schema(db: sqlite_utils.Database) -> None:
    db.table("base_models").create(
        {"name": str, "gguf_path": str, "architecture": str, "source": str, "created_at": str},
        pk="name",
    )
    db.table("datasets").create(
        {
            "id": str,
            "source_path": str,
            "source_sha256": str,
            "format": str,
            "options": str,
            "train_rows": int,
            "validation_rows": int,
            "folder": str,
            "report": str,
            "created_at": str,
        },
        pk="id",
    )
    db.table("runs").create(
        {
            "id": str,
            "dataset_id": str,
            "base_model": str,
            "params": str,
            "status": str,
            "pid": int,
            "folder": str,
            "error": str,
            "result": str,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("dataset_id", "datasets", "id"), ("base_model", "base_models", "name")],
    )
    db.table("evals").create(
        {
            "id": str,
            "model": str,
            "model_kind": str,
            "backend": str,
            "dataset_id": str,
            "split": str,
            "status": str,
            "pid": int,
            "folder": str,
            "error": str,
            "result": str,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db.table("model_versions").create(
        {
            "id": str,
            "run_id": str,
            "base_model": str,
            "format": str,
            "gguf_path": str,
            "sha256": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("base_model", "base_models", "name")],
    )
    db.table("deployments").create({"name": str, "revision": int, "created_at": str}, pk="name")
    db.table("deployment_revisions").create(
        {"deployment": str, "revision": int, "routes": str, "reason": str, "created_at": str},
        pk=("deployment", "revision"),
        foreign_keys=[("deployment", "deployments", "name")],
    )
    db.table("queries").create(
        {
            "id": int,
            "deployment": str,
            "revision": int,
            "version_id": str,
            "latency_ms": float,
            "time_to_first_token_ms": float,
            "prompt_tokens": int,
            "completion_tokens": int,
            "error": str,
            "created_at": str,
        },
        pk="id",
    )
    db.table("queries").create_index(["deployment", "created_at"])


def _dataset_lineage(db: sqlite_utils.Database) -> None:
    datasets = db.table("datasets")
    datasets.add_column("base_model", str)
    datasets.add_column("tokenizer_fingerprint", str)
    datasets.add_column("max_seq_len", int)


def _run_queue(db: sqlite_utils.Database) -> None:
    runs = db.table("runs")
    runs.add_column("queued_at", str)
    runs.add_column("started_at", str)
    runs.add_column("attempts", int)
    db.execute("UPDATE runs SET queued_at = created_at, started_at = created_at, attempts = 1")
    runs.create_index(["status", "queued_at"])


def _gates_and_audit(db: sqlite_utils.Database) -> None:
    evals = db.table("evals")
    evals.add_column("request", str)  # the evaluation asked for: metrics, suites, criteria
    evals.add_column("version_id", str)  # the model version scored, when one was
    evals.add_column("gate", str)  # the deployment whose gate this eval judges
    evals.add_column("gate_revision", int)
    evals.add_column("passed", int)  # the verdict: 1 passed, 0 failed, NULL none
    evals.create_index(["version_id", "gate"])
    db.table("gates").create(
        {"deployment": str, "revision": int, "spec": str, "reason": str, "created_at": str},
        pk=("deployment", "revision"),
    )
    db.table("audit").create(
        {
            "id": int,
            "time": str,
            "action": str,
            "subject": str,
            "reason": str,
            "details": str,
        },
        pk="id",
    )
    db.table("audit").create_index(["subject", "time"])


def _shadow_traffic(db: sqlite_utils.Database) -> None:
    queries = db.table("queries")
    queries.add_column("shadow", int, not_null_default=0)  # 1: mirrored, answered nobody
    queries.add_column("routing_key", str)  # a sha256 prefix of the caller's sticky key


def _query_telemetry(db: sqlite_utils.Database) -> None:
    queries = db.table("queries")
    queries.add_column("error_type", str)  # the error's class, e.g. BusyError
    queries.add_column("transport", str)  # "mcp" or "http"
    queries.add_column("cost", float)  # tokens in and out at the deployment's price then
    queries.add_column("replaced_cost", float)  # the same tokens at the replaced model's price
    queries.add_column("pii", str)  # comma-separated kinds of PII the answer added; NULL: none
    queries.create_index(["version_id", "created_at"])
    db.table("pricing").create(
        {
            "deployment": str,
            "price_per_1k_tokens": float,
            "replaced_model": str,
            "replaced_price_per_1k_tokens": float,
            "updated_at": str,
        },
        pk="deployment",
    )


def _model_aliases(db: sqlite_utils.Database) -> None:
    # champion and challenger follow a deployment's routes and are never stored; these are the
    # aliases people set, and every move of one (set or delete) as an immutable history row.
    db.table("aliases").create(
        {
            "deployment": str,
            "alias": str,
            "version_id": str,
            "reason": str,
            "actor": str,
            "updated_at": str,
        },
        pk=("deployment", "alias"),
        foreign_keys=[
            ("deployment", "deployments", "name"),
            ("version_id", "model_versions", "id"),
        ],
    )
    db.table("alias_history").create(
        {
            "id": int,
            "deployment": str,
            "alias": str,
            "action": str,
            "version_id": str,
            "previous_version_id": str,
            "reason": str,
            "actor": str,
            "time": str,
        },
        pk="id",
    )
    db.table("alias_history").create_index(["deployment", "alias", "id"])


def _remote_versions(db: sqlite_utils.Database) -> None:
    versions = db.table("model_versions")
    versions.add_column("endpoint", str)  # base URL of an OpenAI-compatible server, e.g. .../v1
    versions.add_column("remote_model", str)  # the model name that server knows
    versions.add_column("api_key_env", str)  # the environment variable holding its API key


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial schema", _initial_schema),
    (2, "dataset lineage: base model, tokenizer fingerprint, max_seq_len", _dataset_lineage),
    (3, "run queue: queued_at, started_at, attempts", _run_queue),
    (4, "evaluation gates, verdicts and the audit trail", _gates_and_audit),
    (5, "shadow traffic and sticky routing keys on queries", _shadow_traffic),
    (6, "query telemetry (cost, PII, transport, error type) and pricing", _query_telemetry),
    (7, "model version aliases and their history", _model_aliases),
    (8, "remote model versions served by OpenAI-compatible servers", _remote_versions),
]
