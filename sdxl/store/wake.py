"""Wake-ups when the store changes, instead of polling it: on PostgreSQL, one LISTEN connection
per replica hears every replica's NOTIFY (a job created or handed back, a cancel for a claimed
one, a job that ended: the channels of `sdxl.store.job_rows`); on SQLite, this process's own
commits (`Database.notify`). Listeners are called on the listener's thread (SQLite: the
committing one): keep them short (set an event).

A listener may be added before or after `start`. On PostgreSQL one added after it, for a
channel nobody listened to yet, is LISTENed to within LISTEN_POLL_S and then called once with
"": whatever was notified before that was missed, so it looks at the store afresh.

After the connection is lost and made again, every listener is called once: whatever was
notified meanwhile was missed, so each looks at the store afresh. The replicas still look
every few seconds without a wake-up (a safety net, not the mechanism).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

import sqlalchemy as sa

from sdxl.store.db import Database

log = logging.getLogger("sdxl.store")

RECONNECT_S = 2.0  # after a lost LISTEN connection, wait this long before the next attempt
LISTEN_POLL_S = 1.0  # how often the listener thread checks whether it should stop

Listener = Callable[[str], None]  # called with the notification's payload ("" for none)


class Wakeups:
    def __init__(self, db: Database):
        self.db = db
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()  # `on` may add while the listener thread reads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # PostgreSQL: the LISTEN connection is up
        db.local_listeners.append(self._deliver)

    def on(self, channel: str, listener: Listener) -> None:
        """Call `listener` with the payload of every notification on `channel`."""
        with self._lock:
            self._listeners[channel].append(listener)

    def _channels(self) -> list[str]:
        with self._lock:
            return list(self._listeners)

    def start(self) -> None:
        """PostgreSQL: the listener thread (SQLite delivers its own commits)."""
        if self.db.postgres and self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="sdxl-listen", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            listeners = list(self._listeners.get(channel, ()))
        for listener in listeners:
            try:
                listener(payload)
            except Exception:  # a listener's bug must not stop the others
                log.exception("a store wake-up listener failed")

    def _everyone(self, channels: set[str]) -> None:
        for channel in channels:
            self._deliver(channel, "")

    def _listen(self) -> None:
        import psycopg

        url = sa.engine.make_url(self.db.url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    heard: set[str] = set()
                    _listen_to_new(conn, self._channels(), heard)
                    self.connected.set()
                    self._everyone(heard)  # anything notified before we listened
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=LISTEN_POLL_S):
                            self._deliver(notice.channel, notice.payload)
                        for channel in _listen_to_new(conn, self._channels(), heard):
                            self._deliver(channel, "")  # added after start: look afresh
            except Exception as err:  # the database is away: listen again when it is back
                if self.connected.is_set():
                    log.warning("the store's wake-ups stopped (%s); listening again", err)
                self.connected.clear()
                self._stop.wait(RECONNECT_S)


def _listen_to_new(conn, channels: list[str], heard: set[str]) -> list[str]:
    """LISTEN to those of `channels` not `heard` yet (added to it); which."""
    new = [channel for channel in channels if channel not in heard]
    for channel in new:
        conn.execute(f'LISTEN "{channel}"')
        heard.add(channel)
    return new
