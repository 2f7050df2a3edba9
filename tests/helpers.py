"""Helpers shared by tests: polling jobs through MCP and writing small input files."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from turing.server.quickstart import Session


async def wait_until_done(
    session: Session, tool: str, key: str, item_id: str, timeout: float = 900
) -> dict[str, Any]:
    """Poll get_run or get_eval until the job leaves the running states."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await session.call(tool, **{key: item_id})
        if found["status"] not in ("queued", "running", "cancelling"):
            return found
        assert loop.time() < deadline, f"{item_id} still {found['status']} after {timeout} s"
        await asyncio.sleep(0.5)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# .ci/run sets this: there a missing browser or Node package fails the test instead of skipping.
REQUIRE_ALL = os.environ.get("TURING_TESTS_REQUIRE_ALL") == "1"


def skip_unless_required(reason: str) -> None:
    """Skip a test whose outside program is missing, or fail it where every test must run."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (TURING_TESTS_REQUIRE_ALL=1: every test must run here)")
    pytest.skip(reason)


def skip_if_missing(missing: bool, reason: str) -> pytest.MarkDecorator:
    """A skipif mark that does not skip where every test must run (the test then fails)."""
    return pytest.mark.skipif(missing and not REQUIRE_ALL, reason=reason)
