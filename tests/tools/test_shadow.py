"""The shadow mirror: callers never wait, pending requests are bounded, failures stay contained."""

from __future__ import annotations

import threading
import time

from turing.tools.query.shadow import ShadowMirror


def test_submitting_returns_at_once_and_drops_requests_past_the_bound() -> None:
    mirror = ShadowMirror(max_pending=2)
    release = threading.Event()
    started = threading.Event()
    done: list[int] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        done.append(0)

    began = time.perf_counter()
    assert mirror.submit("slow", slow)
    assert started.wait(10)  # the worker holds the slow request; two more may wait
    accepted = [mirror.submit(f"job-{n}", lambda n=n: done.append(n)) for n in (1, 2, 3)]
    assert time.perf_counter() - began < 1.0
    assert accepted == [True, True, False] and mirror.dropped == 1

    release.set()
    deadline = time.monotonic() + 10
    while len(done) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [0, 1, 2]


def test_a_failing_request_does_not_stop_the_next_one() -> None:
    mirror = ShadowMirror()
    finished = threading.Event()

    def broken() -> None:
        raise RuntimeError("engine gone")

    mirror.submit("broken", broken)
    mirror.submit("next", finished.set)
    assert finished.wait(10)
