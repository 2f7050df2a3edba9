"""Banking77 through the whole lifecycle over a real MCP stdio session, with acceptance checks.

Trains on 20 rows per intent (1,540 rows, seed 0) of Banking77's train.csv, scores on a fixed
770-row sample of test.csv, and checks that the fine-tuned model beats the base by at least 30
points of exact match and that the deployed GGUF served by llama.cpp scores within 3 points of
the PyTorch adapter. Run: python bench/banking77_lifecycle.py [--home DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mcp import Client

from turing.server.quickstart import (
    LifecyclePlan,
    Session,
    drive_lifecycle,
    format_summary,
    server_parameters,
)

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = "Classify the banking customer query into its intent label."
PER_INTENT = 20
TEST_ROWS = 770
SEED = 0


def shared_data() -> Path:
    configured = os.environ.get("TURING_SHARED_DATA")
    folder = Path(configured) if configured else REPO.parent / "shared" / "data"
    if not (folder / "banking77" / "train.csv").is_file():
        sys.exit(f"Banking77 not found under {folder}; set TURING_SHARED_DATA")
    return folder / "banking77"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sample_train(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    by_intent: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_intent[row["category"]].append(row)
    rng = random.Random(SEED)
    return [
        row for intent in sorted(by_intent) for row in rng.sample(by_intent[intent], PER_INTENT)
    ]


def write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "category": row["category"]} for row in rows)
    return path


async def main(home: Path, out: Path | None, epochs: int) -> int:
    source = shared_data()
    work = home / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    train = write_csv(sample_train(read_rows(source / "train.csv")), work / "banking77_train.csv")
    test_rows = random.Random(SEED).sample(read_rows(source / "test.csv"), TEST_ROWS)
    test = write_csv(test_rows, work / "banking77_test.csv")

    options = {"columns": {"user": "text", "assistant": "category"}, "system_prompt": SYSTEM_PROMPT}
    plan = LifecyclePlan(
        data=train,
        prepare_options={**options, "validation_fraction": 0.0},
        eval_data=test,
        eval_options=options,
        hyperparameters={"epochs": epochs},
        deployment="banking77",
    )
    async with Client(server_parameters(str(home))) as client:
        summary = await drive_lifecycle(Session(client), plan)

    sys.stdout.write(format_summary(summary))
    result, served = summary["eval"]["result"], summary["served_eval"]["result"]
    gain = result["exact_match"] - result["base_exact_match"]
    export_gap = abs(served["exact_match"] - result["exact_match"])
    checks = {
        "gain_over_base_at_least_30_points": gain >= 0.30,
        "served_within_3_points_of_pytorch": export_gap <= 0.03,
    }
    report = {
        "base": result["base_exact_match"],
        "fine_tuned": result["exact_match"],
        "served": served["exact_match"],
        "gain": round(gain, 4),
        "export_gap": round(export_gap, 4),
        "rows": result["rows"],
        "train_seconds": summary["run"]["result"]["seconds"],
        "wall_seconds": summary["wall_seconds"],
        "checks": checks,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="workspace (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="turing-banking77-"))
    sys.exit(asyncio.run(main(home.resolve(), args.out, args.epochs)))
