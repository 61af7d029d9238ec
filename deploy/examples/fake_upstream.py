"""A small OpenAI-compatible inference server for the compose demo (standard library only).

    python fake_upstream.py --host 0.0.0.0 --port 8000 --examples DIR

``POST /v1/chat/completions`` answers like an OpenAI server, as JSON or, with
``"stream": true``, as server-sent events (one chunk per word, then ``data: [DONE]``).
The answer to a prompt found in the example files (``*.jsonl`` of DIR: records with ``prompt``
and ``response``, e.g. monitor/examples/llava_eval_text) is the recorded llava-v1.5-13b answer,
so the monitor sees realistic answers; any other prompt gets a fixed sentence.
``GET /v1/models`` lists the one model, ``GET /healthz`` answers ``ok``.
Not for production: no auth, no limits beyond a 1 MiB body.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

MODEL = "llava-v1.5-13b"
FALLBACK = "I cannot tell from the image."
MAX_BODY = 1024 * 1024


def load_answers(directory: Path | None) -> dict[str, str]:
    """prompt -> recorded answer, from every *.jsonl file of directory."""
    answers: dict[str, str] = {}
    if directory is None:
        return answers
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get("prompt"), str) and isinstance(
                    record.get("response"), str
                ):
                    answers[record["prompt"]] = record["response"]
    return answers


def prompt_of(messages: Any) -> str:
    """The text of the last user message (string content or text parts)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            return "\n".join(t for t in texts if isinstance(t, str))
    return ""


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-upstream/1"
    answers: ClassVar[dict[str, str]] = {}

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(413, {"error": {"message": "body too large", "type": "invalid_request"}})
            return
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request"}})
            return
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            self._json(400, {"error": {"message": "messages is required", "type": "invalid"}})
            return
        answer = self.answers.get(prompt_of(request["messages"]), FALLBACK)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = request.get("model") or MODEL
        if request.get("stream"):
            self._stream(completion_id, model, answer)
            return
        self._json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )

    def _stream(self, completion_id: str, model: str, answer: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        words = answer.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
        for i, delta in enumerate([*deltas, {}]):
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": "stop" if i == len(deltas) else None,
                    }
                ],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible example upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--examples", type=Path, default=None, help="directory of *.jsonl")
    args = parser.parse_args(argv)
    Handler.answers = load_answers(args.examples)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = str(server.server_address[0]), server.server_address[1]
    print(f"fake upstream on http://{host}:{port} ({len(Handler.answers)} answers)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
