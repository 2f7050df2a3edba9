"""Containment: path arguments and resource URIs stay inside the workspace and allowed folders."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.helpers import write_jsonl
from tests.server.test_lifecycle import ticket_rows
from turing.server import access
from turing.server.app import create_app
from turing.server.containment import (
    ALLOWED_DIRS_ENV,
    PATH_ARGUMENTS,
    Containment,
    PathNotAllowedError,
)
from turing.server.quickstart import LifecycleError, Session
from turing.server.services import Services
from turing.server.workspace import Workspace

# Arguments whose names suggest a file but that name none.
NOT_PATHS = {("prepare_dataset", "records_path")}
PATH_LIKE = re.compile(r"(path|file|dir|folder|prompts)s?$")
SHOP = access.Principal(actor="ci (tok-1)", role="operator", project="shop", token_id="tok-1")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed input folder holding a dataset file, and a folder outside it holding another."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_jsonl(allowed / "tickets.jsonl", ticket_rows())
    write_jsonl(outside / "secret.jsonl", ticket_rows()[:4])
    return allowed, outside


@pytest.fixture
async def local(
    tmp_path: Path, folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Session]:
    """The local user's session (an in-process client) on a server reading only `allowed`."""
    monkeypatch.setenv(ALLOWED_DIRS_ENV, str(folders[0]))
    services = Services.open(Workspace(tmp_path / "home", Path(os.environ["TURING_CACHE"])))
    app = create_app(services)
    services.jobs.stop_ticking()
    async with Client(app) as client:
        yield Session(client)
    services.close()


pytestmark = pytest.mark.anyio


async def test_every_path_argument_of_every_tool_is_contained(local: Session) -> None:
    tools = (await local.client.list_tools()).tools
    path_like = {
        (tool.name, name)
        for tool in tools
        for name, schema in tool.input_schema.get("properties", {}).items()
        if PATH_LIKE.search(name) or re.search(r"\b(file|folder)\b", schema.get("description", ""))
    }
    contained = {(tool, name) for tool, names in PATH_ARGUMENTS.items() for name in names}
    assert sorted(path_like - NOT_PATHS - contained) == [], "path arguments left unchecked"
    assert contained <= path_like


async def test_a_symlink_out_of_an_allowed_folder_is_refused_naming_its_target(
    local: Session, folders: tuple[Path, Path]
) -> None:
    allowed, outside = folders
    (allowed / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (allowed / "linked").symlink_to(outside, target_is_directory=True)

    for path in (allowed / "link.jsonl", allowed / "linked" / "secret.jsonl"):
        with pytest.raises(LifecycleError) as refused:
            await local.call("prepare_dataset", path=str(path))
        message = str(refused.value)
        assert f"'{path}' resolves to {outside / 'secret.jsonl'}" in message
        assert f"allowed folders: {local_workspace(local)}, {allowed}" in message
    assert await local.call("list_datasets") == []

    # A link that stays inside the allowed folder is followed, and the real file is recorded.
    (allowed / "inside.jsonl").symlink_to(allowed / "tickets.jsonl")
    dataset = await local.call("prepare_dataset", path=str(allowed / "inside.jsonl"))
    assert dataset["source_path"] == str(allowed / "tickets.jsonl")


async def test_dot_dot_out_of_an_allowed_folder_is_refused(
    local: Session, folders: tuple[Path, Path]
) -> None:
    allowed, outside = folders
    escape = f"{allowed}/../outside/secret.jsonl"
    with pytest.raises(LifecycleError, match=re.escape(f"resolves to {outside / 'secret.jsonl'}")):
        await local.call("prepare_dataset", path=escape)
    (allowed / "sub").mkdir()
    dataset = await local.call("prepare_dataset", path=f"{allowed}/sub/../tickets.jsonl")
    assert dataset["source_path"] == str(allowed / "tickets.jsonl")


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("register_base_model", {"name": "mine", "gguf_path": "{outside}/model.gguf"}),
        ("run_eval", {"model": "x", "dataset_id": "ds-x", "harmful_prompts": "{outside}/h.csv"}),
        (
            "set_gate",
            {
                "deployment": "web",
                "criteria": ["refusal_rate >= 0.9"],
                "dataset_id": "ds-x",
                "safe_prompts": "{outside}/s.csv",
            },
        ),
    ],
)
async def test_model_files_and_safety_suites_are_contained(
    local: Session, folders: tuple[Path, Path], tool: str, arguments: dict[str, object]
) -> None:
    filled = {
        k: v.format(outside=folders[1]) if isinstance(v, str) else v for k, v in arguments.items()
    }
    with pytest.raises(LifecycleError, match=f"resolves to {re.escape(str(folders[1]))}"):
        await local.call(tool, **filled)


async def test_resource_uris_hold_names_only(local: Session) -> None:
    for uri in (
        "turing://runs/..%2F..%2Fetc/log",
        "turing://datasets/%2E%2E/report",
        "turing://evals/ev-1%5C..%5Cx/report",
    ):
        with pytest.raises(MCPError, match="is not a name"):
            await local.client.read_resource(uri)


async def test_a_resource_never_reads_a_file_outside_the_workspace(
    local: Session, folders: tuple[Path, Path]
) -> None:
    allowed, outside = folders
    dataset = await local.call("prepare_dataset", path=str(allowed / "tickets.jsonl"))
    (outside / "problems.jsonl").write_text('{"stolen": true}\n')
    registry = local_workspace(local) / "registry.db"
    with closing(sqlite3.connect(registry)) as db, db:
        db.execute(
            "UPDATE datasets SET folder = ? WHERE id = ?", [str(outside), dataset["dataset_id"]]
        )
    with pytest.raises(MCPError, match="outside the workspace"):
        await local.client.read_resource(f"turing://datasets/{dataset['dataset_id']}/problems")


def local_workspace(session: Session) -> Path:
    """The workspace of the fixture's server (TURING_HOME of its services)."""
    server = session.client.server
    assert isinstance(server, access.GuardedServer)
    return server.services.workspace.home


# ---- The allowed folders ----


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        (None, ["{cwd}"]),  # unset: the working directory
        ("", []),  # set and empty: the workspace only
        ("{a}" + os.pathsep + "{b}", ["{a}", "{b}"]),
    ],
)
def test_the_allowed_folders_come_from_the_environment_else_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str | None, expected: list[str]
) -> None:
    names = {"cwd": tmp_path / "cwd", "a": tmp_path / "a", "b": tmp_path / "b"}
    for folder in names.values():
        folder.mkdir()
    if listed is None:
        monkeypatch.delenv(ALLOWED_DIRS_ENV, raising=False)
    else:
        monkeypatch.setenv(ALLOWED_DIRS_ENV, listed.format(**names))
    found = Containment.from_env(tmp_path / "home", cwd=names["cwd"])
    assert [str(d) for d in found.input_dirs] == [e.format(**names) for e in expected]


def test_a_server_started_at_the_filesystem_root_reads_from_its_workspace_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWED_DIRS_ENV, raising=False)
    found = Containment.from_env(tmp_path / "home", cwd=Path("/"))
    assert found.input_dirs == ()
    with pytest.raises(PathNotAllowedError, match="allowed folders: " + re.escape(str(tmp_path))):
        found.check_path("/etc/hostname", "prepare_dataset path", access.LOCAL)


def test_a_project_token_may_not_name_workspace_files_even_in_an_allowed_folder(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    stored = home / "datasets" / "train.jsonl"
    stored.write_text("")
    containment = Containment(home, (tmp_path,))  # the workspace lies inside an input folder
    assert containment.check_path(str(stored), "path", access.LOCAL) == stored
    with pytest.raises(PathNotAllowedError, match="inside the workspace"):
        containment.check_path(str(stored), "path", SHOP)
    assert containment.check_path(str(tmp_path / "data.jsonl"), "path", SHOP).parent == tmp_path


async def test_the_registry_database_is_never_a_tool_input(local: Session, tmp_path: Path) -> None:
    # The local user may name workspace files, but not the registry: opening and closing it in
    # the server process would drop the process's SQLite locks.
    home = tmp_path / "home"
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        with pytest.raises(LifecycleError, match="the registry's own database"):
            await local.call("prepare_dataset", path=str(home / name))
    link = tmp_path / "allowed" / "innocent.jsonl"
    link.symlink_to(home / "registry.db")
    with pytest.raises(LifecycleError, match="the registry's own database"):
        await local.call("prepare_dataset", path=str(link))
    assert await local.call("list_datasets") == []
