"""A small real server for the supervisor's tests: answers GET /health on --port, appends what happens to it
(``NAME TERM``, ``NAME exit``) to --record, and on SIGTERM exits after --term-delay seconds, or not at all with
--ignore-term. --grandchild starts a `sleep` in its process group and writes its pid to --record + ".child"."""

from __future__ import annotations

import argparse
import http.server
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--term-delay", type=float, default=0.0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    args = parser.parse_args()

    def record(event: str) -> None:
        with args.record.open("a", encoding="utf-8") as handle:
            handle.write(f"{args.name} {event}\n")

    def on_term(number, frame) -> None:
        record("TERM")
        if args.ignore_term:
            return
        time.sleep(args.term_delay)
        record("exit")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.grandchild:
        child = subprocess.Popen(["sleep", "600"])
        Path(f"{args.record}.child").write_text(str(child.pid), encoding="utf-8")

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    if args.port:
        server = http.server.HTTPServer(("127.0.0.1", args.port), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"{args.name} serving on port {args.port}", flush=True)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
