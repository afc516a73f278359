"""A stand-in for the escalation tier that fails on purpose: each call takes the next of its
scripted answers (429, 500, a hang, 400, or a chat completion), and every request's headers and
body are kept for the test to read."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "advice"}}],
          "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}


class StandIn:
    def __init__(self, script: list):
        """script: per call, an int status (429 comes with Retry-After: 0), "hang" (no answer
        until the test ends), or a dict (a 200 with that body); the last repeats."""
        self.script, self.requests, self.release = list(script), [], threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()  # (headers and body go out as two writes: without this, Nagle meets delayed ACKs)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                standin.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                step = standin.script.pop(0) if len(standin.script) > 1 else standin.script[0]
                if step == "hang":
                    standin.release.wait(120)
                    return
                status, answer = (200, step) if isinstance(step, dict) else (step, {"error": {"message": "scripted"}})
                data = json.dumps(answer).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
