"""Dataset versions in the workspace: content-addressed, immutable, with their report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from turing.server.jobs import write_json_atomic
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.datasets.prepare import (
    PreparedDataset,
    prepare_dataset,
    read_jsonl,
    write_jsonl,
)
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "all")
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


def create_dataset(services: Services, path: str, **options: Any) -> dict[str, Any]:
    """Prepare a file into a stored dataset version; the same file and options give the same id."""
    source = check_input_file(path, "dataset file")
    prepared = prepare_dataset(source, **options)
    with _STORE_LOCK:
        return _store(services, source, prepared, options)


def _store(
    services: Services, source: Path, prepared: PreparedDataset, options: dict[str, Any]
) -> dict[str, Any]:

    dataset_id = "ds-" + _content_id(prepared.source_sha256, options)
    existing = services.registry.find("datasets", dataset_id)
    if existing is not None:
        logger.info("dataset %s already stored; returning it", dataset_id)
        return describe_dataset(existing)

    folder = _write_files(
        services, dataset_id, prepared.train, prepared.validation, prepared.report
    )
    row = {
        "id": dataset_id,
        "source_path": str(source),
        "source_sha256": prepared.source_sha256,
        "format": prepared.report.get("format", options.get("format", "auto")),
        "options": options,
        "train_rows": len(prepared.train),
        "validation_rows": len(prepared.validation),
        "folder": str(folder),
        "report": prepared.report,
        "created_at": utc_now(),
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
        "labels": report.get("labels"),
        "dropped": report.get("rows_dropped"),
        "report_uri": f"turing://datasets/{row['id']}/report",
    }


def load_split(services: Services, dataset_id: str, split: str) -> list[dict[str, Any]]:
    """The rows of one split of a stored dataset: train, validation, or all of them."""
    if split not in SPLITS:
        raise InvalidInputError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
    names = ["train", "validation"] if split == "all" else [split]
    return [row for name in names for row in read_jsonl(folder / f"{name}.jsonl")]


def split_path(services: Services, dataset_id: str, split: str) -> Path:
    """The JSONL file of one stored split (train or validation)."""
    folder = Path(services.registry.get("datasets", dataset_id, "dataset")["folder"])
    return folder / f"{split}.jsonl"


def _content_id(source_sha256: str, options: dict[str, Any]) -> str:
    canonical = json.dumps({"source": source_sha256, "options": options}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _write_files(
    services: Services, dataset_id: str, train: list, validation: list, report: dict
) -> Path:
    # Written under a temporary name and renamed, so a crash never leaves a partial version.
    final = services.workspace.folder("datasets") / dataset_id
    staging = final.with_name(f".{dataset_id}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_jsonl(train, staging / "train.jsonl")
    write_jsonl(validation, staging / "validation.jsonl")
    write_json_atomic(staging / "report.json", report)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return final
