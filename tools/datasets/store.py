"""Dataset versions in the workspace: content-addressed, immutable, with their report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from turing.server import access
from turing.server.jobs import write_json_atomic
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.base_models import DEFAULT_BASE_MODEL, get_base_model
from turing.tools.datasets.jsonl import read_jsonl, write_jsonl
from turing.tools.datasets.options import PrepareOptions, content_options, parse_options
from turing.tools.datasets.prepare import PreparedDataset, prepare_dataset
from turing.tools.datasets.tokens import TokenCounter, load_token_counter
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.evals.safety import Canary
from turing.tools.query.feedback import provenance_summary

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "all")
CANARIES_FILE = "canaries.json"
# Tools run in worker threads; one writer at a time keeps a content-addressed id stored once.
_STORE_LOCK = threading.Lock()


def check_input_file(path: str, what: str) -> Path:
    """An absolute path to an existing regular file, or an error saying what is wrong with it."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        raise InvalidInputError(f"{what} {path!r} is not an absolute path; pass the full path")
    if not candidate.exists():
        raise InvalidInputError(f"{what} {path!r} does not exist")
    if not candidate.is_file():
        raise InvalidInputError(f"{what} {path!r} is not a regular file")
    return candidate.resolve()


def create_dataset(
    services: Services,
    path: str,
    base_model: str = DEFAULT_BASE_MODEL,
    provenance: dict[str, Any] | None = None,
    **raw: Any,
) -> dict[str, Any]:
    """Prepare a file into a stored dataset version; the same file and options give the same id.

    The id hashes the file's bytes, every option (defaults included, but canary options only
    when set) and the fingerprint of the base model's tokenizer and chat template, so a second
    identical call returns the stored version without reading the file again. `provenance`
    says where a file made by Turing came from (e.g. logged queries); it goes in the report.
    """
    options = parse_options(raw)
    source = check_input_file(path, "dataset file")
    model = get_base_model(services, base_model)
    counter = load_token_counter(
        Path(model["gguf_path"]), services.workspace.cache_folder("tokenizers")
    )
    data = source.read_bytes()
    project = access.owner_project()
    dataset_id = _content_id(
        hashlib.sha256(data).hexdigest(), options, base_model, counter, project
    )

    existing = services.registry.find("datasets", dataset_id)
    if existing is not None:
        logger.info("dataset %s already stored; returning it", dataset_id)
        return describe_dataset(existing)

    prepared = _prepare(source, data, options, counter)
    if provenance is not None:
        prepared.report["provenance"] = provenance
    with _STORE_LOCK:
        existing = services.registry.find("datasets", dataset_id)
        if existing is not None:
            return describe_dataset(existing)
        return _store(services, dataset_id, source, prepared, options, base_model, counter, project)


def _prepare(
    source: Path, data: bytes, options: PrepareOptions, counter: TokenCounter
) -> PreparedDataset:
    try:
        return prepare_dataset(source, options, counter, data)
    except TuringError:
        raise
    except Exception as exc:  # the tool's boundary: a defect must still reach the caller whole
        logger.exception("preparing %s failed", source)
        raise TuringError(
            f"{source}: preparation failed unexpectedly ({type(exc).__name__}: {exc}); "
            "nothing was stored"
        ) from exc


def _store(
    services: Services,
    dataset_id: str,
    source: Path,
    prepared: PreparedDataset,
    options: PrepareOptions,
    base_model: str,
    counter: TokenCounter,
    project: str,
) -> dict[str, Any]:
    prepared.report["lineage"] = {
        "dataset_id": dataset_id,
        "source_sha256": prepared.source_sha256,
        "base_model": base_model,
        "tokenizer_fingerprint": counter.fingerprint,
    }
    folder = _write_files(services, dataset_id, prepared)
    row = {
        "id": dataset_id,
        "source_path": str(source),
        "source_sha256": prepared.source_sha256,
        "format": prepared.report["source"]["format"],
        "options": asdict(options),
        "train_rows": len(prepared.train),
        "validation_rows": len(prepared.validation),
        "folder": str(folder),
        "report": prepared.report,
        "base_model": base_model,
        "tokenizer_fingerprint": counter.fingerprint,
        "max_seq_len": options.max_seq_len,
        "created_at": utc_now(),
        "project": project,
    }
    services.registry.insert("datasets", row)
    logger.info(
        "stored dataset %s: %d train, %d validation rows",
        dataset_id,
        row["train_rows"],
        row["validation_rows"],
    )
    return describe_dataset(row)


def describe_dataset(row: dict[str, Any]) -> dict[str, Any]:
    """What a caller wants to know about a dataset version, without the full report."""
    report = row.get("report") or {}
    return {
        "dataset_id": row["id"],
        "source_path": row["source_path"],
        "format": row["format"],
        "train_rows": row["train_rows"],
        "validation_rows": row["validation_rows"],
        "base_model": row.get("base_model"),
        "max_seq_len": row.get("max_seq_len"),
        "labels": (report.get("labels") or {}).get("train"),
        "canaries": (report.get("canaries") or {}).get("count", 0),
        "dropped": (report.get("rows") or {}).get("dropped"),
        "problems": {
            code: group["count"]
            for code, group in ((report.get("problems") or {}).get("by_code") or {}).items()
        },
        "report_uri": f"turing://datasets/{row['id']}/report",
        "problems_uri": f"turing://datasets/{row['id']}/problems",
        **_provenance(report),
    }


def _provenance(report: dict[str, Any]) -> dict[str, Any]:
    """{"provenance": ...} of a dataset made from logged queries (its ids cut short), else {}."""
    found = provenance_summary(report.get("provenance"))
    return {"provenance": found} if found else {}


def load_split(services: Services, dataset_id: str, split: str) -> list[dict[str, Any]]:
    """The rows of one split of a stored dataset: train, validation, or all of them."""
    if split not in SPLITS:
        raise InvalidInputError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
    names = ["train", "validation"] if split == "all" else [split]
    return [row for name in names for row in read_jsonl(folder / f"{name}.jsonl")]


def load_canaries(services: Services, dataset_id: str) -> list[Canary]:
    """The canaries planted in a stored dataset's train split; none unless it was asked for."""
    folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
    path = folder / CANARIES_FILE
    if not path.exists():
        return []
    return [Canary.from_dict(item) for item in json.loads(path.read_text(encoding="utf-8"))]


def split_path(services: Services, dataset_id: str, split: str) -> Path:
    """The JSONL file of one stored split (train or validation)."""
    folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
    return folder / f"{split}.jsonl"


def _content_id(
    source_sha256: str,
    options: PrepareOptions,
    base_model: str,
    counter: TokenCounter,
    project: str = access.DEFAULT_PROJECT,
) -> str:
    content: dict[str, Any] = {
        "source": source_sha256,
        "options": content_options(options),
        "base_model": base_model,
        "tokenizer": counter.fingerprint,
    }
    if project != access.DEFAULT_PROJECT:  # each project its own versions; default ids unchanged
        content["project"] = project
    canonical = json.dumps(content, sort_keys=True)
    return "ds-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _write_files(services: Services, dataset_id: str, prepared: PreparedDataset) -> Path:
    # Written under a temporary name and renamed, so a crash never leaves a partial version;
    # the files are then made read-only, as a version never changes.
    final = services.workspace.folder("datasets") / dataset_id
    staging = final.with_name(f".{dataset_id}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_jsonl(prepared.train, staging / "train.jsonl")
    write_jsonl(prepared.validation, staging / "validation.jsonl")
    write_jsonl((problem.to_dict() for problem in prepared.problems), staging / "problems.jsonl")
    write_json_atomic(staging / "report.json", prepared.report)
    if prepared.canaries:
        canaries = [canary.to_dict() for canary in prepared.canaries]
        write_json_atomic(staging / CANARIES_FILE, canaries)
    for written in staging.iterdir():
        written.chmod(0o444)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return final
