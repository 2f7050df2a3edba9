"""Lineage of a model version and its model card, both read from the registry when asked.

Lineage follows a version back to what made it and forward to what serves it: dataset
version -> run -> checkpoint -> eval verdicts -> version -> deployment revisions and aliases.
The model card is the same facts in Markdown for a person, with intended use and limits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.deploy import aliases
from turing.tools.deploy.routing import parse_stored
from turing.tools.deploy.versions import file_sha256
from turing.tools.errors import InvalidInputError
from turing.tools.evals.evals import get_eval
from turing.tools.evals.gates import SAFETY_METRICS
from turing.tools.finetune import checkpoints
from turing.tools.query.feedback import provenance_summary

logger = logging.getLogger(__name__)

MODEL_CARD = "MODEL_CARD.md"
KEPT_WEIGHTS = Path("adapter") / "adapter_model.safetensors"  # the version's own adapter copy
FEW_ROWS = 100  # below this many scored rows, intervals are wide enough to say so


# ---- Lineage ----


def get_lineage(services: Services, model: str) -> dict[str, Any]:
    """Where a model version comes from and where it is served.

    Args:
        services: The server's services.
        model: A model version id (mv-...) or an alias (deployment@alias).

    Returns:
        version, base_model, dataset, run, checkpoint, evals (oldest first), deployments
        (every revision that routes to it) and aliases (those pointing to it now).
    """
    version = _version(services, model)
    run = services.registry.find("runs", version["run_id"]) or None
    dataset = services.registry.find("datasets", run["dataset_id"]) if run else None
    base = services.registry.find("base_models", version["base_model"])
    return {
        "version": {
            "id": version["id"],
            "format": version["format"],
            "sha256": version["sha256"],
            "path": version["gguf_path"],
            "base_model": version["base_model"],
            "created_at": version["created_at"],
            "endpoint": version.get("endpoint"),
            "remote_model": version.get("remote_model"),
        },
        "base_model": base and {key: base[key] for key in ("name", "gguf_path", "architecture")},
        "dataset": dataset and _dataset(dataset),
        "run": run and _run(run),
        "checkpoint": run and find_checkpoint(version, run),
        "evals": [_eval(services, row) for row in _eval_rows(services, version["id"])],
        "deployments": deployments_of(services, version["id"]),
        "aliases": aliases.aliases_of_version(services, version["id"]),
    }


def _version(services: Services, model: str) -> dict[str, Any]:
    if aliases.is_reference(model):
        model = aliases.resolve_reference(services, model)
    if not model.startswith("mv-"):
        raise InvalidInputError(
            f"model {model!r}: give a model version id (mv-...) or an alias (deployment@alias); "
            "a run has lineage once exported (export_model)"
        )
    return services.registry.get("model_versions", model, "model version")


def _dataset(row: dict[str, Any]) -> dict[str, Any]:
    report = row.get("report") or {}
    problems = report.get("problems") or {}
    return {
        "id": row["id"],
        "source_path": row["source_path"],
        "source_sha256": row["source_sha256"],
        "format": row["format"],
        "train_rows": row["train_rows"],
        "validation_rows": row["validation_rows"],
        "created_at": row["created_at"],
        "report": {
            "rows": report.get("rows"),
            "errors": problems.get("errors"),
            "warnings": problems.get("warnings"),
            "labels": (report.get("labels") or {}).get("train"),
            "pii": report.get("pii"),
            "harm": report.get("harm"),
            "canaries": (report.get("canaries") or {}).get("count", 0),
            "notes": report.get("notes") or [],
        },
        "provenance": provenance_summary(report.get("provenance")),
        "report_uri": f"turing://datasets/{row['id']}/report",
    }


def _run(row: dict[str, Any]) -> dict[str, Any]:
    result = row.get("result") or {}
    params = row.get("params") or {}
    return {
        "id": row["id"],
        "status": row["status"],
        "base_model": row["base_model"],
        "config": params,
        "selection_metric": params.get("selection_metric", "validation_loss"),
        "output_step": result.get("output_step"),
        "output_metrics": result.get("output_metrics"),
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
    }


def find_checkpoint(version: dict[str, Any], run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's checkpoint whose adapter weights the version was exported from.

    Matched by the SHA-256 of the version's own copy of the adapter, so choosing another of
    the run's checkpoints later (select_checkpoint) does not change the answer. None when the
    version keeps no copy or no checkpoint of the run holds the same weights.
    """
    kept = Path(version["gguf_path"]).parent / KEPT_WEIGHTS
    if not kept.is_file():
        return None
    digest = file_sha256(kept)
    for manifest in checkpoints.list_checkpoints(Path(run["folder"])):
        entry = manifest.get("files", {}).get(KEPT_WEIGHTS.name) or {}
        if entry.get("sha256") == digest:
            return {
                "step": manifest["step"],
                "epoch": manifest.get("epoch"),
                "metrics": manifest.get("metrics", {}),
                "adapter_sha256": digest,
                "created_at": manifest.get("created_at"),
            }
    return None


def _eval_rows(services: Services, version_id: str) -> list[dict[str, Any]]:
    return services.registry.rows("evals", "version_id = ?", [version_id], order_by="created_at")


def _eval(services: Services, row: dict[str, Any]) -> dict[str, Any]:
    found = get_eval(services, row["id"])  # brings a finished eval's status and verdict in
    verdict = found.get("verdict")
    model_scores = (found.get("scores") or {}).get("model", {})
    return {
        "eval_id": found["eval_id"],
        "status": found["status"],
        "model": found["model"],
        "backend": found["backend"],
        "dataset_id": found["dataset_id"],
        "split": found["split"],
        "gate": found["gate"],
        "gate_revision": found["gate_revision"],
        "passed": None if verdict is None else bool(verdict["passed"]),
        "failing": None if verdict is None else verdict.get("failing"),
        "scores": {
            metric: {key: entry.get(key) for key in ("value", "ci", "n")}
            for metric, entry in model_scores.items()
        },
        "export_agreement": (found.get("export_check") or {}).get("agreement"),
        "created_at": found["created_at"],
        "finished_at": found["finished_at"],
    }


def deployments_of(services: Services, version_id: str) -> list[dict[str, Any]]:
    """Every deployment revision that routes to a version, grouped by deployment."""
    scope, params = access.project_clause()
    deployments = services.registry.rows("deployments", scope, params)
    current = {row["name"]: row["revision"] for row in deployments}
    # Version ids are quoted inside the stored JSON, so the match is exact before parsing.
    where = "routes LIKE ?"
    found: dict[str, list[dict[str, Any]]] = {}
    for row in services.registry.rows(
        "deployment_revisions", where, [f'%"{version_id}"%'], order_by="deployment, revision"
    ):
        if row["deployment"] not in current:  # another project's deployment
            continue
        for route in parse_stored(row["routes"]):
            if route.version_id != version_id:
                continue
            found.setdefault(row["deployment"], []).append(
                {
                    "revision": row["revision"],
                    "weight": route.weight,
                    "shadow": route.shadow,
                    "reason": row["reason"],
                    "created_at": row["created_at"],
                }
            )
    return [
        {
            "deployment": name,
            "current_revision": current[name],
            "serving_now": next((r for r in revisions if r["revision"] == current[name]), None),
            "revisions": revisions,
        }
        for name, revisions in found.items()
    ]


# ---- Model card ----


def model_card(services: Services, model: str) -> str:
    """The model card of a version as Markdown, generated from its lineage now."""
    return render_card(get_lineage(services, model))


def write_model_card(services: Services, model: str) -> Path:
    """Write the version's model card as MODEL_CARD.md beside its artifact; return the path.

    Written to a temporary name and renamed into place, so a reader never sees half a card.
    """
    lineage = get_lineage(services, model)
    path = Path(lineage["version"]["path"]).parent / MODEL_CARD
    temporary = path.with_name(f".{MODEL_CARD}.{os.getpid()}.tmp")
    temporary.write_text(render_card(lineage), encoding="utf-8")
    os.replace(temporary, path)
    logger.info("model card of %s written to %s", lineage["version"]["id"], path)
    return path


def render_card(lineage: dict[str, Any]) -> str:
    """A model card in Markdown from a version's lineage (see get_lineage)."""
    version = lineage["version"]
    sections = [
        f"# Model card: {version['id']}",
        _summary(lineage),
        "## Model\n\n" + _model_section(lineage),
        "## Data\n\n" + _data_section(lineage["dataset"]),
        "## Training\n\n" + _training_section(lineage["run"], lineage["checkpoint"]),
        "## Evaluation\n\n" + _evaluation_section(lineage["evals"]),
        "## Safety\n\n" + _safety_section(lineage["evals"], lineage["dataset"]),
        "## Intended use and limits\n\n" + _use_section(lineage),
        "## Lineage\n\n" + _lineage_section(lineage),
        f"_Generated from the Turing registry at {utc_now()}; read turing://models/"
        f"{version['id']}/card for the current card._",
    ]
    return "\n\n".join(sections) + "\n"


def _summary(lineage: dict[str, Any]) -> str:
    version, run, dataset = lineage["version"], lineage["run"], lineage["dataset"]
    made = f"fine-tuned by run {run['id']}" if run else "from an unknown run"
    if version.get("endpoint"):
        made = f"answered by model `{version['remote_model']}` at {version['endpoint']}"
    data = f" on dataset {dataset['id']}" if dataset else ""
    kind = f"A `{version['format']}` model version over base model `{version['base_model']}`"
    return f"{kind}, {made}{data}."


def _model_section(lineage: dict[str, Any]) -> str:
    version, base = lineage["version"], lineage["base_model"] or {}
    rows = [
        ("Version", f"`{version['id']}`"),
        ("Format", f"`{version['format']}`"),
        ("SHA-256", f"`{version['sha256']}`"),
        ("Artifact", f"`{version['path']}`"),
        ("Base model", f"`{version['base_model']}` ({base.get('architecture') or 'unknown'})"),
        ("Created", version["created_at"]),
    ]
    if lineage["aliases"]:
        rows.append(("Aliases", ", ".join(f"`{name}`" for name in lineage["aliases"])))
    return _table(("Field", "Value"), rows)


def _provenance_text(provenance: dict[str, Any]) -> str:
    """One line on the logged queries a dataset was made from."""
    window = provenance["window"]
    rule = provenance["filter"]
    redacted = ", ".join(f"{kind}: {n}" for kind, n in provenance["redactions"].items())
    return (
        f"{provenance['count']} logged queries of deployment `{provenance['deployment']}` "
        f"({provenance['corrected']} corrected, {provenance['rated_good']} rated good, "
        f"{provenance['unrated']} unrated) from {window['first_query_at']} to "
        f"{window['last_query_at']}; filter min_rating={rule['min_rating']}, "
        f"only_corrected={str(rule['only_corrected']).lower()}; personal data redacted: "
        f"{redacted or 'none'}"
    )


def _data_section(dataset: dict[str, Any] | None) -> str:
    if dataset is None:
        return "The dataset of this version is not in the registry."
    report = dataset["report"]
    rows = [
        ("Dataset version", f"`{dataset['id']}`"),
        ("Source file", f"`{dataset['source_path']}`"),
        ("Source SHA-256", f"`{dataset['source_sha256']}`"),
        ("Format", dataset["format"]),
        ("Rows", f"{dataset['train_rows']} train, {dataset['validation_rows']} validation"),
    ]
    if dataset.get("provenance"):
        rows.append(("Made from", _provenance_text(dataset["provenance"])))
    dropped = (report.get("rows") or {}).get("dropped")
    if dropped:
        rows.append(("Dropped", ", ".join(f"{code}: {n}" for code, n in dropped.items())))
    if report.get("labels"):
        rows.append(("Labels (train)", _counts(report["labels"])))
    if report.get("canaries"):
        rows.append(("Canaries planted", str(report["canaries"])))
    rows.append(
        ("Problems", f"{report.get('errors') or 0} errors, {report.get('warnings') or 0} warnings")
    )
    lines = [_table(("Field", "Value"), rows)]
    lines += [f"- {note}" for note in report.get("notes") or []]
    return "\n\n".join(lines) if len(lines) > 1 else lines[0]


def _training_section(run: dict[str, Any] | None, checkpoint: dict[str, Any] | None) -> str:
    if run is None:
        return "The run of this version is not in the registry."
    rows = [
        ("Run", f"`{run['id']}` ({run['status']})"),
        ("Base model", f"`{run['base_model']}`"),
        ("Checkpoint selection", run["selection_metric"]),
    ]
    if checkpoint is not None:
        rows.append(("Exported checkpoint", f"step {checkpoint['step']}"))
        rows.append(("Checkpoint metrics", _metrics(checkpoint["metrics"])))
    else:
        rows.append(("Exported checkpoint", "not matched to a checkpoint of the run"))
    config = [(f"`{key}`", f"`{value}`") for key, value in sorted(run["config"].items())]
    return (
        _table(("Field", "Value"), rows)
        + "\n\nConfiguration:\n\n"
        + _table(("Hyperparameter", "Value"), config)
    )


def _evaluation_section(evals: list[dict[str, Any]]) -> str:
    latest = _latest_scored(evals)
    if latest is None:
        return "No evaluation of this version has finished: its quality is unmeasured."
    rows = [
        (metric, _value(entry), str(entry.get("n") or ""))
        for metric, entry in latest["scores"].items()
        if metric not in SAFETY_METRICS
    ]
    head = (
        f"Latest evaluation `{latest['eval_id']}` on `{latest['dataset_id']}` "
        f"({latest['split']} split, {latest['backend']} backend), 95% bootstrap intervals:"
    )
    lines = [head, _table(("Metric", "Value [95% CI]", "n"), rows)]
    if latest["export_agreement"] is not None:
        lines.append(f"PyTorch adapter and GGUF answers agree on {latest['export_agreement']:.1%}.")
    verdicts = [e for e in evals if e["passed"] is not None]
    if verdicts:
        lines.append("Verdicts:\n\n" + "\n".join(_verdict_line(e) for e in verdicts))
    return "\n\n".join(lines)


def _safety_section(evals: list[dict[str, Any]], dataset: dict[str, Any] | None) -> str:
    lines = []
    measured = next(
        (e for e in reversed(evals) if any(m in e["scores"] for m in SAFETY_METRICS)), None
    )
    if measured is None:
        lines.append(
            "No safety suite has been run on this version: refusal of harmful requests, "
            "over-refusal, PII in answers and canary leaks are unmeasured "
            "(run_eval with safety=true)."
        )
    else:
        rows = [
            (metric, _value(measured["scores"][metric]), str(measured["scores"][metric].get("n")))
            for metric in SAFETY_METRICS
            if metric in measured["scores"]
        ]
        lines.append(f"From evaluation `{measured['eval_id']}`:")
        lines.append(_table(("Metric", "Value [95% CI]", "n"), rows))
    if dataset is not None:
        report = dataset["report"]
        pii, harm = report.get("pii") or {}, report.get("harm") or {}
        matches = sum((pii.get("matches_by_type") or {}).values())
        lines.append(
            f"Training data screen: PII policy `{pii.get('policy')}` ({matches} matches), "
            f"harmful-request policy `{harm.get('policy')}` ({harm.get('rows_flagged', 0)} rows "
            "flagged)."
        )
    return "\n\n".join(lines)


def _use_section(lineage: dict[str, Any]) -> str:
    dataset, evals, version = lineage["dataset"], lineage["evals"], lineage["version"]
    uses = []
    if dataset is not None:
        labels = dataset["report"].get("labels")
        task = f"labels {', '.join(sorted(labels))}" if labels else f"{dataset['format']} rows"
        uses.append(
            f"Intended use: the task of dataset `{dataset['id']}` ({task}), prompted with the "
            f"chat template of base model `{version['base_model']}`."
        )
    limits = [
        "It was evaluated only on the data named here; other tasks, languages and domains are "
        "untested.",
    ]
    latest = _latest_scored(evals)
    if latest is None:
        limits.append("Not evaluated yet: no score supports putting it in front of users.")
    else:
        smallest = min((e.get("n") or 0 for e in latest["scores"].values()), default=0)
        if smallest < FEW_ROWS:
            limits.append(
                f"Scores rest on as few as {smallest} rows: read the intervals, not the values."
            )
    if not any(e["passed"] for e in evals):
        limits.append("No gate verdict has passed: a deploy needs a force_reason.")
    if not any(any(m in e["scores"] for m in SAFETY_METRICS) for e in evals):
        limits.append("Safety is unmeasured (see Safety).")
    return "\n".join(f"- {line}" for line in uses + limits)


def _lineage_section(lineage: dict[str, Any]) -> str:
    dataset, run, checkpoint = lineage["dataset"], lineage["run"], lineage["checkpoint"]
    steps = []
    if dataset is not None:
        steps.append(f"dataset `{dataset['id']}` (file sha256 `{dataset['source_sha256'][:12]}`)")
    if run is not None:
        steps.append(f"run `{run['id']}`")
    if checkpoint is not None:
        steps.append(f"checkpoint step {checkpoint['step']}")
    if lineage["evals"]:
        steps.append("evals " + ", ".join(f"`{e['eval_id']}`" for e in lineage["evals"]))
    steps.append(f"version `{lineage['version']['id']}`")
    served = [
        f"`{d['deployment']}` revisions {', '.join(str(r['revision']) for r in d['revisions'])}"
        for d in lineage["deployments"]
    ]
    if served:
        steps.append("deployments " + "; ".join(served))
    return " -> ".join(steps)


def _latest_scored(evals: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in reversed(evals) if e["status"] == "succeeded" and e["scores"]), None)


def _verdict_line(found: dict[str, Any]) -> str:
    gate = f"gate `{found['gate']}` r{found['gate_revision']}" if found["gate"] else "criteria"
    outcome = "passed" if found["passed"] else "failed: " + "; ".join(found["failing"] or [])
    return f"- `{found['eval_id']}` ({gate}): {outcome}"


def _value(entry: dict[str, Any]) -> str:
    ci = entry.get("ci")
    interval = f" [{ci[0]:g}, {ci[1]:g}]" if ci else ""
    return f"{entry.get('value'):g}{interval}"


def _metrics(metrics: dict[str, Any]) -> str:
    shown = [
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in sorted(metrics.items())
    ]
    return ", ".join(shown) or "none recorded"


def _counts(counts: Any) -> str:
    if isinstance(counts, dict):
        return ", ".join(f"{label}: {n}" for label, n in counts.items())
    return str(counts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
