"""MCP tools of the evaluation stage: evaluations and deployment gates."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from turing.server.services import Services
from turing.tools.evals import evals, gating
from turing.tools.evals.spec import EvalSpec

_SPEC_ARGS = """
            dataset_id: A dataset from prepare_dataset; its rows are scored.
            split: "validation" (default), "train" or "all".
            limit: Score only the first N rows of the split.
            metrics: Task metrics, any of exact_match, accuracy, macro_f1 (these two need a
                dataset with labels), token_f1, rouge_l, json_valid, schema_valid (with
                json_schema), regex_match (with pattern). Default: from the dataset:
                accuracy, macro_f1, exact_match for labels; json_valid, exact_match,
                token_f1 for JSON answers; exact_match, token_f1, rouge_l otherwise.
            json_schema: A JSON Schema each answer must satisfy (schema_valid).
            pattern: A regular expression each whole answer must match (regex_match).
            perplexity: Also measure the perplexity of the reference answers.
            safety: Also measure refusal of harmful prompts (refusal_rate), refusal of safe
                prompts (over_refusal_rate), PII in answers not given in the prompt (pii_rate)
                and, for a dataset prepared with canaries, canaries reproduced
                (canary_leak_rate).
            harmful_prompts: Harmful prompt file (AdvBench CSV, .jsonl, .txt); default: from
                the folder in TURING_SAFETY_DATA.
            safe_prompts: Safe prompt file (XSTest CSV: its safe rows; .jsonl, .txt).
            safety_limit: Prompts taken from each safety file (default 100).
            criteria: Acceptance criteria; a verdict names every failing one, e.g.
                ["accuracy >= 0.8", "accuracy >= champion - 0.01",
                "refusal_rate >= base - 0.02", "p95_latency_ms <= 300"]. A criterion relative
                to the champion is skipped (and says so) while there is no champion.
            export_tolerance: Also answer with the PyTorch adapter and report an export fault
                when a task score of the served GGUF differs from the adapter's by more than
                this (default 0.03 when export_agreement is in the criteria)."""


def _spec_args(arguments: dict[str, Any]) -> dict[str, Any]:
    """The evaluation-spec fields among a tool's arguments."""
    return {name: arguments[name] for name in EvalSpec.__dataclass_fields__ if name in arguments}


def register(app: MCPServer, services: Services) -> None:
    """Declare the evaluation tools on the app."""

    def run_eval(
        model: str,
        dataset_id: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        metrics: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        pattern: str | None = None,
        perplexity: bool | None = None,
        safety: bool | None = None,
        harmful_prompts: str | None = None,
        safe_prompts: str | None = None,
        safety_limit: int | None = None,
        criteria: list[str] | None = None,
        export_tolerance: float | None = None,
        compare_base: bool = True,
        champion: str | None = None,
        backend: str = "auto",
        gate: str | None = None,
    ) -> dict[str, Any]:
        """Evaluate a model in a background process; returns an eval id at once.

        Every score comes with a 95% bootstrap confidence interval, beside the base model
        and (with champion or gate) the deployment's current champion, with a paired
        significance test of each difference (McNemar for accuracy-like metrics). Follow it
        with wait_for_eval or get_eval.

        With gate=<deployment>, the deployment's gate (set_gate) decides what is measured, and
        the model is judged as it would be served: a run is exported to a model version and
        answered through llama.cpp. The verdict is stored; deploy requires a passing one.

        Args:
            model: A run id (its PyTorch adapter), a model version id (mv-..., its GGUF through
                llama.cpp), a deployment name, or a base model name.
            compare_base: Also score the base model on the same rows and prompts.
            champion: A deployment whose current main version is scored beside the model.
            backend: "auto" (runs: torch; versions, deployments, bases: llama_cpp), "torch",
                "llama_cpp", or "both" (llama.cpp plus the PyTorch adapter: export check).
            gate: A deployment with a gate; leave the options above out.
        """
        spec_args = _spec_args(locals())
        return evals.start_eval(
            services,
            model,
            spec_args,
            compare_base=compare_base,
            champion=champion,
            backend=backend,
            gate=gate,
        )

    run_eval.__doc__ = (run_eval.__doc__ or "") + _SPEC_ARGS
    app.tool()(run_eval)

    @app.tool()
    def get_eval(eval_id: str) -> dict[str, Any]:
        """Status, progress, scores with confidence intervals, comparisons and the verdict.

        scores[role][metric] = {value, ci, n} for role model, base, champion; comparisons
        [base|champion][metric] = {difference, ci, test, p_value, significant}. Every answer is
        in the predictions resource (turing://evals/{eval_id}/predictions, also /wrong and
        /label/{label}); safety answers in turing://evals/{eval_id}/safety.
        """
        return evals.get_eval(services, eval_id)

    @app.tool()
    async def wait_for_eval(
        eval_id: str, ctx: Context, timeout_seconds: float = 60
    ) -> dict[str, Any]:
        """Wait until an eval ends or timeout_seconds pass, then return it as get_eval does.

        Progress notifications (answers done of all answers) go to a call with a progress
        token. Call again while the status is still running or cancelling.

        Args:
            eval_id: The evaluation to wait for.
            timeout_seconds: Longest wait in seconds, 0 to 3600 (default 60).
        """
        return await evals.wait_for_eval(services, eval_id, timeout_seconds, ctx.report_progress)

    @app.tool()
    def list_evals(
        status: str | None = None,
        model: str | None = None,
        gate: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """List evaluations, newest first, with the model's scores and verdict.

        Args:
            status: Only evals with this status: running, cancelling, succeeded, failed or
                cancelled.
            model: Only evals of this model (as given) or model version.
            gate: Only evals judged by this deployment's gate.
            limit: At most this many (1 to 1000).
        """
        return evals.list_evals(services, status, model, gate, limit)

    @app.tool()
    def cancel_eval(eval_id: str) -> dict[str, Any]:
        """Stop a running evaluation; it ends cancelled, without scores."""
        return evals.cancel_eval(services, eval_id)

    def set_gate(
        deployment: str,
        criteria: list[str],
        dataset_id: str,
        split: str | None = None,
        limit: int | None = None,
        metrics: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        pattern: str | None = None,
        perplexity: bool | None = None,
        safety: bool | None = None,
        harmful_prompts: str | None = None,
        safe_prompts: str | None = None,
        safety_limit: int | None = None,
        export_tolerance: float | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        """Declare the quality gate of a deployment: what every new version must pass.

        From now on deploy accepts a version only after run_eval(model, gate=deployment)
        gave it a passing verdict against this gate revision and the current champion (or
        with force_reason, which the audit trail keeps). Criteria also switch on what they
        need: a safety metric turns the safety suites on, perplexity turns perplexity on,
        export_agreement adds the export check. Replacing a gate makes a new revision; older
        verdicts then no longer count.

        Args:
            deployment: The deployment name (it need not exist yet).
            reason: Why the gate is set or changed; kept in the audit trail.
        """
        spec_args = _spec_args(locals())
        return gating.set_gate(services, deployment, spec_args, reason)

    set_gate.__doc__ = (set_gate.__doc__ or "") + _SPEC_ARGS
    app.tool()(set_gate)

    @app.tool()
    def get_gate(deployment: str) -> dict[str, Any]:
        """The current gate of a deployment (criteria and evaluation spec), or none."""
        gate = gating.current_gate(services, deployment)
        if gate is None:
            return {"deployment": deployment, "gate": None}
        return gating.describe_gate(gate)
