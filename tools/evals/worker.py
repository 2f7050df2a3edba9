"""Evaluation worker: `python -m turing.tools.evals.worker EVAL_DIR` scores models on a job.

Reads `job.json` (written by `evals.start_eval`): the candidates to score, in order (the model,
then the base model and the deployment's champion beside it, then the model's PyTorch adapter
when the export is checked), the task rows and how to score them, the safety suites, and the
acceptance criteria. Appends progress to `metrics.jsonl`, writes every task answer to
`predictions.jsonl` and every safety answer to `safety.jsonl`, and the scores, comparisons and
verdict to `result.json`.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turing.server.jobs import write_json_atomic
from turing.tools.chat import read_chat_template
from turing.tools.datasets.jsonl import read_jsonl, write_jsonl
from turing.tools.evals import gates, safety, stats
from turing.tools.evals.metrics import Scorer, normalise

logger = logging.getLogger("turing.eval")

BATCH = 16
SAFETY_MAX_NEW_TOKENS = 64  # a refusal shows in the opening of an answer
MODEL, BASE, CHAMPION, MODEL_TORCH = "model", "base", "champion", "model_torch"
Progress = Callable[..., None]


@dataclass(frozen=True)
class Answer:
    """One generated answer; latency and tokens are known for the serving engine only."""

    text: str
    latency_ms: float | None = None
    completion_tokens: int | None = None


class LlamaCandidate:
    """A model answered through llama.cpp, exactly as deployments serve it."""

    def __init__(self, base_gguf: str, adapter: str | None) -> None:
        from turing.tools.query.engine import Engine

        self.engine = Engine(Path(base_gguf), Path(adapter) if adapter else None)
        self.template = self.engine.template

    def answer(self, prompts: list[list[dict[str, Any]]], max_new_tokens: int) -> list[Answer]:
        answers = []
        for prompt in prompts:
            done = self.engine.complete(prompt, max_tokens=max_new_tokens, temperature=0.0)
            answers.append(Answer(done.text, done.latency_ms, done.completion_tokens))
        return answers

    def log_likelihood(self, row: dict[str, Any]) -> tuple[float, int]:
        pieces = self.template.split_turns(row["messages"], row.get("tools"))
        return self.engine.answer_log_likelihood(pieces)

    def close(self) -> None:
        self.engine.close()


class TorchCandidate:
    """A model answered through PyTorch (transformers + peft), as it was trained."""

    def __init__(self, base_gguf: str, adapter: str | None) -> None:
        from turing.tools.modeling import load_model

        self.model, self.tokenizer = load_model(Path(base_gguf), Path(adapter) if adapter else None)
        self.template = read_chat_template(base_gguf)

    def answer(self, prompts: list[list[dict[str, Any]]], max_new_tokens: int) -> list[Answer]:
        from turing.tools.modeling import generate

        texts = generate(self.model, self.tokenizer, self.template, prompts, max_new_tokens)
        return [Answer(text) for text in texts]

    def log_likelihood(self, row: dict[str, Any]) -> tuple[float, int]:
        import torch

        from turing.tools.finetune.train import IGNORE, tokenize_conversation

        example = tokenize_conversation(
            row["messages"], self.tokenizer, self.template, 1 << 20, row.get("tools")
        )
        ids = torch.tensor([example.input_ids])
        labels = torch.tensor(example.labels[1:])
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, :-1].float()
        scored = labels != IGNORE
        log_probs = torch.log_softmax(logits[scored], dim=-1)
        picked = log_probs.gather(1, labels[scored].unsqueeze(1))
        return float(picked.sum()), int(scored.sum())

    def close(self) -> None:
        del self.model
        gc.collect()


Candidate = LlamaCandidate | TorchCandidate
BACKENDS: dict[str, Callable[[str, str | None], Candidate]] = {
    "llama_cpp": LlamaCandidate,
    "torch": TorchCandidate,
}


# ---- Scoring one candidate ----


def split_reference(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The conversation up to the final assistant turn, and that turn's text as the reference."""
    messages = row["messages"]
    return messages[:-1], messages[-1]["content"]


def answer_all(
    candidate: Candidate,
    prompts: list[list[dict[str, Any]]],
    max_new_tokens: int,
    tick: Callable[[int], None],
) -> list[Answer]:
    """Answer prompts in batches, reporting each batch done."""
    answers: list[Answer] = []
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start : start + BATCH]
        answers += candidate.answer(batch, max_new_tokens)
        tick(len(batch))
    return answers


def score_candidate(
    candidate: Candidate,
    job: dict[str, Any],
    rows: list[dict[str, Any]],
    tick: Callable[[int], None],
    with_safety: bool = True,
) -> dict[str, Any]:
    """Every answer and per-item score of one candidate: task rows, perplexity, safety.

    Without `with_safety` (the PyTorch side of an export check) the safety suites are skipped.
    """
    scorer = make_scorer(job)
    prompts = [split_reference(row)[0] for row in rows]
    answers = answer_all(candidate, prompts, job["max_new_tokens"], tick)
    task = []
    for row, answer in zip(rows, answers, strict=True):
        record = scorer.example(answer.text, split_reference(row)[1])
        record["answer"] = answer
        record["empty"] = not any(character.isalnum() for character in answer.text)
        task.append(record)
    scored: dict[str, Any] = {"task": task}

    if job["perplexity"]:
        scored["likelihood"] = []
        for row in rows:
            scored["likelihood"].append(candidate.log_likelihood(row))
            tick(1)
    if not with_safety:
        return scored

    suites = job.get("safety") or {}
    for suite in ("harmful", "safe"):
        if suites.get(suite):
            prompts = [[{"role": "user", "content": text}] for text in suites[suite]]
            scored[suite] = answer_all(candidate, prompts, SAFETY_MAX_NEW_TOKENS, tick)
    if suites.get("canaries"):
        canaries = [safety.Canary(**item) for item in suites["canaries"]]
        prompts = [[{"role": "user", "content": canary.prompt}] for canary in canaries]
        budget = max(SAFETY_MAX_NEW_TOKENS, *(len(c.answer) // 2 for c in canaries))
        scored["canaries"] = answer_all(candidate, prompts, budget, tick)
    return scored


def make_scorer(job: dict[str, Any]) -> Scorer:
    """The task scorer the job asks for."""
    spec = job["scorer"]
    return Scorer(
        spec["metrics"],
        labels=spec.get("labels"),
        schema=spec.get("schema"),
        pattern=spec.get("pattern"),
    )


def work_units(job: dict[str, Any], rows: int, role: str) -> int:
    """Answers (and likelihoods) one candidate produces: the unit of progress."""
    units = rows * (2 if job["perplexity"] else 1)
    if role == MODEL_TORCH:
        return units
    suites = job.get("safety") or {}
    return units + sum(len(suites.get(name) or []) for name in ("harmful", "safe", "canaries"))


# ---- Summaries ----


def summarise(
    job: dict[str, Any], rows: list[dict[str, Any]], scored: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Scores with confidence intervals, comparisons with base and champion, and the verdict."""
    scorer = make_scorer(job)
    resamples, seed = job.get("resamples", 1000), job.get("seed", 0)
    records = {role: [_plain(item) for item in found["task"]] for role, found in scored.items()}
    # Refusal rules and PII scans run once per model; scores and comparisons share them.
    outcomes = {
        role: _safety_outcomes(job, rows, found)
        for role, found in scored.items()
        if role != MODEL_TORCH
    }
    values: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, Any]] = {}
    for role, found in scored.items():
        table = _task_scores(scorer, records[role], resamples, seed)
        table.update(_serving_scores(found["task"], resamples, seed))
        if "likelihood" in found:
            table["perplexity"] = _perplexity(found["likelihood"], resamples, seed)
        if role in outcomes:
            table.update(_safety_scores(outcomes[role], resamples, seed))
        scores[role] = table
        values[role] = {metric: entry["value"] for metric, entry in table.items()}

    comparisons = {}
    for other in (BASE, CHAMPION):
        if other in scored:
            comparisons[other] = _compare(scorer, job, records, outcomes, other)
    result: dict[str, Any] = {
        "rows": len(rows),
        "metrics": scorer.metrics,
        "scores": scores,
        "comparisons": comparisons,
        "empty_answers": {
            role: sum(i["empty"] for i in found["task"]) for role, found in scored.items()
        },
    }
    if scorer.labels:
        result["confusion"] = scorer.confusion(records[MODEL])
    faults = []
    if MODEL_TORCH in scored:
        check = export_check(scorer, scored[MODEL], scored[MODEL_TORCH], job["export_tolerance"])
        result["export_check"] = check
        values[MODEL]["export_agreement"] = check["agreement"]
        if check["fault"]:
            faults.append(check["message"])
    if job.get("criteria") is not None:
        criteria = gates.parse_criteria(job["criteria"])
        result["verdict"] = gates.judge(
            criteria, values, champion=job.get("champion_version"), faults=faults
        )
    result["values"] = values
    return result


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in ("answer", "empty")}


def _task_scores(
    scorer: Scorer, records: list[dict[str, Any]], resamples: int, seed: int
) -> dict[str, Any]:
    table = {}
    corpus = scorer.aggregate(records)
    for metric in scorer.metrics:

        def aggregate(chosen: list[dict[str, Any]], metric: str = metric) -> float:
            return scorer.aggregate(chosen)[metric]

        ci = stats.interval(records, aggregate, resamples=resamples, seed=seed)
        table[metric] = {"value": round(corpus[metric], 4), "ci": _rounded(ci), "n": len(records)}
    return table


def _serving_scores(task: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    latencies = [item["answer"].latency_ms for item in task]
    if any(latency is None for latency in latencies):
        return {}  # not served by llama.cpp: no serving latency to speak of
    array = np.array(latencies, dtype=float)
    table = {}
    for metric, quantile in (("p50_latency_ms", 50), ("p95_latency_ms", 95)):
        ci = stats.bootstrap_ci(
            len(array),
            lambda index, q=quantile: float(np.percentile(array[index], q)),
            resamples=resamples,
            seed=seed,
        )
        value = float(np.percentile(array, quantile))
        table[metric] = {
            "value": round(value, 1),
            "ci": [round(ci[0], 1), round(ci[1], 1)],
            "n": len(array),
        }
    tokens = sum(item["answer"].completion_tokens or 0 for item in task)
    seconds = array.sum() / 1000
    table["tokens_per_second"] = {
        "value": round(tokens / seconds, 1) if seconds else 0.0,
        "n": len(array),
    }
    return table


def _perplexity(likelihood: list[tuple[float, int]], resamples: int, seed: int) -> dict[str, Any]:
    sums = np.array([pair[0] for pair in likelihood])
    counts = np.array([pair[1] for pair in likelihood])

    def perplexity(index: np.ndarray) -> float:
        tokens = counts[index].sum()
        return float(math.exp(-sums[index].sum() / tokens)) if tokens else float("nan")

    everything = np.arange(len(sums))
    ci = stats.bootstrap_ci(len(sums), perplexity, resamples=resamples, seed=seed)
    return {"value": round(perplexity(everything), 4), "ci": _rounded(ci), "n": int(counts.sum())}


def _safety_outcomes(
    job: dict[str, Any], rows: list[dict[str, Any]], found: dict[str, Any]
) -> dict[str, list[bool]]:
    """Per-prompt binary outcomes of each safety metric measured."""
    suites = job.get("safety") or {}
    outcomes: dict[str, list[bool]] = {}
    if "harmful" in found:
        outcomes["refusal_rate"] = [safety.is_refusal(a.text) for a in found["harmful"]]
    if "safe" in found:
        outcomes["over_refusal_rate"] = [safety.is_refusal(a.text) for a in found["safe"]]
    if "canaries" in found:
        canaries = [safety.Canary(**item) for item in suites["canaries"]]
        outcomes["canary_leak_rate"] = [
            safety.canary_leaked(a.text, canary)
            for a, canary in zip(found["canaries"], canaries, strict=True)
        ]
    if suites:
        # PII in any answer that the prompt did not already contain.
        pairs = [
            (item["answer"].text, _prompt_text(split_reference(row)[0]))
            for item, row in zip(found["task"], rows, strict=True)
        ]
        for name in ("harmful", "safe"):
            pairs += [
                (a.text, text)
                for a, text in zip(found.get(name, []), suites.get(name) or [], strict=True)
            ]
        outcomes["pii_rate"] = [bool(safety.emitted_pii(text, prompt)) for text, prompt in pairs]
    return outcomes


def _safety_scores(outcomes: dict[str, list[bool]], resamples: int, seed: int) -> dict[str, Any]:
    table = {}
    for metric, flags in outcomes.items():
        array = np.array(flags, dtype=float)
        ci = stats.bootstrap_ci(
            len(array),
            lambda index, a=array: float(a[index].mean()),
            resamples=resamples,
            seed=seed,
        )
        table[metric] = {
            "value": round(float(array.mean()), 4),
            "ci": _rounded(ci),
            "n": len(array),
        }
    return table


def _compare(
    scorer: Scorer,
    job: dict[str, Any],
    records: dict[str, list[dict[str, Any]]],
    outcomes: dict[str, dict[str, list[bool]]],
    role: str,
) -> dict[str, Any]:
    """The model against one other candidate, metric by metric, with a paired test each."""
    resamples, seed = job.get("resamples", 1000), job.get("seed", 0)
    compared = {}
    for metric in scorer.metrics:

        def aggregate(chosen: list[dict[str, Any]], metric: str = metric) -> float:
            return scorer.aggregate(chosen)[metric]

        compared[metric] = _rounded_comparison(
            stats.compare(
                records[MODEL], records[role], metric, aggregate, resamples=resamples, seed=seed
            )
        )
    mine, theirs = outcomes[MODEL], outcomes[role]
    for metric, flags in mine.items():
        a = [{metric: float(flag)} for flag in flags]
        b = [{metric: float(flag)} for flag in theirs[metric]]

        def mean(chosen: list[dict[str, Any]], metric: str = metric) -> float:
            return sum(item[metric] for item in chosen) / len(chosen)

        compared[metric] = _rounded_comparison(
            stats.compare(a, b, metric, mean, resamples=resamples, seed=seed, binary=True)
        )
    return compared


def export_check(
    scorer: Scorer, gguf: dict[str, Any], torch: dict[str, Any], tolerance: float
) -> dict[str, Any]:
    """Compare the served GGUF's answers with the PyTorch adapter's on the same rows.

    The export is at fault when any task score of the GGUF differs from the adapter's by more
    than `tolerance`. Single answers may differ without a fault: the served base is quantised,
    so answers near a tie can flip; `agreement` (the share of rows answered alike) shows how
    many did.
    """
    served = [normalise(item["answer"].text) for item in gguf["task"]]
    trained = [normalise(item["answer"].text) for item in torch["task"]]
    agreement = sum(a == b for a, b in zip(served, trained, strict=True)) / len(served)
    served_scores = scorer.aggregate([_plain(item) for item in gguf["task"]])
    trained_scores = scorer.aggregate([_plain(item) for item in torch["task"]])
    gaps = {metric: served_scores[metric] - trained_scores[metric] for metric in served_scores}
    worst = max(gaps, key=lambda metric: abs(gaps[metric]))
    fault = abs(gaps[worst]) > tolerance + gates.TOLERANCE
    summary = (
        f"{worst} {served_scores[worst]:.1%} served against {trained_scores[worst]:.1%} from "
        f"the PyTorch adapter; {agreement:.1%} of rows answered alike"
    )
    message = (
        f"export fault: {summary}, a gap above the tolerance of {tolerance:.1%}"
        if fault
        else f"export agrees: {summary}"
    )
    return {
        "agreement": round(agreement, 4),
        "tolerance": tolerance,
        "fault": fault,
        "message": message,
        "gguf": {metric: round(value, 4) for metric, value in served_scores.items()},
        "torch": {metric: round(value, 4) for metric, value in trained_scores.items()},
    }


def _rounded(pair: Any) -> list[float]:
    return [round(float(pair[0]), 4), round(float(pair[1]), 4)]


def _rounded_comparison(found: dict[str, Any]) -> dict[str, Any]:
    for key in ("value", "other", "difference"):
        found[key] = round(float(found[key]), 4)
    found["p_value"] = float(f"{found['p_value']:.3g}")  # tiny p-values keep their magnitude
    found["ci"] = _rounded(found["ci"])
    return found


def _prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(message.get("content") or "") for message in messages)


# ---- Files ----


def read_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The task rows of a job."""
    return read_jsonl(Path(job["rows_path"]))


def write_predictions(
    folder: Path, job: dict[str, Any], rows: list[dict[str, Any]], scored: dict[str, dict[str, Any]]
) -> None:
    """One line per task row with every candidate's answer and scores; one per safety prompt."""
    primary = job["scorer"]["metrics"][0]
    lines = []
    for index, row in enumerate(rows):
        prompt, reference = split_reference(row)
        line: dict[str, Any] = {"index": index, "messages": prompt, "reference": reference}
        for role, found in scored.items():
            item = found["task"][index]
            answer: Answer = item["answer"]
            entry = {"prediction": answer.text, **_plain(item)}
            entry["wrong"] = entry.get(primary, 0.0) < 1.0
            if answer.latency_ms is not None:
                entry["latency_ms"] = round(answer.latency_ms, 1)
            if "likelihood" in found:
                total, count = found["likelihood"][index]
                entry["answer_tokens"], entry["log_likelihood"] = count, round(total, 4)
            line[role] = entry
        if "reference_label" in line[MODEL]:
            line["label"] = line[MODEL]["reference_label"]
        lines.append(line)
    write_jsonl(lines, folder / "predictions.jsonl")

    suites = job.get("safety") or {}
    safety_lines = []
    for suite in ("harmful", "safe", "canaries"):
        texts = suites.get(suite) or []
        for index, text in enumerate(texts):
            prompt = text["prompt"] if suite == "canaries" else text
            line = {"suite": suite, "index": index, "prompt": prompt}
            for role, found in scored.items():
                if suite not in found:
                    continue
                answer = found[suite][index].text
                said: dict[str, Any] = {"output": answer, "pii": safety.emitted_pii(answer, prompt)}
                if suite == "canaries":
                    said["leaked"] = safety.canary_leaked(answer, safety.Canary(**text))
                else:
                    said["refused"] = safety.is_refusal(answer)
                    said["refusal_rule"] = safety.refusal_reason(answer)
                line[role] = said
            safety_lines.append(line)
    write_jsonl(safety_lines, folder / "safety.jsonl")


# ---- Entry point ----


def run(folder: Path) -> dict[str, Any]:
    """Score every candidate of the job and return the result."""
    job = json.loads((folder / "job.json").read_text())
    rows = read_rows(job)
    make_scorer(job)  # a bad scoring spec fails before any model loads
    started = time.time()
    units = {spec["role"]: work_units(job, len(rows), spec["role"]) for spec in job["candidates"]}
    total = sum(units.values())
    done = 0

    def progress(role: str, finished: int) -> None:
        event = {
            "type": "progress",
            "phase": role,
            "done": done,
            "total": total,
            "candidate_done": finished,
            "candidate_total": units[role],
            "elapsed_seconds": round(time.time() - started, 1),
        }
        with open(folder / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(event) + "\n")

    scored: dict[str, dict[str, Any]] = {}
    for spec in job["candidates"]:
        role = spec["role"]
        logger.info("scoring %s (%s, adapter %s)", role, spec["backend"], spec["adapter"])
        candidate = BACKENDS[spec["backend"]](spec["base_gguf"], spec["adapter"])
        finished = 0

        def tick(count: int, role: str = role) -> None:
            nonlocal done, finished
            done += count
            finished += count
            progress(role, finished)

        progress(role, 0)
        try:
            scored[role] = score_candidate(candidate, job, rows, tick, role != MODEL_TORCH)
        finally:
            candidate.close()

    write_predictions(folder, job, rows, scored)
    result = summarise(job, rows, scored)
    result.update(status="succeeded", seconds=round(time.time() - started, 1))
    return result


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    folder = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(folder)
    except SystemExit:
        write_json_atomic(folder / "result.json", {"status": "cancelled", "error": None})
        raise
    except Exception as exc:
        logger.exception("evaluation failed")
        write_json_atomic(
            folder / "result.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        sys.exit(1)
    write_json_atomic(folder / "result.json", result)
    logger.info("evaluation finished in %s s", result["seconds"])


if __name__ == "__main__":
    main()
