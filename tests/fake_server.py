"""A stand-in for llama-server that misbehaves on purpose, for faults a real tiny model does not
show: it takes llama-server's flags (only --port is used) plus `--fake-mode`:

  cannot-generate  /health answers 200, every completion answers 500.
  slow-health      /health answers 503 while a completion streams (a busy server whose
                   probes fail); a stream sends one SSE event per 0.1 s, max_tokens of them.

Tests copy it into an executable file whose first line is this interpreter, and name that
file as engines.llama_server.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

busy = threading.Event()


class Handler(BaseHTTPRequestHandler):
    mode = "cannot-generate"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            broken = self.mode == "slow-health" and busy.is_set()
            return self._send(503 if broken else 200, {"status": "busy" if broken else "ok"})
        return self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.mode == "cannot-generate":
            return self._send(500, {"error": {"message": "cannot generate", "code": 500}})
        if not body.get("stream"):
            return self._send(200, {"choices": [{"text": "x", "index": 0}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        busy.set()
        try:
            for _ in range(int(body.get("max_tokens", 10))):
                self._chunk(b'data: {"choices": [{"text": "x", "index": 0}]}\n\n')
                time.sleep(0.1)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        finally:
            busy.clear()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fake-mode", default="cannot-generate")
    args, _ = p.parse_known_args()
    Handler.mode = args.fake_mode
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
