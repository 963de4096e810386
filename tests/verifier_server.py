"""A real HTTP verifier process for the feedback tests (rise/feedback/verifier.py's protocol).

    python tests/verifier_server.py PORT

Routes, each a verifier a test configures by URL:

- ``/seven``: ``correct`` when the attempt's answer is 7, else ``incorrect`` with a message
  that says so ("The result should be 7.");
- ``/slow``: answers after ``SLOW_S`` seconds (beyond a test's timeout);
- ``/error``: HTTP 500;
- ``/garbage``: 200 with a body that is not JSON;
- ``/shapeless``: 200 with JSON that is not the protocol's (no verdict).

Every request is appended to ``requests.jsonl`` beside ``--log`` when given, so a test can
check what the loop sent.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SLOW_S = 3.0


class Handler(BaseHTTPRequestHandler):
    log_file: Path | None = None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(json.dumps({"path": self.path, **body}) + "\n")
        if self.path == "/seven":
            right = body.get("answer") == "7"
            reply = {"verdict": "correct"} if right else {
                "verdict": "incorrect", "message": "The result should be 7."
            }  # fmt: skip
            self._send(200, json.dumps(reply).encode())
        elif self.path == "/slow":
            time.sleep(SLOW_S)
            self._send(200, b'{"verdict": "correct"}')
        elif self.path == "/error":
            self._send(500, b'{"detail": "checker crashed"}')
        elif self.path == "/garbage":
            self._send(200, b"<html>not json</html>")
        elif self.path == "/shapeless":
            self._send(200, b'{"ok": true}')
        else:
            self._send(404, b"{}")

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def main() -> None:
    port = int(sys.argv[1])
    if len(sys.argv) > 3 and sys.argv[2] == "--log":
        Handler.log_file = Path(sys.argv[3])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"verifier listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
