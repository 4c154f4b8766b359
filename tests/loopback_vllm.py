"""A small OpenAI-compatible server on loopback that validates and tokenizes requests the way vLLM does.

vLLM's ``/v1/completions`` tokenizes a prompt string with ``tokenizer(prompt)`` (``add_special_tokens``
on: BOS for Llama tokenizers), rejects with HTTP 400 a request whose prompt tokens plus ``max_tokens``
exceed ``max_model_len``, and lists ``max_model_len`` in ``/v1/models``. This server does the same with
a given tokenizer, records what it received (the token ids, ``max_tokens``), and answers with a text
chosen by the test. It is not vLLM (no model runs): it stands in for vLLM's request handling, which
cannot run on these CPU machines; the real servers (`transformers serve`, llama.cpp) are tested too.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackVLLM:
    def __init__(self, tokenizer, served_name="m", max_model_len=4096, answer=lambda prompt: "",
                 reject=lambda prompt: False):
        self.tokenizer, self.served_name, self.max_model_len = tokenizer, served_name, max_model_len
        self.answer, self.reject = answer, reject
        self.received = []  # dicts: prompt, ids, max_tokens
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": owner.served_name, "object": "model",
                                                                  "max_model_len": owner.max_model_len}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt, max_tokens = request["prompt"], request.get("max_tokens") or 16
                ids = owner.tokenizer(prompt)["input_ids"]  # vLLM: add_special_tokens defaults to True
                with owner._lock:
                    owner.received.append({"prompt": prompt, "ids": ids, "max_tokens": max_tokens})
                if len(ids) + max_tokens > owner.max_model_len or owner.reject(prompt):
                    self._send(400, {"object": "error", "type": "BadRequestError", "code": 400, "message":
                                     f"This model's maximum context length is {owner.max_model_len} tokens. "
                                     f"However, you requested {len(ids) + max_tokens} tokens ({len(ids)} in the "
                                     f"messages, {max_tokens} in the completion)."})
                    return
                text = owner.answer(prompt)
                self._send(200, {"id": "cmpl-0", "object": "text_completion", "created": 0,
                                 "model": owner.served_name,
                                 "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                                 "usage": {"prompt_tokens": len(ids), "completion_tokens": len(text.split()),
                                           "total_tokens": len(ids) + len(text.split())}})

        return Handler
