"""The feedback loop through a real MCP client session: opt-in query logging with personal data
redacted, ratings and corrections, and logged queries prepared into the next dataset version.

The deployment routes to a remote model version answered by a small OpenAI-compatible server on
a loopback port, which echoes the question, so answers are known and repeat what was asked
(personal data included). Everything between the client and that server is Turing's own path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import StubOpenAI, wait_until_done
from turing.server.quickstart import LifecycleError, Session
from turing.server.registry import Registry
from turing.server.services import SPILL_NAME
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.deploy.versions import ModelTarget
from turing.tools.query.engine import Completion
from turing.tools.query.telemetry import Telemetry

pytestmark = pytest.mark.anyio

EMAIL, PHONE = "ann.lee@example.com", "+44 20 7946 0958"
QUESTIONS = [
    f"my invoice is wrong, write to {EMAIL} or call {PHONE}",
    "how do I reset my password",
    "can I change the delivery address",
    "where is my parcel",
    "how do I cancel my subscription",
    "the app crashes when I upload a photo",
    "do you ship to Norway",
]
CORRECTION = "Sorry about that: reply with the invoice number, or write to billing@example.org."


@pytest.fixture
def echo() -> Iterator[StubOpenAI]:
    """A model answering "About: <the question>"."""
    server = StubOpenAI(
        lambda body: (0.0, 200, "About: " + body["messages"][-1]["content"]), usage=(12, 12)
    )
    yield server
    server.close()


async def support_deployment(session: Session, echo: StubOpenAI, base_model: str) -> str:
    """Deployment "support" serving the echo server's model; returns its version id."""
    version = await session.call(
        "register_remote_model",
        endpoint=echo.url,
        model="echo",
        base_model=base_model,
        check=False,
    )
    await session.call("deploy", model=version["id"], deployment="support")
    return str(version["id"])


async def ask(session: Session, question: str) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "You answer customers of a web shop."},
        {"role": "user", "content": question},
    ]
    return await session.call("query_model", model="support", messages=messages, max_tokens=32)


async def read_json(session: Session, uri: str) -> Any:
    found = await session.client.read_resource(uri)
    return json.loads(found.contents[0].text)


def database_text(home: Path) -> str:
    """Every row of every table of the registry, as SQL text."""
    with closing(sqlite3.connect(home / "registry.db")) as conn:
        return "\n".join(conn.iterdump())


def log_rows(home: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(home / "registry.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM query_log ORDER BY row_id")]


def dataset_rows(home: Path, dataset_id: str) -> list[dict[str, Any]]:
    folder = home / "datasets" / dataset_id
    return [
        json.loads(line)
        for split in ("train", "validation")
        for line in (folder / f"{split}.jsonl").read_text().splitlines()
    ]


async def test_logged_queries_with_feedback_become_the_next_dataset_version_with_provenance(
    session: Session, tmp_path: Path, tiny_base: Path, echo: StubOpenAI
) -> None:
    home = tmp_path / "home"
    await session.call("register_base_model", name="tiny", gguf_path=str(tiny_base))
    version = await support_deployment(session, echo, "tiny")

    # Off by default: the answer comes back, its text is kept nowhere.
    unlogged = await ask(session, QUESTIONS[0])
    assert unlogged["logged"] is False and unlogged["text"].startswith("About: my invoice")
    status = await session.call("list_logged_queries", deployment="support")
    assert status["enabled"] is False and status["logged"] == 0 and status["queries"] == []
    assert EMAIL not in database_text(home)

    # On: the text is kept, with the email and the phone number redacted before storage.
    turned = await session.call(
        "set_query_logging", deployment="support", enabled=True, reason="users agreed"
    )
    assert turned["enabled"] is True and turned["updated_by"] == "local"
    answers = [await ask(session, question) for question in QUESTIONS]
    assert all(answer["logged"] for answer in answers)
    ids = [answer["query_id"] for answer in answers]
    assert len(set(ids)) == len(ids)

    # Feedback: a correction, good ratings, a bad rating, one left unrated; the correction's
    # own email is redacted too, and rating again replaces the earlier feedback.
    corrected = await session.call(
        "record_feedback", query_id=ids[0], rating=-1, correction=CORRECTION
    )
    assert "billing@example.org" not in corrected["correction"]
    assert corrected["correction"].endswith("write to [EMAIL].")
    assert corrected["redactions"] == ["email", "phone"] and corrected["replaced"] is None
    for query_id in ids[1:5]:
        await session.call("record_feedback", query_id=query_id, rating=1)
    await session.call("record_feedback", query_id=ids[5], rating=-1)
    again = await session.call("record_feedback", query_id=ids[1], rating=1)
    assert again["replaced"] == {"rating": 1, "correction": None}

    logged = await session.call("list_logged_queries", deployment="support", limit=3)
    assert (logged["logged"], logged["rated"], logged["corrected"]) == (7, 6, 1)
    assert logged["matching"] == 7 and len(logged["queries"]) == 3
    newest = logged["queries"][0]
    assert newest["query_id"] == ids[6] and newest["rating"] is None
    assert newest["messages"][1] == {"role": "user", "content": QUESTIONS[6]}
    assert logged["queries"][2]["feedback_by"] == "local"
    stored = log_rows(home)
    assert [row["id"] for row in stored] == ids
    first = json.loads(stored[0]["messages"])
    assert first[1]["content"] == "my invoice is wrong, write to [EMAIL] or call [PHONE]"
    assert stored[0]["answer"] == "About: my invoice is wrong, write to [EMAIL] or call [PHONE]"
    assert stored[0]["redactions"] == "email,phone" and stored[1]["redactions"] is None
    assert {row["version_id"] for row in stored} == {version}
    everything = database_text(home)
    assert EMAIL not in everything and PHONE not in everything
    assert "billing@example.org" not in everything  # tool arguments in the audit trail too

    # The next dataset version: the correction and the answers rated good, nothing else.
    dataset = await session.call(
        "prepare_dataset", path="queries://support", base_model="tiny", validation_fraction=0.34
    )
    provenance = dataset["provenance"]
    assert provenance["query_ids"] == ids[:5] and provenance["query_ids_total"] == 5
    assert provenance["deployment"] == "support" and provenance["count"] == 5
    assert (provenance["corrected"], provenance["rated_good"], provenance["unrated"]) == (1, 4, 0)
    assert provenance["filter"] == {"min_rating": 1, "only_corrected": False}
    assert provenance["redactions"] == {"email": 1, "phone": 1}
    assert provenance["versions"] == {version: 5}
    assert provenance["window"]["since"] is None
    assert provenance["window"]["first_query_at"] <= provenance["window"]["last_query_at"]
    assert dataset["train_rows"] + dataset["validation_rows"] == 5
    rows = dataset_rows(home, dataset["dataset_id"])
    answers_trained = sorted(row["messages"][-1]["content"] for row in rows)
    assert answers_trained == sorted(
        [
            "Sorry about that: reply with the invoice number, or write to [EMAIL].",
            *(f"About: {question}" for question in QUESTIONS[1:5]),
        ]
    )
    assert all(row["messages"][0]["role"] == "system" for row in rows)
    report = await read_json(session, f"turing://datasets/{dataset['dataset_id']}/report")
    assert report["provenance"]["query_ids"] == ids[:5]
    assert report["source"]["path"].startswith(str(home / "feedback"))
    assert report["source"]["format"] == "openai_chat"

    # Other filters, and the same queries again giving the same version.
    wider = await session.call(
        "prepare_dataset", path="queries://support?min_rating=0", base_model="tiny"
    )
    assert wider["provenance"]["query_ids"] == [*ids[:5], ids[6]]
    assert wider["provenance"]["unrated"] == 1
    only = await session.call(
        "prepare_dataset", path="queries://support?only_corrected=true&since=1h", base_model="tiny"
    )
    assert only["provenance"]["query_ids"] == ids[:1]
    assert only["provenance"]["window"]["since"] is not None
    same = await session.call(
        "prepare_dataset", path="queries://support", base_model="tiny", validation_fraction=0.34
    )
    assert same["dataset_id"] == dataset["dataset_id"]

    # Off again: new answers are not kept; what was logged stays.
    await session.call("set_query_logging", deployment="support", enabled=False)
    assert (await ask(session, "is the shop open on Sunday"))["logged"] is False
    assert len(log_rows(home)) == 7

    # A version trained on it shows where its data came from.
    run = await session.call(
        "start_finetune",
        dataset_id=dataset["dataset_id"],
        base_model="tiny",
        hyperparameters={"epochs": 1, "batch_size": 4, "learning_rate": 0.01},
    )
    run = await wait_until_done(session, "get_run", "run_id", run["run_id"])
    assert run["status"] == "succeeded", run["error"]
    trained = await session.call("export_model", run_id=run["run_id"])
    lineage = await session.call("get_lineage", model=trained["id"])
    assert lineage["dataset"]["provenance"]["query_ids"] == ids[:5]
    card = await session.client.read_resource(f"turing://models/{trained['id']}/card")
    text = card.contents[0].text
    assert "5 logged queries of deployment `support` (1 corrected, 4 rated good" in text
    assert "personal data redacted: email: 1, phone: 1" in text


async def test_bad_feedback_loop_requests_are_refused_naming_what_to_change(
    session: Session, echo: StubOpenAI
) -> None:
    async def refused(tool: str, match: str, **arguments: Any) -> None:
        with pytest.raises(LifecycleError, match=match):
            await session.call(tool, **arguments)

    await refused("set_query_logging", "no deployment 'nope'", deployment="nope", enabled=True)
    await refused("list_logged_queries", "no deployment 'nope'", deployment="nope")
    await refused("prepare_dataset", "no deployment 'nope'", path="queries://nope")
    await refused("prepare_dataset", "name one deployment after queries://", path="queries://")
    await refused(
        "record_feedback", "no logged query 'chatcmpl-0'", query_id="chatcmpl-0", rating=1
    )

    await support_deployment(session, echo, DEFAULT_BASE_MODEL)
    await refused(
        "prepare_dataset", r"no logged query \(query logging is off\)", path="queries://support"
    )
    unlogged = await ask(session, "where is my parcel")
    await refused("record_feedback", "set_query_logging", query_id=unlogged["query_id"], rating=1)

    await session.call("set_query_logging", deployment="support", enabled=True)
    query_id = (await ask(session, "where is my parcel"))["query_id"]
    for rating in (0, 2, -2):
        await refused(
            "record_feedback", f"rating={rating}: give 1", query_id=query_id, rating=rating
        )
    await refused("record_feedback", "rating", query_id=query_id, rating=True)
    await refused(
        "record_feedback", "correction is empty", query_id=query_id, rating=-1, correction=" "
    )
    await refused(
        "record_feedback",
        "correction has the control character .* at character 7",
        query_id=query_id,
        rating=-1,
        correction="billing\x00nul",
    )
    await refused("set_query_logging", "enabled", deployment="support", enabled="yes")
    await refused("list_logged_queries", "limit=0", deployment="support", limit=0)

    for path, match in [
        ("queries://support", "no logged query matches the filter; deployment 'support' has 1"),
        ("queries://support?since=2999-01-01T00:00:00Z", "no logged query since 2999-01-01"),
        ("queries://support?min_rating=-1", "min_rating='-1': give 1"),
        ("queries://support?only_corrected=maybe", "only_corrected='maybe': give true or false"),
        ("queries://support?colour=red", "filter 'colour' is unknown; allowed: since, min_rating"),
        ("queries://support?since=1d&since=2d", "filter 'since' is given twice"),
        ("queries://support?since=yesterday", "since='yesterday'"),
        ("queries://support/extra", "name one deployment"),
    ]:
        await refused("prepare_dataset", match, path=path)


def test_a_logged_query_that_could_not_be_written_is_spilled_and_written_with_its_row(
    tmp_path: Path,
) -> None:
    registry_path, spill = tmp_path / "registry.db", tmp_path / SPILL_NAME
    Registry(registry_path)
    telemetry = Telemetry(registry_path, spill, busy_timeout_s=0.05, retry_delays_s=(0.01,))
    target = ModelTarget(
        kind="deployment",
        name="support",
        base_model="tiny",
        base_gguf="tiny.gguf",
        version_id="mv-a",
        deployment="support",
        revision=1,
    )
    answer = Completion(
        text=f"We will call {PHONE}.",
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=50.0,
        time_to_first_token_ms=5.0,
        finish_reason="stop",
    )
    blocker = sqlite3.connect(registry_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for index in range(3):
            messages = [{"role": "user", "content": f"question {index} from {EMAIL}"}]
            log_id = f"chatcmpl-{index}" if index != 1 else None
            telemetry.record(target, answer, latency_ms=50.0, messages=messages, log_id=log_id)
        telemetry.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert EMAIL not in spill.read_text() and PHONE not in spill.read_text()

    reopened = Telemetry(registry_path, spill)
    assert reopened.flush()
    reopened.close()
    with closing(sqlite3.connect(registry_path)) as conn:
        joined = conn.execute(
            "SELECT query_log.id, query_log.messages, query_log.answer, queries.latency_ms "
            "FROM query_log JOIN queries ON queries.id = query_log.row_id ORDER BY queries.id"
        ).fetchall()
        rows = conn.execute("SELECT count(*) FROM queries").fetchone()[0]
    assert rows == 3 and [row[0] for row in joined] == ["chatcmpl-0", "chatcmpl-2"]
    assert json.loads(joined[1][1]) == [{"role": "user", "content": "question 2 from [EMAIL]"}]
    assert joined[1][2] == "We will call [PHONE]." and joined[1][3] == 50.0
