"""Alias names and route aliases, the checkpoint a version came from, and the model card."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from turing.tools.deploy import aliases, lineage
from turing.tools.deploy.routing import Route
from turing.tools.errors import InvalidInputError
from turing.tools.finetune import checkpoints


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("triage@champion", ("triage", "champion")),
        ("support.v2@stable", ("support.v2", "stable")),
    ],
)
def test_an_alias_reference_splits_into_deployment_and_alias(
    ref: str, parsed: tuple[str, str]
) -> None:
    assert aliases.is_reference(ref)
    assert aliases.parse_reference(ref) == parsed


@pytest.mark.parametrize("ref", ["@champion", "triage@", "triage@a@b", "@"])
def test_a_malformed_alias_reference_is_refused_with_its_form(ref: str) -> None:
    with pytest.raises(InvalidInputError, match="write deployment@alias"):
        aliases.parse_reference(ref)


@pytest.mark.parametrize("ref", ["triage", "mv-0123456789ab", "run-0123"])
def test_other_model_references_are_not_aliases(ref: str) -> None:
    assert not aliases.is_reference(ref)


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        ("champion", "follows the deployment's routes"),
        ("challenger", "follows the deployment's routes"),
        ("Stable", "is not allowed"),
        ("2nd", "is not allowed"),
        ("a" * 33, "is not allowed"),
        ("has space", "is not allowed"),
        ("", "is not allowed"),
    ],
)
def test_alias_names_that_cannot_be_set_are_refused(alias: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        aliases.check_alias_name(alias)


@pytest.mark.parametrize("alias", ["stable", "candidate-2", "prod_eu", "a" * 32])
def test_well_formed_alias_names_are_accepted(alias: str) -> None:
    aliases.check_alias_name(alias)


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([Route("mv-a", 100)], {"champion": "mv-a"}),
        ([Route("mv-a", 90), Route("mv-b", 10)], {"champion": "mv-a", "challenger": "mv-b"}),
        ([Route("mv-a", 10), Route("mv-b", 90)], {"champion": "mv-b", "challenger": "mv-a"}),
        (
            [Route("mv-a", 50), Route("mv-b", 30), Route("mv-c", 20)],
            {"champion": "mv-a", "challenger": "mv-b"},
        ),
        # A shadow or a weight-0 route answers nobody, so it is nobody's challenger.
        ([Route("mv-a", 100), Route("mv-b", 0, True)], {"champion": "mv-a"}),
        ([Route("mv-a", 100), Route("mv-b", 0)], {"champion": "mv-a"}),
        # Two routes tie behind the champion: no challenger can be named.
        ([Route("mv-a", 50), Route("mv-b", 25), Route("mv-c", 25)], {"champion": "mv-a"}),
    ],
)
def test_champion_and_challenger_follow_the_route_weights(
    routes: list[Route], expected: dict[str, str]
) -> None:
    assert aliases.route_aliases(routes) == expected


def test_tied_challengers_are_all_named() -> None:
    routes = [Route("mv-a", 50), Route("mv-b", 25), Route("mv-c", 25)]
    assert aliases.challengers_of(routes) == ["mv-b", "mv-c"]


# ---- The checkpoint a version was exported from ----


def _write_checkpoint(run_dir: Path, step: int, weights: bytes) -> None:
    def write(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(weights)
        (folder / "adapter_config.json").write_text("{}")

    checkpoints.write_checkpoint(run_dir, step, write, {"metrics": {"validation_loss": step / 10}})


def _version_with_copy(folder: Path, weights: bytes | None) -> dict[str, Any]:
    folder.mkdir(parents=True)
    if weights is not None:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    return {"gguf_path": str(folder / "adapter.gguf")}


def test_the_checkpoint_is_found_by_the_hash_of_the_versions_adapter_copy(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    for step, weights in ((2, b"early"), (4, b"middle"), (6, b"late")):
        _write_checkpoint(run_dir, step, weights)
    run = {"folder": str(run_dir)}

    found = lineage.find_checkpoint(_version_with_copy(tmp_path / "v1", b"middle"), run)
    assert found is not None
    assert found["step"] == 4 and found["metrics"] == {"validation_loss": 0.4}

    # The run's output moving to another checkpoint later does not change the answer.
    checkpoints.set_output(run_dir, checkpoints.find_checkpoint(run_dir, 6))
    assert lineage.find_checkpoint(_version_with_copy(tmp_path / "v2", b"middle"), run) == found


@pytest.mark.parametrize("weights", [b"changed", None], ids=["other-weights", "no-copy"])
def test_a_version_matching_no_checkpoint_has_none(tmp_path: Path, weights: bytes | None) -> None:
    run_dir = tmp_path / "run"
    _write_checkpoint(run_dir, 2, b"early")
    version = _version_with_copy(tmp_path / "v", weights)
    assert lineage.find_checkpoint(version, {"folder": str(run_dir)}) is None
    shutil.rmtree(run_dir)
    assert lineage.find_checkpoint(version, {"folder": str(run_dir)}) is None


# ---- The model card ----


def _lineage(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "version": {
            "id": "mv-0123456789ab",
            "format": "gguf-lora-adapter",
            "sha256": "ab" * 32,
            "path": "/models/mv-0123456789ab/adapter.gguf",
            "base_model": "tiny",
            "created_at": "2026-12-01T00:00:00+00:00",
        },
        "base_model": {"name": "tiny", "gguf_path": "/tiny.gguf", "architecture": "llama"},
        "dataset": None,
        "run": None,
        "checkpoint": None,
        "evals": [],
        "deployments": [],
        "aliases": [],
    }
    return {**found, **changes}


def _eval(eval_id: str, passed: bool | None, scores: dict[str, Any], **extra: Any) -> dict:
    return {
        "eval_id": eval_id,
        "status": "succeeded",
        "dataset_id": "ds-1",
        "split": "validation",
        "backend": "llama_cpp",
        "gate": "triage",
        "gate_revision": 1,
        "passed": passed,
        "failing": None if passed else ["accuracy 0.5 >= 0.9: failed"],
        "scores": scores,
        "export_agreement": None,
        **extra,
    }


def test_a_card_without_data_run_or_evals_says_what_is_unknown() -> None:
    card = lineage.render_card(_lineage())
    assert card.startswith("# Model card: mv-0123456789ab\n")
    assert "The dataset of this version is not in the registry." in card
    assert "The run of this version is not in the registry." in card
    assert "No evaluation of this version has finished: its quality is unmeasured." in card
    assert "No safety suite has been run on this version" in card
    assert "- Not evaluated yet: no score supports putting it in front of users." in card
    assert "- No gate verdict has passed: a deploy needs a force_reason." in card
    assert card.rstrip().splitlines()[-1].startswith("_Generated from the Turing registry at ")


def test_a_card_reports_the_latest_scores_with_intervals_and_safety_apart() -> None:
    older = _eval("ev-old", False, {"accuracy": {"value": 0.5, "ci": [0.3, 0.7], "n": 40}})
    newer = _eval(
        "ev-new",
        True,
        {
            "accuracy": {"value": 0.875, "ci": [0.8, 0.95], "n": 400},
            "refusal_rate": {"value": 0.9, "ci": [0.85, 0.95], "n": 200},
        },
        export_agreement=0.98,
    )
    card = lineage.render_card(_lineage(evals=[older, newer]))
    evaluation = card.split("## Evaluation")[1].split("## Safety")[0]
    safety = card.split("## Safety")[1].split("## Intended use")[0]
    assert "Latest evaluation `ev-new`" in evaluation
    assert "| accuracy | 0.875 [0.8, 0.95] | 400 |" in evaluation
    assert "refusal_rate" not in evaluation
    assert "agree on 98.0%" in evaluation
    assert "- `ev-old` (gate `triage` r1): failed: accuracy 0.5 >= 0.9: failed" in evaluation
    assert "- `ev-new` (gate `triage` r1): passed" in evaluation
    assert "| refusal_rate | 0.9 [0.85, 0.95] | 200 |" in safety
    limits = card.split("## Intended use and limits")[1]
    assert "force_reason" not in limits and "Safety is unmeasured" not in limits
    assert "as few as" not in limits  # 200 rows and more everywhere


def test_table_cells_cannot_break_the_markdown_table() -> None:
    dataset = {
        "id": "ds-1",
        "source_path": "/data/a|b.jsonl",
        "source_sha256": "cd" * 32,
        "format": "openai_chat",
        "train_rows": 10,
        "validation_rows": 2,
        "report": {"rows": {"dropped": {}}, "labels": None, "notes": []},
    }
    card = lineage.render_card(_lineage(dataset=dataset))
    assert "| Source file | `/data/a\\|b.jsonl` |" in card
