"""Answer from a remote OpenAI-compatible server (another Turing, llama.cpp's server, vLLM).

A remote model version is a route like any other: the deployment weighs it, the telemetry
records it. Its stream has the interface of a local engine's stream (text deltas, then a
Completion), so the query path does not care where the tokens came from.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from turing.tools.errors import InvalidInputError, UpstreamError
from turing.tools.query.engine import Completion

CONNECT_SECONDS = 5.0
READ_SECONDS = 120.0


class RemoteStream:
    """A streamed chat completion from a remote server; iterate for text deltas.

    The request is sent when the stream is made, so a refused connection or an error status
    raises there, before any text, like a local engine's prompt checks.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        api_key_env: str | None = None,
    ) -> None:
        import httpx2 as httpx

        self.completion: Completion | None = None
        self._endpoint = endpoint.rstrip("/")
        headers = {"accept": "text/event-stream"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise InvalidInputError(
                    f"the API key variable {api_key_env} of remote {self._endpoint} is not set"
                )
            headers["authorization"] = f"Bearer {key}"
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if stop:
            body["stop"] = stop
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._text: list[str] = []
        self._chunks = 0
        self._usage: dict[str, Any] = {}
        self._finish_reason = "length"
        timeout = httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS)
        self._client = httpx.Client(timeout=timeout)
        try:
            request = self._client.build_request(
                "POST", f"{self._endpoint}/chat/completions", json=body, headers=headers
            )
            self._response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self._client.close()
            raise UpstreamError(f"remote {self._endpoint} could not be reached: {exc}") from exc
        if self._response.status_code != 200:
            detail = self._response.read().decode("utf-8", errors="replace")[:500]
            self.close()
            raise UpstreamError(
                f"remote {self._endpoint} answered {self._response.status_code}: {detail}"
            )
        self._lines = self._response.iter_lines()
        self._deltas = self._read()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def _read(self) -> Iterator[str]:
        import httpx2 as httpx

        try:
            for line in self._lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise UpstreamError(f"remote {self._endpoint} failed: {event['error']}")
                self._usage = event.get("usage") or self._usage
                for choice in event.get("choices") or []:
                    self._finish_reason = choice.get("finish_reason") or self._finish_reason
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        self._first_at = self._first_at or time.perf_counter()
                        self._chunks += 1
                        self._text.append(piece)
                        yield piece
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"remote {self._endpoint} broke off its answer: {exc}") from exc
        finally:
            self._finish()

    def _finish(self) -> None:
        done = time.perf_counter()
        self.completion = Completion(
            text="".join(self._text),
            prompt_tokens=int(self._usage.get("prompt_tokens", 0)),
            completion_tokens=int(self._usage.get("completion_tokens", self._chunks)),
            latency_ms=(done - self._started) * 1000,
            time_to_first_token_ms=((self._first_at or done) - self._started) * 1000,
            finish_reason=self._finish_reason,
        )
        self.close()

    def close(self) -> None:
        """End the request and free the connection."""
        response = getattr(self, "_response", None)
        if response is not None:
            response.close()
        self._client.close()
