"""Short device work asked for by another thread (the safety checker's forward, on the finishing
thread), run without waiting for a whole job: by the GPU thread itself between two steps of the
job it runs (or when it lets go of the lock), or at once when the engine's lock is free. One job
on the device at a time, and the finished images of one job never wait for the next job's
denoising to end.

Once the GPU thread serves the tasks (`serve_from`), every task runs on it, also while it is
idle (`wake` tells it one waits), and the caller waits without polling. On a CPU device this
keeps every torch kernel on one thread: a forward on the finishing thread would start a second
OpenMP thread pool, and with more OpenMP threads than cores libgomp stops spinning in every
pool for the rest of the process, each later step waiting for its sleeping workers to wake
(10-40 ms a step on 2 cores; bench/serving.py). Without it, the caller runs a task itself when
the lock is free, and looks again every POLL_S whether it came free.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

POLL_S = 0.05  # how often a caller looks again whether the lock came free (not served)
SERVED_CHECK_S = 1.0  # how often a served caller looks whether the server went away


class DeviceTasks:
    def __init__(self, lock: threading.RLock):
        self.lock = lock  # the engine's: held while a job is on the device
        self._pending: deque[tuple[Callable[[], Any], Future]] = deque()
        self._guard = threading.Lock()
        self._wake: Callable[[], None] | None = None  # the GPU thread's, while it serves

    def serve_from(self, wake: Callable[[], None] | None) -> None:
        """From now on the lock's usual holder (the GPU thread) runs every task, also while it
        is idle: `wake()` tells it that one waits (it then calls `run_pending` under the lock).
        None: it stops serving (the engine closes); callers run their tasks themselves again."""
        self._wake = wake
        if wake is None:  # a task queued meanwhile: its caller finds the lock and runs it
            return
        if self.waiting:
            wake()

    @property
    def waiting(self) -> bool:
        """Whether a task waits for the lock's holder."""
        with self._guard:
            return bool(self._pending)

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run under the engine's lock, by the GPU thread when it serves the tasks, else
        by this thread or the lock's holder."""
        wake = self._wake
        if wake is None and self.lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self.lock.release()
        done: Future = Future()
        with self._guard:
            self._pending.append((fn, done))
        if wake is not None:
            wake()
        while True:
            try:
                return done.result(SERVED_CHECK_S if self._wake is not None else POLL_S)
            except TimeoutError:
                pass
            if self._wake is None and self.lock.acquire(blocking=False):
                try:  # not served (any more), and the holder let go before it ran ours
                    self.run_pending()
                finally:
                    self.lock.release()

    def run_pending(self) -> None:
        """By the lock's holder (between two steps, or woken while idle): every task waiting,
        in order."""
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
