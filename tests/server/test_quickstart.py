"""The main job (`turing quickstart`'s lifecycle) on the real bundled model, gate included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from tests.server.test_lifecycle import ticket_rows
from turing.server.quickstart import LifecyclePlan, Session, drive_lifecycle, format_summary

pytestmark = pytest.mark.anyio


async def test_the_lifecycle_is_gated_and_deploys_what_was_judged(
    session: Session, tmp_path: Path
) -> None:
    plan = LifecyclePlan(
        data=write_jsonl(tmp_path / "tickets.jsonl", ticket_rows()),
        prepare_options={"validation_fraction": 0.34},
        hyperparameters={"epochs": 1, "batch_size": 6},
        criteria=["accuracy >= 0", "accuracy >= champion - 0.05", "export_agreement >= 0"],
        deployment="tickets",
    )
    summary = await drive_lifecycle(session, plan)

    judged = summary["eval"]
    assert judged["gate"] == "tickets" and judged["backend"] == "both"
    assert summary["deployment"]["version_id"] == judged["version_id"]
    assert set(judged["scores"]) == {"model", "base", "model_torch"}
    assert judged["verdict"]["passed"]
    assert judged["verdict"]["skipped"][0].startswith("accuracy >= champion - 0.05: no champion")
    assert summary["sample"]["answer"]["version_id"] == judged["version_id"]

    text = format_summary(summary)
    assert "gate         passed" in text
    assert "vs base" in text and "mcnemar" in text
    assert f"{judged['version_id']}" in text
