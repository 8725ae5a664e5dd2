"""Fake model servers on 127.0.0.1: OpenAI's Chat Completions and Anthropic's Messages, scripted per test.

The official SDKs talk to them over real HTTP, as they would to the real services. Each request takes the next
scripted step (the last one repeats); every request body is kept so tests can read the prompts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Step:
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    tokens: tuple[int, int] = (1000, 200)


def reply(text: str, **kw: Any) -> Step:
    return Step(text=text, **kw)


def failure(status: int, **kw: Any) -> Step:
    return Step(status=status, **kw)


class Script:
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def next(self, body: dict[str, Any], headers: dict[str, str]) -> Step:
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)
            i = len(self.requests) - 1
            return self.steps[min(i, len(self.steps) - 1)]

    def prompts(self) -> list[str]:
        out = []
        for body in self.requests:
            out.append(json.dumps(body))
        return out


def _openai(step: Step, model: str) -> dict[str, Any]:
    a, b = step.tokens
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": step.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": a, "completion_tokens": b, "total_tokens": a + b},
    }


def _anthropic(step: Step, model: str) -> dict[str, Any]:
    a, b = step.tokens
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": step.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": a, "output_tokens": b},
    }


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            step = script.next(body, {k.lower(): v for k, v in self.headers.items()})
            if step.delay:
                time.sleep(step.delay)
            if step.status != 200:
                payload = json.dumps({"error": {"message": f"scripted {step.status}", "type": "fake"}}).encode()
            elif self.path.endswith("/chat/completions"):
                payload = json.dumps(_openai(step, body.get("model", "m"))).encode()
            elif self.path.endswith("/messages"):
                payload = json.dumps(_anthropic(step, body.get("model", "m"))).encode()
            else:
                step, payload = Step(status=404), b'{"error": {"message": "no such endpoint"}}'
            try:
                self.send_response(step.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for k, v in step.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a scripted slow response past its timeout)

    return Handler


@contextmanager
def serve(steps: list[Step]) -> Iterator[tuple[str, Script]]:
    """A server on 127.0.0.1 (port 0); yields its base URL and the script with the requests it got."""
    script = Script(steps)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
