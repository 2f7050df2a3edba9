"""Model versions and deployments: export a run, register the version, route a deployment to it."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.base_models import DEFAULT_BASE_MODEL, get_base_model
from turing.tools.deploy.routing import Route, choose_route, parse_stored
from turing.tools.errors import InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.gguf"
MERGED_FILE = "model.gguf"
EXPORT_FORMATS = ("adapter", "merged")
ADAPTER_FORMAT = "gguf-lora-adapter"
MERGED_FORMAT_PREFIX = "gguf-merged-"  # followed by the dtype: gguf-merged-f16, gguf-merged-q8_0
TORCH_ADAPTER = "adapter"  # the PyTorch (peft) adapter the GGUF was exported from
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Deploys and route changes run in worker threads; one at a time keeps version ids and
# revision numbers unique.
DEPLOY_LOCK = threading.Lock()
_EXPORT_LOCKS: dict[str, threading.Lock] = {}
_EXPORT_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class ModelTarget:
    """Something that can answer prompts: a base model, a run, a version, or a deployment."""

    kind: str
    name: str
    base_model: str
    base_gguf: str
    adapter_gguf: str | None = None
    adapter_dir: str | None = None
    version_id: str | None = None
    deployment: str | None = None
    revision: int | None = None
    shadows: tuple[str, ...] = ()  # versions this query is mirrored to, without answering
    # A remote version answers from an OpenAI-compatible server instead of a local GGUF.
    endpoint: str | None = None
    remote_model: str | None = None
    api_key_env: str | None = None


def export_run(
    services: Services, run_id: str, format: str = "adapter", dtype: str = "f16"
) -> dict[str, Any]:
    """Export a succeeded run's adapter to GGUF and register it as a model version (once).

    Versions are content-addressed: exporting the same adapter weights in the same format
    (and dtype) again returns the same version.

    Args:
        services: The server's services.
        run_id: A succeeded run.
        format: "adapter" (a llama.cpp LoRA adapter served over the shared base GGUF) or
            "merged" (one GGUF of the base with the adapter folded into its weights).
        dtype: Weight type of a merged export: "f16" or "q8_0". An adapter GGUF is f32.

    Raises:
        InvalidInputError: An unknown format or dtype, or an adapter the export refuses.
        ConflictError: The run has not succeeded.
    """
    from turing.tools.deploy.merge import MERGED_DTYPES
    from turing.tools.finetune.runs import adapter_dir, get_run

    if format not in EXPORT_FORMATS:
        raise InvalidInputError(
            f"format={format!r}: use 'adapter' (a LoRA GGUF served over the shared base model) "
            "or 'merged' (one GGUF with the adapter folded into the base's weights)"
        )
    if format == "merged" and dtype not in MERGED_DTYPES:
        raise InvalidInputError(
            f"dtype={dtype!r}: a merged export is written in one of {', '.join(MERGED_DTYPES)}"
        )
    if format == "adapter" and dtype != "f16":
        raise InvalidInputError(
            f"dtype={dtype!r} applies to merged exports only; an adapter GGUF keeps its small "
            "LoRA matrices in f32 (leave dtype out, or use format='merged')"
        )
    from turing.tools.deploy.lineage import write_model_card

    run = get_run(services, run_id)
    version = _register_version(services, run, adapter_dir(services, run_id), format, dtype)
    write_model_card(services, version["id"])  # MODEL_CARD.md beside the artifact, kept current
    return version


def deploy(
    services: Services,
    model: str,
    deployment: str,
    reason: str = "",
    force_reason: str = "",
    actor: str = "",
    environment: str | None = None,
) -> dict[str, Any]:
    """Route all of a deployment's traffic to a model version, if its gate lets it.

    Args:
        services: The server's services.
        model: A succeeded run (exported to a version now) or a model version id (mv-...).
        deployment: The endpoint's name; created on first deploy.
        reason: Why this revision exists; kept with it.
        force_reason: Deploy even without a passing gate verdict; kept in the audit trail.
        actor: Who deploys (a person or an agent), kept in the audit trail.
        environment: dev, staging or prod; a new deployment is in dev unless given, an
            existing one moves to the environment given.

    Raises:
        ConflictError: The deployment has a gate and the version has no passing verdict
            against it (and no force_reason was given).
    """
    from turing.tools.evals import gating

    check_new_deployment(services, deployment)
    check_environment(environment)
    version = find_version(services, model)
    force_reason = force_reason.strip()
    with DEPLOY_LOCK:
        exists = services.registry.find("deployments", deployment) is not None
        previous = current_routes(services, deployment) if exists else []
        if previous:
            serving = get_version_base(services, previous)
            if serving != version["base_model"]:
                raise InvalidInputError(
                    f"{version['id']} is built on base model {version['base_model']!r} but "
                    f"{deployment!r} serves base model {serving!r}; every route of a "
                    "deployment shares one base model"
                )
        champion = champion_of(previous) if previous else None
        check = gating.check_deploy(services, version["id"], deployment, champion)
        if not check["passed"] and not force_reason:
            raise gating.refuse_deploy(version["id"], deployment, check)
        # Shadow routes keep mirroring: replacing the live version does not end an experiment.
        shadows = [r for r in previous if r.shadow and r.version_id != version["id"]]
        deployed = _route_all(
            services, version, deployment, reason or f"deploy {model}", shadows, environment
        )
        action = "forced_deploy" if not check["passed"] else "deploy"
        audit.record(
            services,
            action,
            deployment,
            force_reason if action == "forced_deploy" else reason,
            version_id=version["id"],
            revision=deployed["revision"],
            routes=deployed["routes"],
            previous_routes=[route.describe() for route in previous],
            previous_champion=champion,
            gated=check["gated"],
            eval_id=check.get("eval_id"),
            overridden=check["problems"],
            actor=actor,
        )
    deployed["gate"] = check
    return deployed


def find_version(services: Services, model: str) -> dict[str, Any]:
    """The model version a run (exported now, once), a version id or an alias names."""
    from turing.tools.deploy import aliases

    if aliases.is_reference(model):
        model = aliases.resolve_reference(services, model)
    if model.startswith("mv-"):
        return services.registry.get("model_versions", model, "model version")
    if model.startswith("run-"):
        return export_run(services, model)
    raise InvalidInputError(
        f"model {model!r}: give a succeeded run id (run-...), a model version id (mv-...) or "
        "an alias of a deployment's version (deployment@alias, e.g. 'triage@champion')"
    )


def check_new_deployment(services: Services, deployment: str) -> None:
    """Refuse a name no deployment may take: a malformed one, or a base model's."""
    check_deployment_name(deployment)
    if services.registry.find("base_models", deployment) or deployment == DEFAULT_BASE_MODEL:
        raise InvalidInputError(
            f"deployment name {deployment!r} is a base model's name; choose another name"
        )


def check_environment(environment: str | None) -> None:
    """Refuse an environment other than dev, staging or prod (None: keep or default)."""
    if environment is not None and environment not in access.ENVIRONMENTS:
        raise InvalidInputError(
            f"environment={environment!r}: use one of {', '.join(access.ENVIRONMENTS)}"
        )


def champion_version(services: Services, deployment: str) -> str | None:
    """The version serving most of a deployment's traffic now, or None before its first deploy."""
    if services.registry.find("deployments", deployment) is None:
        return None
    return champion_of(current_routes(services, deployment))


def champion_of(routes: list[Route]) -> str:
    """The live route with the highest weight (the first one on ties)."""
    live = [route for route in routes if not route.shadow]
    return max(live, key=lambda route: route.weight).version_id


def get_version_base(services: Services, routes: list[Route]) -> str:
    """The base model the versions of these routes are built on (they share one)."""
    return str(services.registry.get("model_versions", routes[0].version_id)["base_model"])


def _route_all(
    services: Services,
    version: dict[str, Any],
    deployment: str,
    reason: str,
    shadows: list[Route],
    environment: str | None = None,
) -> dict[str, Any]:
    routes = [Route(version["id"], 100), *shadows]
    revision = write_revision(services, deployment, routes, reason, environment)
    logger.info(
        "deployment %s revision %d routes to %s (run %s)",
        deployment,
        revision,
        version["id"],
        version["run_id"],
    )
    return {
        "deployment": deployment,
        "revision": revision,
        "version_id": version["id"],
        "routes": [route.describe() for route in routes],
        "gguf_path": version["gguf_path"],
        "base_model": version["base_model"],
    }


def write_revision(
    services: Services,
    deployment: str,
    routes: list[Route],
    reason: str,
    environment: str | None = None,
) -> int:
    """Store the deployment's next revision with these routes and make it current.

    A new deployment belongs to the caller's project (for a caller of every project, to the
    project of the version it routes most traffic to) and to `environment`, dev by default;
    an existing one moves to `environment` when it is given. Callers hold DEPLOY_LOCK, so
    revision numbers stay unique and in order.
    """
    previous = services.registry.find("deployments", deployment)
    revision = 1 if previous is None else previous["revision"] + 1
    revision_row = {
        "deployment": deployment,
        "revision": revision,
        "routes": [route.stored() for route in routes],
        "reason": reason,
        "created_at": utc_now(),
    }
    writes: list[tuple[str, str, Any, dict[str, Any]]] = [
        ("insert", "deployment_revisions", None, revision_row)
    ]
    if previous is None:
        champion = services.registry.find("model_versions", champion_of(routes)) or {}
        created = {
            "name": deployment,
            "revision": 1,
            "created_at": utc_now(),
            "project": access.owner_project(champion.get("project")),
            "environment": environment or "dev",
        }
        writes.insert(0, ("insert", "deployments", None, created))
    else:
        changes: dict[str, Any] = {"revision": revision}
        if environment is not None:
            changes["environment"] = environment
        writes.append(("update", "deployments", deployment, changes))
    services.registry.write_many(writes)
    release_unrouted_engines(services)
    return revision


def release_unrouted_engines(services: Services) -> None:
    """Unload the engines that no deployment routes traffic to any more, freeing their memory.

    A version replaced by a deploy, a rollback or a route change stops holding memory at once
    (after its running requests); queried again by id, it is loaded again.
    """
    if "engines" not in vars(services):
        return  # no engine was ever loaded by this process
    keep: set[tuple[Path, Path | None]] = set()
    for row in services.registry.rows("deployments"):
        for route in revision_routes(services, row["name"], row["revision"]):
            if route.weight == 0 and not route.shadow:
                continue
            target = version_target(services, route.version_id)
            if target.base_gguf:
                adapter = Path(target.adapter_gguf) if target.adapter_gguf else None
                keep.add((Path(target.base_gguf), adapter))
    for base, adapter in services.engines.retain(keep):
        logger.info("unloaded engine %s (adapter %s): no route serves it", base, adapter)


def _register_version(
    services: Services, run: dict[str, Any], source: Path, format: str, dtype: str
) -> dict[str, Any]:
    """Export the adapter once per format; the version id hashes the adapter's weights.

    An adapter export's id is the weights' hash (as it always was); a merged export's id
    hashes the weights' hash with its format, so each (weights, format, dtype) is one version.
    """
    weights_sha = file_sha256(source / "adapter_model.safetensors")
    kind = ADAPTER_FORMAT if format == "adapter" else f"{MERGED_FORMAT_PREFIX}{dtype}"
    project = access.owner_project(run.get("project"))
    if format == "adapter":
        version_id = "mv-" + weights_sha[:12]
    else:
        version_id = "mv-" + hashlib.sha256(f"{weights_sha}\0{kind}".encode()).hexdigest()[:12]
    if project != access.DEFAULT_PROJECT:  # equal weights in two projects are two versions
        version_id = "mv-" + hashlib.sha256(f"{version_id}\0{project}".encode()).hexdigest()[:12]

    # One export per version at a time: a merge takes a while and much memory, and a second
    # caller should get the first one's version rather than merge again.
    with _export_lock(version_id):
        existing = services.registry.find("model_versions", version_id)
        if existing is not None:
            return existing
        base = get_base_model(services, run["base_model"])
        folder = services.workspace.folder("models", version_id)
        out = _write_gguf(Path(base["gguf_path"]), source, folder, format, dtype)
        # The version keeps its own copy of the PyTorch adapter: the run's output can later be
        # switched to another checkpoint (select_checkpoint), which must not change this version.
        keep = folder / TORCH_ADAPTER
        keep.mkdir(exist_ok=True)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy2(source / name, keep / name)
        row = {
            "id": version_id,
            "run_id": run["id"],
            "base_model": base["name"],
            "format": kind,
            "gguf_path": str(out),
            "sha256": file_sha256(out),
            "created_at": utc_now(),
            "project": project,
        }
        try:
            services.registry.insert("model_versions", row)
        except sqlite3.IntegrityError:  # another server on this workspace registered it first
            return services.registry.get("model_versions", version_id, "model version")
    logger.info(
        "model version %s (%s) exported from run %s to %s", version_id, kind, run["id"], out
    )
    return services.registry.get("model_versions", version_id, "model version")


def _write_gguf(base_gguf: Path, source: Path, folder: Path, format: str, dtype: str) -> Path:
    from turing.tools.deploy.gguf_export import export_lora_adapter
    from turing.tools.deploy.merge import export_merged

    if format == "adapter":
        return export_lora_adapter(source, base_gguf, folder / ADAPTER_FILE)
    return export_merged(base_gguf, source, folder / MERGED_FILE, dtype)


def _export_lock(version_id: str) -> threading.Lock:
    with _EXPORT_LOCKS_GUARD:
        return _EXPORT_LOCKS.setdefault(version_id, threading.Lock())


def resolve_model(services: Services, ref: str) -> ModelTarget:
    """Find what a model reference names: a run id, a version id, an alias, a deployment or a
    base model.

    An alias (`deployment@alias`) names one version, so it answers from that version alone:
    no routing, no shadows, and its queries are not the deployment's traffic.
    """
    from turing.tools.deploy import aliases

    if aliases.is_reference(ref):
        version_id = aliases.resolve_reference(services, ref)
        return dataclasses.replace(version_target(services, version_id), kind="alias", name=ref)
    if ref.startswith("run-"):
        run = services.registry.get("runs", ref, "run")
        base = get_base_model(services, run["base_model"])
        adapter = (run["result"] or {}).get("adapter_dir")
        if run["status"] != "succeeded" or not adapter:
            raise InvalidInputError(f"run {ref} is {run['status']}; only a succeeded run answers")
        return ModelTarget("run", ref, base["name"], base["gguf_path"], adapter_dir=adapter)
    if ref.startswith("mv-"):
        return version_target(services, ref)
    deployment = services.registry.find("deployments", ref)
    if deployment is not None:
        version_id = champion_of(current_routes(services, ref))
        return version_target(services, version_id, ref, deployment["revision"])
    if services.registry.find("base_models", ref) is not None or ref == "smollm2-135m-instruct":
        base = get_base_model(services, ref)
        return ModelTarget("base", ref, base["name"], base["gguf_path"])
    raise NotFoundError(
        f"no model {ref!r}: give a run id (run-...), a model version id (mv-...), a deployment "
        "name, an alias of a deployment's version (deployment@alias), or a base model name"
    )


def route_query(
    services: Services,
    ref: str,
    routing_key: str | None = None,
    rng: random.Random | None = None,
) -> ModelTarget:
    """The target that serves one query: for a deployment, the route its weights choose.

    A routing key makes the choice sticky within the revision (see routing.choose_route); the
    target names the revision's shadow versions, to which the query is mirrored. An alias
    (`deployment@alias`) is answered by the version it points to now, without routing.
    """
    deployment = services.registry.find("deployments", ref)
    if deployment is None:
        target = resolve_model(services, ref)
        if target.kind == "run":
            exported = [
                row["id"]
                for row in services.registry.rows(
                    "model_versions", "run_id = ?", [ref], order_by="created_at"
                )
            ]
            if exported:
                raise InvalidInputError(
                    f"a run is not served itself: query its model version "
                    f"({', '.join(exported)}) or a deployment that routes to it"
                )
            raise InvalidInputError(
                f"run {ref} has no GGUF to serve yet: export_model or deploy it, then query "
                "the model version (mv-...) or the deployment"
            )
        return target
    revision = deployment["revision"]
    routes = revision_routes(services, ref, revision)
    chosen = choose_route(routes, routing_key, ref, revision, rng)
    target = version_target(services, chosen.version_id, ref, revision)
    shadows = tuple(route.version_id for route in routes if route.shadow)
    return dataclasses.replace(target, shadows=shadows)


def current_routes(services: Services, deployment: str) -> list[Route]:
    """The routes of a deployment's current revision."""
    revision = services.registry.get("deployments", deployment, "deployment")["revision"]
    return revision_routes(services, deployment, revision)


def revision_routes(services: Services, deployment: str, revision: int) -> list[Route]:
    """The routes of one revision of a deployment."""
    row = services.registry.get("deployment_revisions", (deployment, revision), "revision")
    return parse_stored(row["routes"])


def describe_deployments(services: Services) -> list[dict[str, Any]]:
    """Every deployment with its current revision and routes."""
    described = []
    where, params = access.project_clause()
    for row in services.registry.rows("deployments", where, params, order_by="name"):
        revision = services.registry.get("deployment_revisions", (row["name"], row["revision"]))
        described.append(
            {
                "deployment": row["name"],
                "project": row.get("project"),
                "environment": row.get("environment"),
                "revision": row["revision"],
                "routes": [route.describe() for route in parse_stored(revision["routes"])],
                "reason": revision["reason"],
                "updated_at": revision["created_at"],
            }
        )
    return described


def version_target(
    services: Services, version_id: str, deployment: str | None = None, revision: int | None = None
) -> ModelTarget:
    """A model version as something that answers: its GGUF, and its PyTorch adapter copy.

    A merged version is served from its own GGUF alone (base_gguf is the merged file, no
    adapter GGUF). It has no PyTorch counterpart of that same file, so adapter_dir is None:
    a PyTorch backend would apply the adapter a second time over the merged weights.
    """
    version = services.registry.get("model_versions", version_id, "model version")
    base = get_base_model(services, version["base_model"])
    if version.get("endpoint"):
        return ModelTarget(
            kind="deployment" if deployment else "version",
            name=deployment or version_id,
            base_model=base["name"],
            base_gguf="",
            version_id=version_id,
            deployment=deployment,
            revision=revision,
            endpoint=version["endpoint"],
            remote_model=version["remote_model"],
            api_key_env=version["api_key_env"],
        )
    if is_merged(version):
        base_gguf, adapter_gguf, adapter_dir = version["gguf_path"], None, None
    else:
        kept = Path(version["gguf_path"]).parent / TORCH_ADAPTER
        run = services.registry.find("runs", version["run_id"]) or {}
        base_gguf, adapter_gguf = base["gguf_path"], version["gguf_path"]
        adapter_dir = str(kept) if kept.is_dir() else (run.get("result") or {}).get("adapter_dir")
    return ModelTarget(
        kind="deployment" if deployment else "version",
        name=deployment or version_id,
        base_model=base["name"],
        base_gguf=base_gguf,
        adapter_gguf=adapter_gguf,
        adapter_dir=adapter_dir,
        version_id=version_id,
        deployment=deployment,
        revision=revision,
    )


def is_merged(version: dict[str, Any]) -> bool:
    """Whether a model version row is a merged GGUF (base and adapter in one file)."""
    return str(version["format"]).startswith(MERGED_FORMAT_PREFIX)


def check_deployment_name(name: str) -> None:
    """Refuse a deployment name that could be mistaken for another kind of id."""
    if not NAME_PATTERN.fullmatch(name) or name.startswith(("run-", "mv-")):
        raise InvalidInputError(
            f"deployment name {name!r} is not allowed: use 1-64 letters, digits, '-', '_' or '.', "
            "not starting with 'run-' or 'mv-'"
        )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
