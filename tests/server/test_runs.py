"""Fine-tuning runs as managed jobs: the queue, cancel, restart, progress, tasks, checkpoints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict

from tests.helpers import write_jsonl
from turing.server.app import create_app
from turing.server.jobs import LOG_NAME, JobSupervisor
from turing.server.quickstart import LifecycleError, Session, server_parameters
from turing.server.registry import Registry
from turing.tools import jobs
from turing.tools.errors import InvalidInputError

pytestmark = pytest.mark.anyio

TASKS = "io.modelcontextprotocol/tasks"
# Three steps an epoch: 12 rows in batches of 4.
QUICK = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "early_stopping_patience": 0}
LONG = {"epochs": 100, "batch_size": 1, "early_stopping_patience": 0}


def greeting_rows(count: int = 15) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say hello to person number {i}."},
                {"role": "assistant", "content": f"Hello, person {i}!"},
            ]
        }
        for i in range(count)
    ]


def serve(home: Path, **options: Any) -> Client:
    """A real MCP client over stdio on `turing serve` for this workspace, one run at a time."""
    parameters = server_parameters(str(home))
    parameters.env = {**(parameters.env or {}), "TURING_MAX_RUNNING": "1"}
    return Client(parameters, **options)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
async def runs_session(home: Path) -> AsyncIterator[Session]:
    async with serve(home) as client:
        yield Session(client)


async def prepare(session: Session, tmp_path: Path, tiny_base: Path) -> str:
    await session.call("register_base_model", name="tiny", gguf_path=str(tiny_base))
    data = write_jsonl(tmp_path / "greetings.jsonl", greeting_rows())
    dataset = await session.call("prepare_dataset", path=str(data), validation_fraction=0.2)
    return dataset["dataset_id"]


async def start(session: Session, dataset_id: str, **overrides: Any) -> dict[str, Any]:
    """Start a run on the tiny base; `overrides` go over QUICK's hyperparameters."""
    return await session.call(
        "start_finetune",
        dataset_id=dataset_id,
        base_model="tiny",
        hyperparameters={**QUICK, **overrides},
    )


async def wait_for(session: Session, run_id: str, timeout: float = 600) -> dict[str, Any]:
    """Call wait_for_run until the run ends."""
    deadline = time.monotonic() + timeout
    while True:
        run = await session.call("wait_for_run", run_id=run_id, timeout_seconds=30)
        if run["status"] in jobs.ENDED:
            return run
        assert time.monotonic() < deadline, f"{run_id} still {run['status']} after {timeout} s"


async def poll_until(
    session: Session, run_id: str, done: Any, timeout: float = 300
) -> dict[str, Any]:
    """Call get_run until `done(run)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        run = await session.call("get_run", run_id=run_id)
        if done(run):
            return run
        assert time.monotonic() < deadline, f"{run_id}: condition not met; last seen {run}"
        await asyncio.sleep(0.3)


def event_types(run: dict[str, Any]) -> list[str]:
    return [event["type"] for event in run["events"]]


async def read_events(session: Session, run: dict[str, Any]) -> list[dict[str, Any]]:
    text = (await session.client.read_resource(run["events_uri"])).contents[0].text
    return [json.loads(line) for line in text.splitlines()]


# ---- The queue ----


async def test_a_second_run_waits_queued_until_the_first_has_ended(
    runs_session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(runs_session, tmp_path, tiny_base)
    first = await start(runs_session, dataset_id, epochs=6)
    second = await start(runs_session, dataset_id)
    assert first["status"] in ("queued", "running")
    assert second["status"] == "queued"

    await poll_until(runs_session, first["run_id"], lambda run: run["status"] == "running")
    waiting = await runs_session.call("get_run", run_id=second["run_id"])
    assert waiting["status"] == "queued" and waiting["queue_position"] == 1
    assert waiting["started_at"] is None and waiting["attempts"] == 0
    listed = await runs_session.call("list_runs", status="queued")
    assert [run["run_id"] for run in listed] == [second["run_id"]]

    first = await wait_for(runs_session, first["run_id"])
    second = await wait_for(runs_session, second["run_id"])
    assert first["status"] == "succeeded", first["error"]
    assert second["status"] == "succeeded", second["error"]
    assert second["started_at"] >= first["finished_at"]
    events = await read_events(runs_session, second)
    assert [event["type"] for event in events[:2]] == ["queued", "started"]


async def test_a_queued_run_cancels_at_once_and_wait_for_run_returns_at_its_timeout(
    runs_session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(runs_session, tmp_path, tiny_base)
    busy = await start(runs_session, dataset_id, **LONG)
    waiting = await start(runs_session, dataset_id)
    with pytest.raises(LifecycleError, match="is queued; only failed or cancelled runs can be"):
        await runs_session.call("resume_run", run_id=waiting["run_id"])

    cancelled = await runs_session.call("cancel_run", run_id=waiting["run_id"])
    assert cancelled == {"run_id": waiting["run_id"], "status": "cancelled"}
    run = await runs_session.call("get_run", run_id=waiting["run_id"])
    assert run["status"] == "cancelled" and run["attempts"] == 0 and run["started_at"] is None
    assert event_types(run) == ["queued", "cancel_requested"]
    assert not (tmp_path / "home" / "runs" / waiting["run_id"] / LOG_NAME).exists()
    with pytest.raises(LifecycleError, match="already cancelled; only queued or running"):
        await runs_session.call("cancel_run", run_id=waiting["run_id"])
    with pytest.raises(LifecycleError, match="has no checkpoint to resume from"):
        await runs_session.call("resume_run", run_id=waiting["run_id"])

    began = time.monotonic()
    waited = await runs_session.call("wait_for_run", run_id=busy["run_id"], timeout_seconds=2)
    assert waited["status"] in ("queued", "running") and time.monotonic() - began < 15
    with pytest.raises(LifecycleError, match="timeout_seconds=-1"):
        await runs_session.call("wait_for_run", run_id=busy["run_id"], timeout_seconds=-1)

    await runs_session.call("cancel_run", run_id=busy["run_id"])
    assert (await wait_for(runs_session, busy["run_id"]))["status"] == "cancelled"
    await asyncio.sleep(1.5)  # a scheduler tick: the cancelled run must not start now
    assert (await runs_session.call("get_run", run_id=waiting["run_id"]))["attempts"] == 0


# ---- Restart and resume ----


async def test_a_run_whose_worker_died_with_the_server_is_failed_and_resumable_after_a_restart(
    home: Path, tmp_path: Path, tiny_base: Path
) -> None:
    async with serve(home) as client:
        session = Session(client)
        dataset_id = await prepare(session, tmp_path, tiny_base)
        run = await start(session, dataset_id, **LONG, checkpoint_every=3)
        run = await poll_until(session, run["run_id"], lambda run: len(run["checkpoints"]) >= 2)
    # The server has exited; its worker trains on until it is killed outright.
    pid = Registry(home / "registry.db").get("runs", run["run_id"])["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)

    async with serve(home) as client:
        session = Session(client)
        failed = await session.call("get_run", run_id=run["run_id"])
        assert failed["status"] == "failed"
        assert "server restarted" in failed["error"] and f"pid {pid}" in failed["error"]
        assert failed["resumable"] is True
        assert failed["resume_step"] == failed["checkpoints"][-1]["step"] >= 3
        assert event_types(failed)[-1] == "reconciled"

        resumed = await session.call("resume_run", run_id=run["run_id"])
        assert resumed["run_id"] == run["run_id"] and resumed["status"] in ("queued", "running")
        job = json.loads((home / "runs" / run["run_id"] / "job.json").read_text())
        assert job["resume"] is True
        # The full event log: on a fast machine checkpoint events soon push "resumed" out of
        # the recent events that get_run shows.
        deadline = time.monotonic() + 300
        while "resumed" not in [event["type"] for event in await read_events(session, failed)]:
            assert time.monotonic() < deadline, "the resumed run never logged 'resumed'"
            await asyncio.sleep(0.3)
        await session.call("cancel_run", run_id=run["run_id"])
        ended = await wait_for(session, run["run_id"])
        assert ended["status"] == "cancelled" and ended["attempts"] == 2
        events = await read_events(session, ended)
        assert [e["type"] for e in events].count("queued") == 2


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} still alive after SIGKILL")


# ---- Progress ----


async def test_wait_for_run_sends_progress_notifications_to_a_client_that_asked(
    runs_session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(runs_session, tmp_path, tiny_base)
    # Long enough (several seconds) for wait_for_run to see it at more than one step.
    run = await start(runs_session, dataset_id, epochs=60, batch_size=1, early_stopping_patience=0)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await runs_session.client.call_tool(
        "wait_for_run",
        {"run_id": run["run_id"], "timeout_seconds": 600},
        progress_callback=on_progress,
    )
    ended = result.structured_content
    assert ended is not None and ended["status"] == "succeeded", ended
    steps = [(p, t, m) for p, t, m in seen if p > 0]
    assert len(steps) >= 2, seen
    assert [p for p, _, _ in steps] == sorted({p for p, _, _ in steps})
    assert steps[-1][0] == steps[-1][1] == ended["progress"]["total_steps"]
    assert all(m and "loss" in m and "tokens/s" in m and "ETA" in m for _, _, m in steps)


# ---- MCP tasks ----


class TaskHandle(Result):
    """A CreateTaskResult of the tasks extension."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str


class TaskId(RequestParams):
    task_id: str


class GetTask(Request[TaskId, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskId


class CancelTask(Request[TaskId, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskId


class TaskState(Result):
    """A tasks/get result: the task, with the tool result inlined once completed."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    status_message: str | None = None
    result: dict[str, Any] | None = None


async def get_task(client: Client, task_id: str) -> TaskState:
    return await client.session.send_request(GetTask(params=TaskId(task_id=task_id)), TaskState)


async def poll_task(client: Client, task_id: str, timeout: float = 600) -> TaskState:
    deadline = time.monotonic() + timeout
    while (state := await get_task(client, task_id)).status == "working":
        assert time.monotonic() < deadline, f"task {task_id} still working"
        await asyncio.sleep(0.5)
    return state


class Tasks(ClientExtension):
    """The client side of the tasks extension: declare it, and finish a task by polling."""

    identifier = TASKS

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._resolve)]

    async def _resolve(self, handle: TaskHandle, context: ClaimContext) -> CallToolResult:
        state = await context.session.send_request(
            GetTask(params=TaskId(task_id=handle.task_id)), TaskState
        )
        while state.status == "working":
            await asyncio.sleep(0.5)
            state = await context.session.send_request(
                GetTask(params=TaskId(task_id=handle.task_id)), TaskState
            )
        return CallToolResult.model_validate(state.result)


async def test_start_finetune_answers_a_client_that_declares_tasks_with_a_task(
    home: Path, tmp_path: Path, tiny_base: Path
) -> None:
    async with serve(home, extensions=[Tasks()]) as client:
        dataset_id = await prepare(Session(client), tmp_path, tiny_base)
        arguments = {"dataset_id": dataset_id, "base_model": "tiny", "hyperparameters": LONG}
        handle = await client.session.call_tool("start_finetune", arguments, allow_claimed=True)
        assert isinstance(handle, TaskHandle)
        assert handle.task_id.startswith("run-") and handle.status == "working"
        assert (await get_task(client, handle.task_id)).status == "working"
        await client.session.send_request(CancelTask(params=TaskId(task_id=handle.task_id)), Result)
        assert (await poll_task(client, handle.task_id)).status == "cancelled"
        with pytest.raises(MCPError, match="Failed to retrieve task: no run 'run-nothing'"):
            await get_task(client, "run-nothing")

        # The claim polls tasks/get until the task completes; call_tool returns the tool result.
        quick = {**arguments, "hyperparameters": QUICK}
        finished = await client.call_tool("start_finetune", quick)
        assert not finished.is_error and finished.structured_content is not None
        assert finished.structured_content["status"] == "succeeded"
        state = await get_task(client, finished.structured_content["run_id"])
        assert state.status == "completed" and state.result is not None
        assert state.result["structuredContent"]["run_id"] == state.task_id

    async with serve(home) as plain:
        with pytest.raises(MCPError, match="did not declare required extension"):
            await get_task(plain, handle.task_id)
        result = await plain.call_tool("start_finetune", arguments)
        assert result.structured_content is not None
        assert result.structured_content["status"] in ("queued", "running")
        await plain.call_tool("cancel_run", {"run_id": result.structured_content["run_id"]})


# ---- Checkpoints: the output, and a start from another run ----


async def test_checkpoints_of_a_run_can_become_its_output_or_seed_a_compatible_run(
    runs_session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(runs_session, tmp_path, tiny_base)
    run = await start(runs_session, dataset_id, lora_rank=8, checkpoint_every=2)
    run = await wait_for(runs_session, run["run_id"])
    assert run["status"] == "succeeded", run["error"]
    steps = [checkpoint["step"] for checkpoint in run["checkpoints"]]
    assert len(steps) >= 2 and run["output_step"] in steps
    earlier = next(step for step in steps if step != run["output_step"])

    chosen = await runs_session.call("select_checkpoint", run_id=run["run_id"], step=earlier)
    assert chosen["output_step"] == chosen["result"]["output_step"] == earlier
    source = json.loads((Path(chosen["result"]["adapter_dir"]) / "source.json").read_text())
    assert source["step"] == earlier
    assert chosen["events"][-1]["type"] == "output_selected"
    assert chosen["events"][-1]["step"] == earlier
    with pytest.raises(LifecycleError, match=f"no checkpoint at step 999 .steps: {steps[0]}"):
        await runs_session.call("select_checkpoint", run_id=run["run_id"], step=999)

    # Choices made at the same time: the files in adapter/ are those of the step recorded.
    await asyncio.gather(
        *(
            runs_session.call("select_checkpoint", run_id=run["run_id"], step=step)
            for step in steps * 3
        )
    )
    final = await runs_session.call("get_run", run_id=run["run_id"])
    adapter = Path(final["result"]["adapter_dir"])
    recorded = final["output_step"]
    assert json.loads((adapter / "source.json").read_text())["step"] == recorded
    folder = adapter.parent / "checkpoints" / f"step-{recorded:06d}"
    weights = "adapter_model.safetensors"
    assert (adapter / weights).read_bytes() == (folder / weights).read_bytes()
    assert not list(adapter.parent.glob(".adapter*"))

    ref = f"{run['run_id']}/step-{earlier:06d}"
    with pytest.raises(
        LifecycleError, match="lora_rank: the checkpoint has 8, this run asks for 4"
    ):
        await start_from(runs_session, dataset_id, ref, lora_rank=4)
    await runs_session.call("register_base_model", name="tiny-copy", gguf_path=str(tiny_base))
    with pytest.raises(LifecycleError, match="trained on 'tiny', this run uses 'tiny-copy'"):
        await start_from(runs_session, dataset_id, run["run_id"], base_model="tiny-copy")
    with pytest.raises(LifecycleError, match="not a checkpoint reference"):
        await start_from(runs_session, dataset_id, "step-000002")

    seeded = await start_from(runs_session, dataset_id, run["run_id"])
    assert seeded["hyperparameters"]["lora_rank"] == 8  # taken from the checkpoint
    job = json.loads((tmp_path / "home" / "runs" / seeded["run_id"] / "job.json").read_text())
    assert job["init_checkpoint"].endswith(f"{run['run_id']}/checkpoints/step-{recorded:06d}")
    assert job["processes"] == 1 and job["resume"] is False
    assert (await wait_for(runs_session, seeded["run_id"]))["status"] == "succeeded"


async def start_from(
    session: Session, dataset_id: str, ref: str, base_model: str = "tiny", **hyperparameters: Any
) -> dict[str, Any]:
    return await session.call(
        "start_finetune",
        dataset_id=dataset_id,
        base_model=base_model,
        hyperparameters={**QUICK, **hyperparameters},
        from_checkpoint=ref,
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"processes": 0}, "processes=0: must be an integer from 1 to 64"),
        ({"processes": 65}, "processes=65: must be an integer from 1 to 64"),
        (
            {"processes": 0, "hyperparameters": {"epochs": 0}, "dataset_id": "ds-none"},
            "3 problem.*processes=0.*epochs=0.*no dataset 'ds-none'",
        ),
        ({"from_checkpoint": "run-missing"}, "no run 'run-missing'"),
    ],
)
async def test_start_finetune_refuses_bad_job_settings(
    runs_session: Session, tmp_path: Path, tiny_base: Path, arguments: dict, message: str
) -> None:
    dataset_id = await prepare(runs_session, tmp_path, tiny_base)
    with pytest.raises(LifecycleError, match=message):
        await runs_session.call(
            "start_finetune", **{"dataset_id": dataset_id, "base_model": "tiny", **arguments}
        )
    assert await runs_session.call("list_runs") == []


def test_a_bad_run_limit_stops_the_server_at_start(
    monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setenv("TURING_HOME", str(home))
    monkeypatch.setenv("TURING_MAX_RUNNING", "zero")
    with pytest.raises(InvalidInputError, match="TURING_MAX_RUNNING='zero'"):
        create_app()


# ---- Worker processes and event files ----


def test_a_worker_flooding_stderr_finishes_and_its_output_is_in_the_log(tmp_path: Path) -> None:
    package = tmp_path / "modules"
    package.mkdir()
    (package / "flood.py").write_text(
        textwrap.dedent(
            """
            import sys
            line = "x" * 1023 + "\\n"
            for _ in range(11 * 1024):
                sys.stderr.write(line)
            sys.stdout.write("flood done\\n")
            """
        )
    )
    folder = tmp_path / "job"
    folder.mkdir()
    supervisor = JobSupervisor()
    pid = supervisor.start("flood", folder, {}, env={"PYTHONPATH": str(package)})

    _wait_exit(supervisor, pid, folder)
    log = folder / LOG_NAME
    assert log.stat().st_size > 11 * 1024 * 1024
    assert log.read_text().rstrip().endswith("flood done")


def test_a_job_with_several_processes_runs_under_torchrun(tmp_path: Path) -> None:
    package = tmp_path / "modules"
    package.mkdir()
    (package / "ranks.py").write_text(
        "import os, sys, pathlib\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        "(folder / f\"rank-{os.environ['RANK']}\").write_text(os.environ['WORLD_SIZE'])\n"
    )
    folder = tmp_path / "job"
    folder.mkdir()
    supervisor = JobSupervisor()
    pid = supervisor.start("ranks", folder, {}, processes=2, env={"PYTHONPATH": str(package)})

    _wait_exit(supervisor, pid, folder, timeout=120)
    written = {path.name: path.read_text() for path in folder.glob("rank-*")}
    assert written == {"rank-0": "2", "rank-1": "2"}, (folder / LOG_NAME).read_text()


def _wait_exit(supervisor: JobSupervisor, pid: int, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while supervisor.is_alive(pid, folder):
        assert time.monotonic() < deadline, (folder / LOG_NAME).read_bytes()[-2000:]
        time.sleep(0.1)


def test_a_worker_counts_as_alive_while_a_process_it_started_works_on_its_folder(
    tmp_path: Path,
) -> None:
    # As torchrun's ranks do when their launcher is killed: the launcher is gone, they train on.
    package = tmp_path / "modules"
    package.mkdir()
    (package / "launcher.py").write_text(
        "import subprocess, sys\n"
        "folder = sys.argv[1]\n"
        "code = 'import time; time.sleep(120)'\n"
        "child = subprocess.Popen([sys.executable, '-c', code, folder])\n"
        "open(folder + '/child.pid', 'w').write(str(child.pid))\n"
    )
    folder = tmp_path / "job"
    folder.mkdir()
    supervisor = JobSupervisor()
    pid = supervisor.start("launcher", folder, {}, env={"PYTHONPATH": str(package)})
    deadline = time.monotonic() + 60
    while not (folder / "child.pid").exists() or supervisor._children[pid].poll() is None:
        assert time.monotonic() < deadline, (folder / LOG_NAME).read_text()
        time.sleep(0.1)

    assert supervisor.is_alive(pid, folder)  # the launcher exited; its child works on
    assert supervisor.stop(pid, folder)  # and a stop reaches the child
    _wait_exit(supervisor, pid, folder)


def test_events_appended_at_once_from_many_threads_stay_whole_lines(tmp_path: Path) -> None:
    detail = "y" * 3000

    def append(thread: int) -> None:
        for number in range(50):
            jobs.append_event(tmp_path, "checkpoint", f"{thread}-{number}", detail=detail)

    threads = [threading.Thread(target=append, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = jobs.read_events(tmp_path, jobs.EVENTS_NAME)
    lines = (tmp_path / jobs.EVENTS_NAME).read_text().splitlines()
    assert len(events) == len(lines) == 400
    assert {event["message"] for event in events} == {
        f"{t}-{n}" for t in range(8) for n in range(50)
    }
    assert all(set(event) == {"time", "type", "message", "detail"} for event in events)
