"""A loopback HTTP server of test files; a path listed in `held` sends its first bytes, then
waits for `release` before sending the rest (a slow or stalled download, or a job held in
preparation until the test lets it go)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Files:
    """See the module docstring; `requested` counts the GETs of each path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.held: set[str] = set()
        self.release = threading.Event()
        self.started = threading.Event()  # a held download has begun
        self.requested: dict[str, int] = {}
        files = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                files.requested[self.path] = files.requested.get(self.path, 0) + 1
                data = files.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in files.held:
                    self.wfile.write(data[:100])
                    self.wfile.flush()
                    files.started.set()
                    while not files.release.wait(0.05):
                        pass
                    self.wfile.write(data[100:])
                else:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
