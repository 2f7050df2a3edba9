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


def _access_tokens(db: sqlite_utils.Database) -> None:
    # Bearer tokens of the HTTP transport; only a SHA-256 of each secret is kept.
    db.table("tokens").create(
        {
            "id": str,
            "name": str,
            "role": str,  # viewer, operator or admin
            "project": str,  # the project the token acts in; "*" for every project
            "secret_sha256": str,
            "created_at": str,
            "created_by": str,
            "revoked_at": str,
            "last_used_at": str,
        },
        pk="id",
    )
    db.table("tokens").create_index(["secret_sha256"], unique=True)


def _projects_and_environments(db: sqlite_utils.Database) -> None:
    for table in ("datasets", "runs", "model_versions", "deployments"):
        db.table(table).add_column("project", str, not_null_default="default")
        db.table(table).add_column("environment", str, not_null_default="dev")
    audit = db.table("audit")
    audit.add_column("actor", str)  # "local" on stdio, else the token's name and id
    audit.add_column("project", str)
    audit.add_column("tool", str)  # the MCP tool called, for audited tool calls
    audit.add_column("arguments", str)  # JSON, secrets masked
    audit.add_column("result", str)  # "ok" or the error's message
    audit.create_index(["project", "time"])


def _slos_and_incidents(db: sqlite_utils.Database) -> None:
    db.table("slos").create(
        {
            "deployment": str,
            "max_error_rate": float,
            "max_p95_latency_ms": float,
            "max_safety_flag_rate": float,
            "window_s": int,
            "min_requests": int,
            "auto_rollback": int,
            "updated_at": str,
            "updated_by": str,
        },
        pk="deployment",
        foreign_keys=[("deployment", "deployments", "name")],
    )
    db.table("incidents").create(
        {
            "id": int,
            "time": str,
            "deployment": str,
            "version_id": str,
            "kind": str,  # slo_breach, auto_rollback, kill_switch, kill_lifted
            "trigger": str,  # what started it: an SLO and its measured value, or a caller
            "details": str,  # JSON
            "actor": str,
        },
        pk="id",
    )
    db.table("incidents").create_index(["deployment", "time"])
    db.table("killed_versions").create(
        {"version_id": str, "reason": str, "actor": str, "killed_at": str},
        pk="version_id",
    )


def _query_log(db: sqlite_utils.Database) -> None:
    # Opt-in per deployment: the text of answered queries, PII-redacted before it is stored.
    db.table("query_logging").create(
        {"deployment": str, "enabled": int, "updated_at": str, "updated_by": str},
        pk="deployment",
    )
    db.table("query_log").create(
        {
            "row_id": int,  # the query's row in queries, numbered when the telemetry writes it
            "id": str,  # the id the caller got with the answer (the OpenAI API's "id")
            "deployment": str,
            "version_id": str,
            "messages": str,  # JSON, redacted
            "answer": str,  # redacted
            "redactions": str,  # comma-separated kinds of PII removed; NULL: none
            "rating": int,  # feedback: 1 good, -1 bad, NULL none
            "correction": str,  # a better answer given as feedback, redacted
            "feedback_at": str,
            "feedback_by": str,  # the actor who rated or corrected it
            "created_at": str,
        },
        pk="row_id",
    )
    db.table("query_log").create_index(["id"], unique=True)
    db.table("query_log").create_index(["deployment", "created_at"])


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial schema", _initial_schema),
    (2, "dataset lineage: base model, tokenizer fingerprint, max_seq_len", _dataset_lineage),
    (3, "run queue: queued_at, started_at, attempts", _run_queue),
    (4, "evaluation gates, verdicts and the audit trail", _gates_and_audit),
    (5, "shadow traffic and sticky routing keys on queries", _shadow_traffic),
    (6, "query telemetry (cost, PII, transport, error type) and pricing", _query_telemetry),
    (7, "model version aliases and their history", _model_aliases),
    (8, "remote model versions served by OpenAI-compatible servers", _remote_versions),
    (9, "bearer tokens of the HTTP transport", _access_tokens),
    (10, "projects, environments and audited tool calls", _projects_and_environments),
    (11, "SLOs, incidents and the kill switch", _slos_and_incidents),
    (12, "opt-in query log for the feedback loop", _query_log),
]
