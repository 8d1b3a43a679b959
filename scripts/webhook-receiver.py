#!/usr/bin/env python3
"""A loopback webhook receiver for the demo: prints every POSTed body, its
path and whether it came with a bearer token (never the token)."""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        bearer = self.headers.get("Authorization", "").startswith("Bearer ")
        with_token = " with a bearer token" if bearer else ""
        print(
            f"webhook received{with_token} at {self.path}: {body.decode(errors='replace')}",
            flush=True,
        )
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8765").split(":")
HTTPServer((host, int(port)), Hook).serve_forever()
