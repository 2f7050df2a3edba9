"""The main job: drive the whole lifecycle through a real MCP client session over stdio.

`turing quickstart` launches `turing serve` as a subprocess, as Claude Desktop would, then calls
its tools in order: prepare a dataset, fine-tune, declare the deployment's quality gate, judge
the exported GGUF against it beside the base model (and the champion, on a later run), deploy
it, and ask the deployment one question.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from tqdm import tqdm

from turing.server.containment import ALLOWED_DIRS_ENV

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "tools" / "datasets" / "samples"
POLL_SECONDS = 1.0
# What the quickstart's deployment demands of every version: a clear gain over the base model,
# no regression against the version it replaces, and a GGUF that answers as the adapter does.
DEFAULT_CRITERIA = (
    "accuracy >= base + 0.2",
    "accuracy >= champion - 0.05",
    "export_agreement >= 0.9",
)


class LifecycleError(RuntimeError):
    """A tool call in the lifecycle failed; the message is the server's."""


@dataclass
class LifecyclePlan:
    """What to train on, what to score on, and where to deploy."""

    data: Path
    prepare_options: dict[str, Any] = field(default_factory=dict)
    eval_data: Path | None = None
    eval_options: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    deployment: str = "quickstart"
    criteria: list[str] = field(default_factory=lambda: list(DEFAULT_CRITERIA))
    gate_options: dict[str, Any] = field(default_factory=dict)  # e.g. safety suites


class Session:
    """A thin layer over the MCP client that returns tool results as plain data."""

    def __init__(self, client: Client):
        self.client = client

    async def call(self, tool: str, **arguments: Any) -> Any:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            text = " ".join(getattr(part, "text", "") for part in result.content)
            raise LifecycleError(text)
        data = result.structured_content or {}
        # Tools returning lists are wrapped as {"result": [...]} by the SDK.
        return data["result"] if set(data) == {"result"} else data


def server_parameters(
    home: str | None = None, log_level: str = "INFO", input_dirs: Sequence[Path] = ()
) -> StdioServerParameters:
    """How to launch `turing serve` with this interpreter and workspace.

    The server reads input files from the folders in TURING_ALLOWED_INPUT_DIRS (this process's
    value, with `input_dirs` added), else from the working directory.
    """
    env = {
        key: os.environ[key]
        for key in ("TURING_HOME", "TURING_CACHE", "OMP_NUM_THREADS", ALLOWED_DIRS_ENV)
        if key in os.environ
    }
    if home:
        env["TURING_HOME"] = home
    if input_dirs:
        listed = env.get(ALLOWED_DIRS_ENV, str(Path.cwd()))
        env[ALLOWED_DIRS_ENV] = os.pathsep.join([listed, *(str(d) for d in input_dirs)])
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "turing.server.cli", "--log-level", log_level, "serve"],
        env=env,
    )


async def drive_lifecycle(session: Session, plan: LifecyclePlan) -> dict[str, Any]:
    """Run prepare -> fine-tune -> eval -> deploy -> eval served -> query; return a summary."""
    started = time.time()
    dataset = await session.call("prepare_dataset", path=str(plan.data), **plan.prepare_options)
    tqdm.write(
        f"dataset {dataset['dataset_id']}: {dataset['train_rows']} train, "
        f"{dataset['validation_rows']} validation rows",
        file=sys.stderr,
    )
    eval_dataset, split = dataset, "validation"
    if plan.eval_data:
        options = {**plan.eval_options, "validation_fraction": 0.0}
        eval_dataset = await session.call("prepare_dataset", path=str(plan.eval_data), **options)
        split = "all"

    run = await session.call(
        "start_finetune", dataset_id=dataset["dataset_id"], hyperparameters=plan.hyperparameters
    )
    run = await wait_for_run(session, run["run_id"])

    gate = await session.call(
        "set_gate",
        deployment=plan.deployment,
        criteria=plan.criteria,
        dataset_id=eval_dataset["dataset_id"],
        split=split,
        reason="lifecycle acceptance",
        **plan.gate_options,
    )
    judged = await wait_for_eval(
        session, "judge the GGUF by the gate", model=run["run_id"], gate=plan.deployment
    )
    verdict = judged["verdict"]
    if not verdict["passed"]:
        raise LifecycleError(
            f"{judged['version_id']} failed the gate of {plan.deployment!r} (eval "
            f"{judged['eval_id']}): " + "; ".join(verdict["failing"])
        )
    deployed = await session.call(
        "deploy", model=judged["version_id"], deployment=plan.deployment, reason="lifecycle run"
    )

    sample = await first_conversation(session, judged["eval_id"])
    answer = await session.call("query_model", model=plan.deployment, messages=sample["messages"])
    return {
        "dataset": dataset,
        "run": run,
        "gate": gate,
        "eval": judged,
        "deployment": deployed,
        "sample": {**sample, "answer": answer},
        "wall_seconds": round(time.time() - started, 1),
    }


async def wait_for_run(session: Session, run_id: str) -> dict[str, Any]:
    """Poll a run until it ends, drawing a progress bar of its steps."""
    bar = tqdm(desc=f"fine-tune {run_id}", unit="step", file=sys.stderr)
    while True:
        run = await session.call("get_run", run_id=run_id)
        progress = run["progress"] or {}
        if progress:
            bar.total = progress["total_steps"]
            bar.n = progress["step"]
            bar.set_postfix(
                loss=f"{progress['loss']:.3f}",
                tok_s=f"{progress.get('tokens_per_second', 0):.0f}",
                refresh=False,
            )
            bar.refresh()
        if run["status"] not in ("queued", "running", "cancelling"):
            bar.close()
            if run["status"] != "succeeded":
                raise LifecycleError(f"run {run_id} {run['status']}: {run['error']}")
            return run
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_eval(session: Session, label: str, **arguments: Any) -> dict[str, Any]:
    """Start an evaluation and poll it to the end, drawing a progress bar of answers."""
    evaluation = await session.call("run_eval", **arguments)
    bar = tqdm(desc=label, unit="answer", file=sys.stderr)
    while evaluation["status"] in ("running", "cancelling"):
        await asyncio.sleep(POLL_SECONDS)
        evaluation = await session.call("get_eval", eval_id=evaluation["eval_id"])
        progress = evaluation["progress"] or {}
        if progress:
            bar.total, bar.n = progress["total"], progress["done"]
            bar.set_postfix(scoring=progress["phase"], refresh=False)
            bar.refresh()
    bar.close()
    if evaluation["status"] != "succeeded":
        raise LifecycleError(
            f"eval {evaluation['eval_id']} {evaluation['status']}: {evaluation['error']}"
        )
    return evaluation


async def first_conversation(session: Session, eval_id: str) -> dict[str, Any]:
    """The first scored row of an evaluation, as a conversation to ask the deployment."""
    raw = await session.client.read_resource(f"turing://evals/{eval_id}/predictions")
    first = json.loads(raw.contents[0].text.splitlines()[0])  # type: ignore[union-attr]
    return {"messages": first["messages"], "reference": first["reference"]}


def format_summary(summary: dict[str, Any]) -> str:
    """The lines a person wants at the end: scores, verdict, the deployment, a sample answer."""
    judged = summary["eval"]
    scores, comparisons = judged["scores"], judged["comparisons"]
    run = summary["run"]["result"]
    deployment = summary["deployment"]
    sample = summary["sample"]
    answer = sample["answer"]
    metric = judged["request"]["metrics"][0]
    lines = [
        "",
        "Turing lifecycle finished",
        f"  dataset      {summary['dataset']['dataset_id']} "
        f"({summary['dataset']['train_rows']} train rows)",
        f"  run          {summary['run']['run_id']}: {run['steps']} steps, "
        f"final loss {run['final_loss']:.3f}, {run['seconds']:.0f} s",
        f"  {metric:<12} (served GGUF via llama.cpp, {judged['rows']} rows, 95% CI)",
    ]
    for role in ("base", "champion", "model"):
        if role in scores:
            entry = scores[role][metric]
            name = "fine-tuned" if role == "model" else role
            lines.append(
                f"    {name:<11}{entry['value']:.1%} [{entry['ci'][0]:.1%}, {entry['ci'][1]:.1%}]"
            )
    for other, found in comparisons.items():
        test = found[metric]
        lines.append(
            f"    vs {other:<8}{test['difference']:+.1%}, {test['test']} p={test['p_value']:.2g}"
            f" ({'significant' if test['significant'] else 'not significant'})"
        )
    check = judged.get("export_check")
    if check:
        lines.append(f"  export       {check['message']}")
    verdict = judged["verdict"]
    lines += [
        f"  gate         {'passed' if verdict['passed'] else 'FAILED'}: "
        + "; ".join(entry["criterion"] + f" ({entry['status']})" for entry in verdict["criteria"]),
        f"  deployment   {deployment['deployment']} revision {deployment['revision']} -> "
        f"{deployment['version_id']}",
        f"  sample       {sample['messages'][-1]['content']!r}",
        f"    answer     {answer['text']!r} (expected {sample['reference']!r}; "
        f"{answer['latency_ms']:.0f} ms, {answer['completion_tokens']} tokens)",
        f"  wall time    {summary['wall_seconds']:.0f} s",
        "",
    ]
    return "\n".join(lines)


def plan_from_args(args: argparse.Namespace) -> LifecyclePlan:
    """The plan for `turing quickstart`: the shipped sample unless --data names a file."""
    options: dict[str, Any] = {}
    if args.columns:
        pairs = [item.split("=", 1) for item in args.columns.split(",")]
        if any(len(pair) != 2 for pair in pairs):
            raise LifecycleError(
                f"--columns {args.columns!r}: use role=column pairs, "
                "e.g. user=text,assistant=category"
            )
        options["columns"] = {role.strip(): column.strip() for role, column in pairs}
    if args.system_prompt:
        options["system_prompt"] = args.system_prompt
    hyperparameters = {"epochs": args.epochs} if args.epochs is not None else {}
    data = Path(args.data) if args.data else SAMPLE_DATA / "support_tickets.jsonl"
    return LifecyclePlan(
        data=data.resolve(),
        prepare_options=options,
        hyperparameters=hyperparameters,
        deployment=args.deployment,
    )


async def _quickstart(plan: LifecyclePlan) -> dict[str, Any]:
    # The server's own log would interleave with the progress bars; keep only its warnings.
    folders = [path.parent for path in (plan.data, plan.eval_data) if path is not None]
    async with Client(server_parameters(log_level="WARNING", input_dirs=folders)) as client:
        return await drive_lifecycle(Session(client), plan)


def run_quickstart(args: argparse.Namespace) -> int:
    """`turing quickstart`: run the lifecycle and print its summary; 1 on a failed step."""
    try:
        summary = asyncio.run(_quickstart(plan_from_args(args)))
    except (LifecycleError, BaseExceptionGroup) as exc:
        # Errors raised inside the client's task group arrive wrapped in exception groups.
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if not isinstance(exc, LifecycleError):
            raise
        sys.stderr.write(f"turing quickstart failed: {exc}\n")
        return 1
    sys.stdout.write(format_summary(summary))
    return 0
