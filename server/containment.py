"""Containment: a file a tool argument names must lie in the workspace or an allowed folder.

A path must be absolute. It is resolved first (symlinks followed, ".." collapsed), then it
must lie inside one of the allowed folders:

- the input folders: those listed in TURING_ALLOWED_INPUT_DIRS (separated by os.pathsep, ":"
  on Linux and macOS); when the variable is unset, the server's working directory at start,
  unless that is the filesystem root (as for a server a desktop app starts), which allows no
  folder beyond the workspace. Set the variable to "" to allow the workspace only.
- the workspace (TURING_HOME), for callers of every project (the local user, "*" tokens)
  only: it holds every project's files, so a project's token may not name files in it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turing.server.access import QUERY_LOG_SOURCE, Principal
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

ALLOWED_DIRS_ENV = "TURING_ALLOWED_INPUT_DIRS"
REGISTRY_NAME = "registry.db"  # with its -wal, -shm and -journal companions
# Sources that are not files: prepare_dataset reads a deployment's logged queries from the
# registry (the deployment's project is checked like any other name).
NON_FILE_SOURCES = (QUERY_LOG_SOURCE,)

# Every tool argument that names a file or folder on this machine.
PATH_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "prepare_dataset": ("path",),
    "register_base_model": ("gguf_path",),
    "run_eval": ("harmful_prompts", "safe_prompts"),
    "set_gate": ("harmful_prompts", "safe_prompts"),
}


class PathNotAllowedError(InvalidInputError):
    """A path resolves outside the folders the server may read."""


@dataclass(frozen=True)
class Containment:
    """The folders tool arguments may name: the workspace and the input folders."""

    workspace: Path
    input_dirs: tuple[Path, ...]

    @classmethod
    def from_env(cls, workspace: Path, cwd: Path | None = None) -> Containment:
        """The workspace and the input folders of TURING_ALLOWED_INPUT_DIRS, else of `cwd` (the
        working directory by default) unless it is the filesystem root."""
        raw = os.environ.get(ALLOWED_DIRS_ENV)
        dirs: tuple[Path, ...]
        if raw is None:
            here = Path(os.path.realpath(cwd or Path.cwd()))
            dirs = () if here == Path(here.anchor) else (here,)
            if not dirs:
                logger.warning(
                    "the working directory is %s, so tools read input files from the "
                    "workspace only; list input folders in %s",
                    here,
                    ALLOWED_DIRS_ENV,
                )
        else:
            entries = [entry.strip() for entry in raw.split(os.pathsep) if entry.strip()]
            dirs = tuple(Path(os.path.realpath(Path(entry).expanduser())) for entry in entries)
        containment = cls(Path(os.path.realpath(workspace)), dirs)
        logger.info(
            "tools read input files from %s and the workspace %s",
            ", ".join(str(d) for d in dirs) or "no folder",
            containment.workspace,
        )
        return containment

    def allowed(self, principal: Principal) -> list[Path]:
        """The folders this caller's path arguments may lie in."""
        return list(self.input_dirs) if principal.scoped else [self.workspace, *self.input_dirs]

    def check_path(self, value: str, what: str, principal: Principal) -> Path:
        """The resolved form of a path argument, or an error naming the path, what it resolves
        to and the folders allowed.

        Args:
            value: The path as the caller gave it.
            what: The argument, for the message (e.g. "prepare_dataset path").
            principal: The caller; a project's caller may not name files in the workspace.
        """
        if "\0" in value:
            raise InvalidInputError(f"{what} {value!r} holds a NUL character")
        given = Path(value).expanduser()
        if not given.is_absolute():  # the server's working directory is not the caller's
            raise InvalidInputError(f"{what} {value!r} is not an absolute path; pass the full path")
        target = Path(os.path.realpath(given))
        if target.parent == self.workspace and target.name.startswith(REGISTRY_NAME):
            # Even opening and closing the registry's files in this process would drop its
            # SQLite locks (POSIX locks are per process), letting another process remove the WAL.
            raise PathNotAllowedError(
                f"{what} {value!r} resolves to {target}, the registry's own database, which no "
                "tool reads as input"
            )
        allowed = self.allowed(principal)
        in_workspace = target.is_relative_to(self.workspace)
        if any(target.is_relative_to(folder) for folder in allowed) and not (
            principal.scoped and in_workspace
        ):
            return target
        folders = ", ".join(str(folder) for folder in allowed) or "none"
        where = (
            "inside the workspace, which a project's token may not read"
            if in_workspace
            else "outside the folders this server reads input from"
        )
        raise PathNotAllowedError(
            f"{what} {value!r} resolves to {target}, {where}; allowed folders: {folders}. "
            f"Put the file in one of them, or start the server with its folder listed in "
            f"{ALLOWED_DIRS_ENV}"
        )

    def check_arguments(
        self, tool: str, arguments: Mapping[str, Any], principal: Principal
    ) -> dict[str, Any]:
        """The arguments with every path argument of `tool` checked and resolved."""
        checked = dict(arguments)
        for name in PATH_ARGUMENTS.get(tool, ()):
            value = checked.get(name)
            if not isinstance(value, str) or value.startswith(NON_FILE_SOURCES):
                continue  # not a path: the tool's own validation answers
            checked[name] = str(self.check_path(value, f"{tool} {name}", principal))
        return checked


def workspace_path(workspace: Path, path: str | Path) -> Path:
    """A file a resource reads, resolved, refused unless it lies inside the workspace.

    Resources read files whose paths the registry holds; a registry copied from elsewhere or
    a symlink planted in the workspace must not make them read anything outside it.
    """
    home = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(home):
        raise PathNotAllowedError(
            f"{path} resolves to {target}, outside the workspace {home}; resources only read "
            "files inside the workspace"
        )
    return target
