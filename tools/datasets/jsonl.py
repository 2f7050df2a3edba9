"""JSON lines files of the workspace: atomic writes and strict reads."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from turing.tools.datasets.reading import decode_text
from turing.tools.errors import InvalidInputError


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    """Write rows as JSON lines, atomically: readers see the old file or the whole new one.

    Args:
        rows: JSON-serialisable dicts, one per line.
        path: Destination; its folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON lines file of objects, skipping blank lines.

    Args:
        path: A UTF-8 file with one JSON object per line.

    Returns:
        The objects in file order.

    Raises:
        InvalidInputError: The file is missing, not UTF-8, or a line is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no JSON lines file at {path}")
    text, _ = decode_text(path, path.read_bytes())
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}, line {number}: not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise InvalidInputError(f"{path}, line {number}: expected an object")
        rows.append(row)
    return rows
