"""Serving speed: raw llama-cpp-python against query_model over MCP and the HTTP API, one run.

Trains two lightly tuned SmolLM2 adapters on the shipped support-ticket sample (a low learning
rate, so the model still writes long answers and decode speed is measured over many tokens),
deploys the first behind `turing serve --http` (one HTTP server carrying MCP at /mcp and the
OpenAI-compatible API at /v1, an admin token on every request), then measures on the same base
GGUF and adapter:

- raw: llama-cpp-python's `Llama.generate` in this process, greedy, the same rendered prompt;
- mcp: `query_model` through a real MCP client session over streamable HTTP;
- http: `/v1/chat/completions` through HTTP, whole answers and streamed.

Paths take turns in blocks (every prompt once), in a rotating order and with a pause between
blocks, so drift of the machine hits every path alike and one path's llama.cpp threads never
compete with another's. Reports decode tokens/s (after the first token) and end-to-end p50
latency per path as ratios against raw, the added p50 latency on one-token answers to short
prompts (where generation hardly varies), and each path's own overhead: the time its client
saw minus the time the server measured for the same answer. Then both versions serve 50/50
and 32 concurrent HTTP clients send 4 requests each; the run reports their throughput in all
and per engine, and exits 1 unless every request succeeds.

Goals: decode tokens/s >= 95% of raw; added p50 latency <= 2 ms.

Run: python bench/serve_speed.py [--home DIR] [--out FILE] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2 as httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from turing.server.quickstart import Session, server_parameters, wait_for_run

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tools" / "datasets" / "samples" / "support_tickets.jsonl"
PROMPTS = [
    "Explain step by step how to reset a forgotten password in a web app.",
    "Write a short guide to exporting invoices as PDF files.",
    "Describe what happens when a card payment is declined, and what a customer can do.",
    "List ten tips for writing a clear support ticket.",
    "Explain the difference between a refund and a chargeback.",
    "How should a small shop prepare for a busy holiday season? Give details.",
    "Describe how to set up two-factor authentication and why it matters.",
    "Write a friendly email telling customers about a new feature.",
]
# One-token answers to short prompts: little prefill, so the time is mostly the path's own.
SHORT_PROMPTS = ["Hi", "Thanks!", "Hello there", "Good morning", "Yes", "No", "Why?", "OK"]
DECODE_TOKENS = 128
PATHS = ["raw", "mcp", "http", "http_stream"]
PAUSE_S = 1.0
CONCURRENT_CLIENTS = 32
REQUESTS_PER_CLIENT = 4
CONCURRENT_TOKENS = 32


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def deploy_two_versions(session: Session) -> tuple[str, str]:
    dataset = await session.call("prepare_dataset", path=str(SAMPLE))
    versions = []
    for rate in (1e-5, 2e-5):
        run = await session.call(
            "start_finetune",
            dataset_id=dataset["dataset_id"],
            hyperparameters={"epochs": 1, "learning_rate": rate, "checkpoint_every": 0},
        )
        run = await wait_for_run(session, run["run_id"])
        if run["status"] != "succeeded":
            sys.exit(f"training failed: {run.get('error')}")
        versions.append((await session.call("export_model", run_id=run["run_id"]))["id"])
        log(f"version {versions[-1]} from {run['run_id']}")
    await session.call("deploy", model=versions[0], deployment="bench", reason="speed bench")
    return versions[0], versions[1]


class RawEngine:
    """llama-cpp-python with nothing of Turing's around it but the prompt text."""

    def __init__(self, base: str, adapter: str) -> None:
        import llama_cpp

        from turing.tools.chat import read_chat_template

        threads = len(os.sched_getaffinity(0))
        self.llm = llama_cpp.Llama(
            model_path=base,
            lora_path=adapter,
            n_ctx=2048,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.template = read_chat_template(base)
        end = self.llm.tokenize(self.template.end_of_turn.encode(), add_bos=False, special=True)
        self.stops = {self.llm.token_eos(), *end[:1]}

    def answer(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        text = self.template.render([{"role": "user", "content": prompt}], True)
        started = time.perf_counter()
        tokens = self.llm.tokenize(text.encode(), add_bos=True, special=True)
        first = None
        count = 0
        for token in self.llm.generate(tokens, top_k=0, top_p=1.0, min_p=0.0, temp=0.0):
            first = first or time.perf_counter()
            count += 1
            if token in self.stops or count >= max_tokens:
                break
        done = time.perf_counter()
        return timing(started, first or done, done, count)


def timing(
    started: float, first: float, done: float, tokens: int, server_ms: float | None = None
) -> dict[str, Any]:
    """One request's numbers; server_ms is the answer's time as the server measured it."""
    return {
        "latency_ms": (done - started) * 1000,
        "ttft_ms": (first - started) * 1000,
        "tokens": tokens,
        "decode_s": done - first,
        "overhead_ms": (done - started) * 1000 - server_ms if server_ms is not None else None,
    }


async def over_mcp(session: Session, prompt: str, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    reply = await session.call(
        "query_model",
        model="bench",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        routing_key="pinned",
    )
    done = time.perf_counter()
    first = started + reply["time_to_first_token_ms"] / 1000
    return timing(started, first, done, reply["completion_tokens"], reply["latency_ms"])


async def over_http(
    http: httpx.AsyncClient, base_url: str, prompt: str, max_tokens: int, stream: bool
) -> dict[str, Any]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "user": "pinned",
    }
    started = time.perf_counter()
    if not stream:
        reply = (await http.post(f"{base_url}/chat/completions", json=body)).json()
        done = time.perf_counter()
        first = started + reply["turing"]["time_to_first_token_ms"] / 1000
        tokens = reply["usage"]["completion_tokens"]
        return timing(started, first, done, tokens, reply["turing"]["latency_ms"])
    body.update(stream=True, stream_options={"include_usage": True})
    first = None
    usage: dict[str, Any] = {}
    server_ms = None
    async with http.stream("POST", f"{base_url}/chat/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
            usage = event.get("usage") or usage
            server_ms = event.get("turing", {}).get("latency_ms", server_ms)
    done = time.perf_counter()
    return timing(started, first or done, done, usage.get("completion_tokens", 0), server_ms)


def summarise(samples: list[dict[str, Any]]) -> dict[str, float]:
    decode = [
        (s["tokens"] - 1) / s["decode_s"] for s in samples if s["tokens"] > 1 and s["decode_s"]
    ]
    overheads = [s["overhead_ms"] for s in samples if s["overhead_ms"] is not None]
    return {
        "requests": len(samples),
        "p50_latency_ms": statistics.median(s["latency_ms"] for s in samples),
        "p50_ttft_ms": statistics.median(s["ttft_ms"] for s in samples),
        "decode_tokens_per_s": statistics.median(decode) if decode else 0.0,
        "mean_tokens": statistics.fmean(s["tokens"] for s in samples),
        "p50_overhead_ms": statistics.median(overheads) if overheads else 0.0,
    }


async def measure_paths(
    session: BenchSession,
    base_url: str,
    raw: RawEngine,
    rounds: int,
    max_tokens: int,
    prompts: list[str],
) -> dict[str, dict[str, float]]:
    samples: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    async with httpx.AsyncClient(timeout=300, headers=session.headers) as http:
        ask = {
            "raw": lambda prompt: asyncio.to_thread(raw.answer, prompt, max_tokens),
            "mcp": lambda prompt: over_mcp(session, prompt, max_tokens),
            "http": lambda prompt: over_http(http, base_url, prompt, max_tokens, False),
            "http_stream": lambda prompt: over_http(http, base_url, prompt, max_tokens, True),
        }
        for round_index in range(rounds + 1):  # round 0 warms every path up
            # Paths take turns by blocks of all prompts, in a rotating order, with a pause
            # between blocks: the raw engine (in this process) and the server's engines are
            # two llama.cpp thread pools on the same cores, and a pool still spinning after
            # its last request would slow the next block down.
            order = PATHS[round_index % len(PATHS) :] + PATHS[: round_index % len(PATHS)]
            for path in order:
                await asyncio.sleep(PAUSE_S)
                for prompt in prompts:
                    sample = await ask[path](prompt)
                    if round_index:
                        samples[path].append(sample)
    return {path: summarise(found) for path, found in samples.items()}


async def concurrent_clients(base_url: str, headers: dict[str, str]) -> dict[str, Any]:
    errors: list[str] = []
    tokens = 0

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for request in range(REQUESTS_PER_CLIENT):
            body = {
                "model": "bench",
                "messages": [
                    {"role": "user", "content": PROMPTS[(index + request) % len(PROMPTS)]}
                ],
                "max_tokens": CONCURRENT_TOKENS,
                "temperature": 0,
                "user": f"client-{index}",
            }
            reply = await http.post(f"{base_url}/chat/completions", json=body)
            if reply.status_code != 200:
                errors.append(f"{reply.status_code}: {reply.text[:200]}")
            else:
                tokens += reply.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=CONCURRENT_CLIENTS)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(index, http) for index in range(CONCURRENT_CLIENTS)))
        wall = time.perf_counter() - started
    return {
        "clients": CONCURRENT_CLIENTS,
        "requests": CONCURRENT_CLIENTS * REQUESTS_PER_CLIENT,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
    }


class BenchSession(Session):
    """An MCP session over HTTP that knows the bearer header the other paths send too."""

    def __init__(self, client: Client, headers: dict[str, str]):
        super().__init__(client)
        self.headers = headers


def start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """`turing serve --http` on a loopback port of a new workspace, and an admin token for it."""
    env = {**os.environ, **server_parameters(str(home), input_dirs=[SAMPLE.parent]).env}
    cli = [sys.executable, "-m", "turing.server.cli", "--log-level", "WARNING"]
    made = subprocess.run(
        [*cli, "token", "create", "--name", "bench", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    server = subprocess.Popen([*cli, "serve", "--http", f"127.0.0.1:{port}"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, made.stdout.strip()
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"turing serve --http exited with {server.returncode}")
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("turing serve --http did not answer /health within 120 s")


async def main(home: Path, out: Path | None, rounds: int) -> int:
    port = free_port()
    server, secret = start_server(home, port)
    headers = {"Authorization": f"Bearer {secret}"}
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        async with (
            httpx.AsyncClient(headers=headers, timeout=600) as mcp_http,
            Client(
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=mcp_http)
            ) as client,
        ):
            session = BenchSession(client, headers)
            first, second = await deploy_two_versions(session)
            models = await session.call("list_models")
            row = next(row for row in models["model_versions"] if row["id"] == first)
            base = next(b for b in models["base_models"] if b["name"] == row["base_model"])
            raw = RawEngine(base["gguf_path"], row["gguf_path"])
            log(f"measuring {rounds} rounds of {len(PROMPTS)} prompts on every path")
            decode = await measure_paths(session, base_url, raw, rounds, DECODE_TOKENS, PROMPTS)
            short = await measure_paths(session, base_url, raw, rounds, 1, SHORT_PROMPTS)
            raw.llm.close()

            await session.call(
                "set_routes",
                deployment="bench",
                routes=[{"version_id": first, "weight": 50}, {"version_id": second, "weight": 50}],
                reason="two engines for the concurrency run",
            )
            log(f"{CONCURRENT_CLIENTS} concurrent HTTP clients over two engines")
            before = await engine_stats(client)
            concurrent = await concurrent_clients(base_url, headers)
            engines = per_engine(before, await engine_stats(client), concurrent["wall_s"])
    finally:
        server.terminate()
        server.wait(timeout=60)

    report = build_report(decode, short, concurrent, engines)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if concurrent["errors"] == 0 else 1


async def engine_stats(client: Client) -> dict[str, dict[str, Any]]:
    found = await client.read_resource("turing://engines")
    engines = json.loads(found.contents[0].text)["engines"]  # type: ignore[union-attr]
    return {str(engine["adapter"]): engine for engine in engines}


def per_engine(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], wall_s: float
) -> list[dict[str, Any]]:
    """Requests and tokens/s of each engine during the concurrent run."""
    found = []
    for adapter, engine in after.items():
        earlier = before.get(adapter, {})
        requests = engine["requests"] - earlier.get("requests", 0)
        tokens = engine["tokens_out"] - earlier.get("tokens_out", 0)
        found.append(
            {
                "adapter": Path(adapter).parent.name,
                "requests": requests,
                "tokens_per_s": round(tokens / wall_s, 1),
                "measured_mb": engine.get("measured_mb"),
            }
        )
    return found


def build_report(
    decode: dict[str, dict[str, float]],
    short: dict[str, dict[str, float]],
    concurrent: dict[str, Any],
    engines: list[dict[str, Any]],
) -> dict[str, Any]:
    raw_rate = decode["raw"]["decode_tokens_per_s"]
    paths = {}
    for path in ("mcp", "http", "http_stream"):
        paths[path] = {
            "decode_ratio": round(decode[path]["decode_tokens_per_s"] / raw_rate, 3),
            "p50_latency_ratio": round(
                decode[path]["p50_latency_ms"] / decode["raw"]["p50_latency_ms"], 3
            ),
            "added_p50_ms_one_token": round(
                short[path]["p50_latency_ms"] - short["raw"]["p50_latency_ms"], 2
            ),
            "transport_overhead_p50_ms": round(short[path]["p50_overhead_ms"], 2),
        }
    return {
        "decode": decode,
        "one_token": short,
        "against_raw": paths,
        "goals": {
            path: {
                "decode_at_least_95_percent": numbers["decode_ratio"] >= 0.95,
                "added_p50_at_most_2_ms": numbers["added_p50_ms_one_token"] <= 2.0,
            }
            for path, numbers in paths.items()
        },
        "concurrent": concurrent,
        "engines": engines,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="workspace (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="turing-serve-speed-"))
    sys.exit(asyncio.run(main(home.resolve(), args.out, args.rounds)))
