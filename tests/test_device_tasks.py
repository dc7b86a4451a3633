"""Short device work from another thread (the safety checker's forward on the finishing thread)
runs on the thread that holds the engine's lock, between two of its steps, rather than waiting
for its whole job; at once when the lock is free. Ordered by events, never by time."""

from __future__ import annotations

import threading

from sdxl.engine.device_tasks import DeviceTasks


def test_the_lock_holder_runs_it_between_two_steps():
    lock = threading.RLock()
    tasks = DeviceTasks(lock)
    events: list[str] = []
    asked = threading.Event()

    def forward() -> str:
        events.append(f"forward on {threading.current_thread().name}")
        return "verdicts"

    def finishing() -> None:
        asked.set()
        events.append(f"finishing got {tasks.call(forward)}")

    with lock:  # the GPU thread runs a job
        events.append("step 1")
        thread = threading.Thread(target=finishing, name="finishing")
        thread.start()
        assert asked.wait(10)
        while not tasks._pending:
            threading.Event().wait(0.01)
        tasks.run_pending()  # between two steps
        thread.join(10)  # it has its verdicts while the job still holds the lock
        events.append("step 2")
    assert events == [
        "step 1",
        f"forward on {threading.current_thread().name}",
        "finishing got verdicts",
        "step 2",
    ]


def test_it_runs_at_once_when_the_lock_is_free_and_raises_what_it_raised():
    tasks = DeviceTasks(threading.RLock())
    assert tasks.call(lambda: threading.current_thread().name) == threading.current_thread().name

    def out_of_memory():
        raise MemoryError("device")

    lock = tasks.lock
    caught: list[BaseException] = []

    def finishing():
        try:
            tasks.call(out_of_memory)
        except MemoryError as err:
            caught.append(err)

    with lock:
        thread = threading.Thread(target=finishing)
        thread.start()
        while not tasks._pending:
            threading.Event().wait(0.01)
        tasks.run_pending()
    thread.join(10)
    assert [str(err) for err in caught] == ["device"]
