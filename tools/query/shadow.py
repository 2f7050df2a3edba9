"""Shadow traffic: queries mirrored to a deployment's shadow versions after the caller's answer.

One daemon thread works through a short queue, one mirrored request at a time, so shadows never
delay a reply and never pile up: past MAX_PENDING waiting requests, new ones are dropped and
logged. Pending mirrors are not kept across a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_PENDING = 4


class ShadowMirror:
    """A bounded queue of mirrored requests and the daemon thread that runs them."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], None]]] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, label: str, job: Callable[[], None]) -> bool:
        """Queue one mirrored request; False (and a warning) when the queue is full."""
        try:
            self._queue.put_nowait((label, job))
        except queue.Full:
            self.dropped += 1
            logger.warning(
                "shadow request %s dropped: %d already pending (%d dropped so far)",
                label,
                self._queue.maxsize,
                self.dropped,
            )
            return False
        self._start()
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            label, job = self._queue.get()
            try:
                job()
            except Exception:  # a failed mirror must not stop the ones after it
                logger.exception("shadow request %s failed", label)
            finally:
                self._queue.task_done()


mirror = ShadowMirror()
