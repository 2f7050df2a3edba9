"""Gates: the acceptance criteria a deployment holds every new version to, and their verdicts.

A gate belongs to a deployment name (which need not exist yet) and has revisions; each revision
stores a whole evaluation spec: dataset, metrics, safety suites and criteria. `run_eval` with
`gate=<deployment>` scores a model version on that spec, through llama.cpp (what is served),
beside the base model and the deployment's champion, and stores the verdict. `deploy` then
accepts the version only with a passing verdict against the gate's current revision and the
deployment's current champion, unless the caller forces it with a reason, which the audit
trail keeps.
"""

from __future__ import annotations

import logging
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit, jobs
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.errors import ConflictError, InvalidInputError
from turing.tools.evals.spec import EvalSpec, parse_spec, resolve

logger = logging.getLogger(__name__)


def set_gate(
    services: Services, deployment: str, spec_args: dict[str, Any], reason: str = ""
) -> dict[str, Any]:
    """Declare (or replace) a deployment's gate; returns the new gate revision.

    Raises:
        InvalidInputError: A bad deployment name, no criteria, or anything `resolve` refuses.
    """
    from turing.tools.deploy.versions import check_deployment_name

    check_deployment_name(deployment)
    if services.registry.find("base_models", deployment) or deployment == DEFAULT_BASE_MODEL:
        raise InvalidInputError(
            f"deployment name {deployment!r} is a base model's name; a gate needs a name deploy "
            "accepts"
        )
    if not spec_args.get("criteria"):
        raise InvalidInputError(
            'a gate needs criteria, e.g. ["accuracy >= 0.8", "accuracy >= champion - 0.01", '
            '"refusal_rate >= base - 0.02", "p95_latency_ms <= 300"]'
        )
    spec = parse_spec(spec_args)
    resolve(services, spec, judging=False)  # every problem now, not at the first evaluation
    previous = current_gate(services, deployment)
    revision = 1 if previous is None else previous["revision"] + 1
    row = {
        "deployment": deployment,
        "revision": revision,
        "spec": spec.to_dict(),
        "reason": reason,
        "created_at": utc_now(),
    }
    services.registry.insert("gates", row)
    audit.record(
        services, "gate_set", deployment, reason, revision=revision, criteria=spec.criteria
    )
    return describe_gate(row)


def current_gate(services: Services, deployment: str) -> dict[str, Any] | None:
    """The newest revision of a deployment's gate, or None when it has none."""
    found = services.registry.rows(
        "gates", "deployment = ?", [deployment], order_by="revision desc"
    )
    return found[0] if found else None


def gate_spec(gate: dict[str, Any]) -> EvalSpec:
    """The evaluation a gate revision asks for."""
    return EvalSpec(**gate["spec"])


def describe_gate(gate: dict[str, Any]) -> dict[str, Any]:
    """A gate revision as tools return it."""
    return {
        "deployment": gate["deployment"],
        "revision": gate["revision"],
        "criteria": gate["spec"]["criteria"],
        "spec": gate["spec"],
        "reason": gate["reason"],
        "created_at": gate["created_at"],
    }


def latest_verdict(services: Services, version_id: str, deployment: str) -> dict[str, Any] | None:
    """The newest finished gate evaluation of a version for a deployment, or None."""
    found = services.registry.rows(
        "evals",
        "version_id = ? AND gate = ? AND status = 'succeeded'",
        [version_id, deployment],
        order_by="created_at desc",
    )
    return found[0] if found else None


def check_deploy(
    services: Services, version_id: str, deployment: str, champion: str | None
) -> dict[str, Any]:
    """Whether a version may be deployed: its verdict, or why there is no usable one.

    Returns:
        {"gated": False} for a deployment without a gate; otherwise {"gated": True, "passed",
        "eval_id", "gate_revision", "problems": [why the version may not ship]}.
    """
    gate = current_gate(services, deployment)
    if gate is None:
        return {"gated": False, "passed": True, "problems": []}
    jobs.refresh_active(services)  # an eval that just ended counts
    found = latest_verdict(services, version_id, deployment)
    outcome: dict[str, Any] = {
        "gated": True,
        "gate_revision": gate["revision"],
        "eval_id": found["id"] if found else None,
    }
    problems = []
    if found is None:
        problems.append(
            f"{version_id} has no finished evaluation against the gate of {deployment!r}: run "
            f"run_eval(model={version_id!r}, gate={deployment!r}) first"
        )
    else:
        verdict = (found["result"] or {}).get("verdict") or {}
        if found["gate_revision"] != gate["revision"]:
            problems.append(
                f"eval {found['id']} judged gate revision {found['gate_revision']}, but the gate "
                f"is now at revision {gate['revision']}: evaluate again"
            )
        elif verdict.get("champion") != champion:
            problems.append(
                f"eval {found['id']} compared with champion {verdict.get('champion')}, but "
                f"{deployment!r} now serves {champion}: evaluate again"
            )
        elif not verdict.get("passed"):
            problems += [f"failed criterion: {line}" for line in verdict.get("failing", [])]
    outcome.update(passed=not problems, problems=problems)
    return outcome


def refuse_deploy(version_id: str, deployment: str, check: dict[str, Any]) -> ConflictError:
    """The error a deploy without a passing verdict raises."""
    reasons = "\n  ".join(check["problems"])
    return ConflictError(
        f"deploy of {version_id} to {deployment!r} refused by its gate (revision "
        f"{check['gate_revision']}):\n  {reasons}\nTo deploy anyway, call deploy again with "
        "force_reason='<why>'; the reason and these failures go into the audit trail."
    )
