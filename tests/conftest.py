"""Shared fixtures: a throwaway workspace, a real MCP client session, a tiny base model."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from turing.server.containment import ALLOWED_DIRS_ENV
from turing.server.quickstart import Session, server_parameters

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The shared public datasets: TURING_SHARED_DATA, or ../shared/data beside the repository."""
    configured = os.environ.get("TURING_SHARED_DATA")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("shared datasets not found: set TURING_SHARED_DATA to the shared data folder")
    return found


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer cache for every server the tests start, kept out of the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["TURING_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def input_folders(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Let the servers the tests start read input files from the tests' temporary folders, the
    tests' own folder and the shared datasets, and nothing else outside their workspaces."""
    folders = [tmp_path_factory.getbasetemp(), REPO / "tests", shared_data_dir()]
    listed = os.pathsep.join(str(folder) for folder in folders if folder is not None)
    os.environ[ALLOWED_DIRS_ENV] = listed
    return listed


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer llama with SmolLM2's tokenizer, written as a GGUF."""
    from tests.tiny_model import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    """A real MCP client session with `turing serve` launched over stdio on a fresh workspace."""
    async with Client(server_parameters(str(tmp_path / "home"))) as client:
        yield Session(client)
