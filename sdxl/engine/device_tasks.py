"""Short device work asked for by another thread (the safety checker's forward, on the finishing
thread), run without waiting for a whole job: at once when the engine's lock is free, else by
the GPU thread itself between two steps of the job it runs (or when it lets go of the lock).
One job on the device at a time, and the finished images of one job never wait for the next
job's denoising to end.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

POLL_S = 0.05  # how often a caller looks again whether the lock came free


class DeviceTasks:
    def __init__(self, lock: threading.RLock):
        self.lock = lock  # the engine's: held while a job is on the device
        self._pending: deque[tuple[Callable[[], Any], Future]] = deque()
        self._guard = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run under the engine's lock, by this thread or the lock's holder."""
        if self.lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self.lock.release()
        done: Future = Future()
        with self._guard:
            self._pending.append((fn, done))
        while True:
            try:
                return done.result(POLL_S)
            except TimeoutError:
                pass
            if self.lock.acquire(blocking=False):  # the holder let go before it ran ours
                try:
                    self.run_pending()
                finally:
                    self.lock.release()

    def run_pending(self) -> None:
        """By the lock's holder (between two steps): every task waiting, in order."""
        while True:
            with self._guard:
                if not self._pending:
                    return
                fn, done = self._pending.popleft()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)
