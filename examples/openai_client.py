"""Ask a Turing deployment a question with the official `openai` client.

Start the server and make a token first:

    turing token create --name laptop --role viewer      # prints the secret once
    turing serve --http 127.0.0.1:8100

then:

    TURING_TOKEN=<secret> python examples/openai_client.py quickstart "My card was charged twice"

The deployment's name is the model name; `quickstart@champion`, `quickstart@challenger` or a
version id (mv-...) pick one version. Add --stream to print the answer as it is generated.
"""

from __future__ import annotations

import argparse
import os
import sys

from openai import APIError, OpenAI
from openai.types.chat import ChatCompletionUserMessageParam


def main(argv: list[str] | None = None) -> int:
    try:
        return ask(argv)
    except APIError as exc:  # the server's error names the field or value and what is allowed
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def ask(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a deployment, deployment@alias or model version id")
    parser.add_argument("question", help="the user's message")
    parser.add_argument(
        "--url",
        default=os.environ.get("TURING_URL", "http://127.0.0.1:8100/v1"),
        help="the API's base URL (default: $TURING_URL or http://127.0.0.1:8100/v1)",
    )
    parser.add_argument("--stream", action="store_true", help="print tokens as they come")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    token = os.environ.get("TURING_TOKEN")
    if not token:
        print("set TURING_TOKEN to a token from `turing token create`", file=sys.stderr)
        return 2
    client = OpenAI(base_url=args.url, api_key=token, max_retries=0)
    messages: list[ChatCompletionUserMessageParam] = [{"role": "user", "content": args.question}]

    if args.stream:
        stream = client.chat.completions.create(
            model=args.model,
            messages=messages,
            max_tokens=args.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                print(f"\n[{chunk.usage.completion_tokens} tokens]", file=sys.stderr)
        print()
        return 0

    reply = client.chat.completions.create(
        model=args.model, messages=messages, max_tokens=args.max_tokens
    )
    print(reply.choices[0].message.content)
    if reply.usage:
        print(
            f"[{reply.model}, {reply.usage.prompt_tokens} tokens in, "
            f"{reply.usage.completion_tokens} out]",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
