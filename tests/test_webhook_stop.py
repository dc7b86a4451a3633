"""A stopping server does not wait out its webhooks' retries: deliveries queued for a receiver
that keeps failing get no more retries and are given up, counted, so a hostile receiver cannot
hold the stop. A real receiver on loopback that answers 500 counts the attempts."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sdxl.runtime.webhooks import Webhooks, new_secret


class Failing(BaseHTTPRequestHandler):
    attempts = 0
    seen = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).attempts += 1
        type(self).seen.set()
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_stop_gives_up_queued_deliveries_without_retrying():
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    webhooks = Webhooks(new_secret(), public_only=False)
    try:
        for event in ("start", "output", "logs", "completed", "start", "completed"):
            webhooks.send("p1", url, event, None, lambda: {"id": "p1"})
        assert Failing.seen.wait(60)  # the first delivery is being tried (then retried)
        webhooks.close(timeout=0)
        webhooks._pool.shutdown(wait=True)  # its threads end: nothing holds the process
    finally:
        receiver.shutdown()
    # Retried without a stop: 5 attempts each, 30 in all over 45 s. Stopped: the delivery
    # under way ends after its current attempt and the other five are never tried.
    assert Failing.attempts <= 2, Failing.attempts
    assert webhooks.given_up == 6
