"""Test doubles: an Engine whose chat is slow or failing without a model (the library is real), and a tiny
OpenAI-compatible HTTP server for the remote chat backend."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core import store
from core.chat import ReplyStats, StreamPiece
from core.library import Library


class SlowEngine:
    """Replies ``words`` one every ``step_s`` seconds; ``fail_after`` words in, it raises (first call only when
    ``fail_once``). The adapter library is the real one under DEMOFORGE_HOME."""

    def __init__(
        self,
        words: int = 3,
        step_s: float = 0.4,
        fail_after: int | None = None,
        fail_once: bool = True,
        error: BaseException | None = None,
    ) -> None:
        self.words, self.step_s, self.fail_after, self.fail_once = words, step_s, fail_after, fail_once
        self.error = error or RuntimeError("CUDA out of memory (simulated)")
        self.calls = 0
        self.adapters_used: list[str | None] = []
        self.lock = threading.Lock()
        self.library = Library(lambda name: None, lambda fn, *a, **k: fn(*a, **k))

    def chat_label(self) -> str:
        return "fake · float32 · cpu"

    def storage_lost_on_restart(self) -> str | None:
        return store.storage_lost_on_restart(store.home())

    def chat_adapters(self) -> list:
        return self.library.list("sft")

    def switch_adapter(self, name: str | None) -> float:
        if name:
            self.library.get(name)
        return 0.0

    def chat_stream(self, history, settings, system_prompt=None, adapter=None) -> Iterator[StreamPiece]:
        with self.lock:
            self.calls += 1
            call = self.calls
        if adapter:
            self.library.get(adapter)  # AdapterError "No adapter named ..." like the real engine
        self.adapters_used.append(adapter)
        failing = self.fail_after is not None and (call == 1 or not self.fail_once)
        start = time.perf_counter()
        text = ""
        for i in range(self.words):
            if failing and i == self.fail_after:
                raise self.error
            time.sleep(self.step_s)
            text += ["one ", "two ", "three "][i] if i < 3 else f"w{i} "
            yield StreamPiece(text=text)
        stats = ReplyStats(prompt_tokens=5, new_tokens=self.words, first_token_s=self.step_s)
        stats.total_s = time.perf_counter() - start
        yield StreamPiece(text=text, stats=stats, done=True)


class FakeOpenAIServer:
    """Serves /v1/models, /v1/chat/completions (SSE) and /v1/load_lora_adapter; ``mode`` picks the behaviour."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.models = [{"id": "base-model", "object": "model", "max_model_len": 4096}]
        self.requests: list[dict] = []
        self.lora_status = 404
        self.closed_early = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": fake.models})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if self.path == "/v1/load_lora_adapter":
                    if fake.lora_status == 200:
                        fake.models.append({"id": body["lora_name"], "object": "model"})
                        self._json(200, {})
                    else:
                        self._json(fake.lora_status, {"detail": "Not Found"})
                    return
                mode = fake.mode
                if mode == "401":
                    return self._json(401, {"error": {"message": "Invalid API key", "type": "auth"}})
                if body.get("model") not in {m["id"] for m in fake.models}:
                    return self._json(404, {"error": {"message": f"model {body.get('model')} not found"}})
                if mode == "context":
                    msg = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
                    return self._json(400, {"error": {"message": msg, "code": "context_length_exceeded"}})
                if mode == "hang":
                    time.sleep(5)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                words = 400 if mode == "long" else 5
                try:
                    for i in range(words):
                        last = i == words - 1 and mode != "cut"
                        chunk = {
                            "id": "x",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": "stop" if last else None}
                            ],
                        }
                        self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                        time.sleep(0.02)
                        if mode == "cut" and i == 2:
                            self.wfile.flush()
                            self.connection.shutdown(2)  # the server dies mid-reply
                            return
                    self._chunk(b"data: [DONE]\n\n")
                    self._chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    fake.closed_early.set()  # the client closed the stream (Stop)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
