"""Helpers shared by tests: polling jobs through MCP and writing small input files."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from turing.server.quickstart import Session


async def wait_until_done(
    session: Session, tool: str, key: str, item_id: str, timeout: float = 900
) -> dict[str, Any]:
    """Poll get_run or get_eval until the job leaves the running states."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await session.call(tool, **{key: item_id})
        if found["status"] not in ("queued", "running", "cancelling"):
            return found
        assert loop.time() < deadline, f"{item_id} still {found['status']} after {timeout} s"
        await asyncio.sleep(0.5)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# .ci/run sets this: there a missing browser or Node package fails the test instead of skipping.
REQUIRE_ALL = os.environ.get("TURING_TESTS_REQUIRE_ALL") == "1"


def skip_unless_required(reason: str) -> None:
    """Skip a test whose outside program is missing, or fail it where every test must run."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (TURING_TESTS_REQUIRE_ALL=1: every test must run here)")
    pytest.skip(reason)


def skip_if_missing(missing: bool, reason: str) -> pytest.MarkDecorator:
    """A skipif mark that does not skip where every test must run (the test then fails)."""
    return pytest.mark.skipif(missing and not REQUIRE_ALL, reason=reason)


# What a stub model does with a request body: (seconds before answering, HTTP status, text).
Behaviour = Callable[[dict[str, Any]], tuple[float, int, str]]


class StubOpenAI:
    """An OpenAI-compatible chat server on 127.0.0.1, answering every request as `behaviour`
    says (streamed, with usage), and counting the requests of each model."""

    def __init__(self, behaviour: Behaviour, usage: tuple[int, int] = (8, 6)) -> None:
        self.hits: Counter[str] = Counter()
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    stub.hits[body["model"]] += 1
                delay, status, text = behaviour(body)
                time.sleep(delay)
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(text.encode())
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                events = [
                    {"choices": [{"index": 0, "delta": {"content": text}}]},
                    {
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
                    },
                ]
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
