"""The teacher: any backend, plus a response cache on disk and token accounting.

`Teacher` has the backends' interface (`format_prompt`, `complete`), so the tool-integrated loop and the
augmentation code use it unchanged. A request's cache key is the sha256 of (backend identity, model,
prompt, sampling parameters, stop strings, sample index); the sample index is the number of identical
requests before it in the same call, so k samples of one prompt are k entries.

The cache is an append-only JSONL file. Each response is appended and flushed the moment it arrives, so
a crash or a kill loses at most the requests in flight, and a re-run pays no call for finished work.
A line torn by a kill is cut off on open (`records.repair_torn_tail`); any other broken line is reported.
"""
import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import Completion, is_request_error, make_backend, submitter
from .records import read_jsonl, repair_torn_tail


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_per_1m_prompt: float = None
    price_per_1m_completion: float = None
    by_step: dict = field(default_factory=dict)

    @property
    def cost(self):
        if self.price_per_1m_prompt is None or self.price_per_1m_completion is None:
            return None
        return (self.prompt_tokens * self.price_per_1m_prompt
                + self.completion_tokens * self.price_per_1m_completion) / 1e6

    def to_dict(self):
        return dict(asdict(self), cost_usd=self.cost)


class ResponseCache:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = {}
        self._lock = threading.Lock()
        repair_torn_tail(self.path)  # the one JSONL policy: a torn last line is cut, corruption raises
        for entry in read_jsonl(self.path):
            self.entries[entry["key"]] = Completion(**entry["completion"])
        self._handle = open(self.path, "a", encoding="utf-8")

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, completion):
        with self._lock:
            if key in self.entries:
                return
            self.entries[key] = completion
            self._handle.write(json.dumps({"key": key, "completion": asdict(completion)}, ensure_ascii=False) + "\n")
            self._handle.flush()

    def __len__(self):
        return len(self.entries)

    def close(self):
        self._handle.close()


def request_key(identity, prompt, sampling, stop, sample_index):
    text = prompt.cache_text() if hasattr(prompt, "cache_text") else prompt
    blob = json.dumps([identity, text, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                       sampling.seed, list(stop), sample_index], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Teacher:
    """A backend behind a disk cache, counting requests, cache hits and tokens (per `step` too)."""

    def __init__(self, backend, cache_path, price_per_1m_prompt=None, price_per_1m_completion=None):
        self.backend = backend
        self.identity = getattr(backend, "identity", type(backend).__name__)
        self.cache = ResponseCache(cache_path)
        self.usage = Usage(price_per_1m_prompt=price_per_1m_prompt, price_per_1m_completion=price_per_1m_completion)
        self.step = "default"
        self._usage_lock = threading.Lock()  # results arrive on the backends' threads

    def format_prompt(self, messages):
        return self.backend.format_prompt(messages)

    def complete(self, prompts, sampling, stop=(), on_result=None):
        seen = {}
        keys = []
        for prompt in prompts:
            text = prompt.cache_text() if hasattr(prompt, "cache_text") else prompt
            sample_index = seen.get(text, 0)
            seen[text] = sample_index + 1
            keys.append(request_key(self.identity, prompt, sampling, stop, sample_index))
        results = [self.cache.get(key) for key in keys]
        missing = [index for index, result in enumerate(results) if result is None]
        self._count(hits=len(prompts) - len(missing))
        if missing:
            def store(position, completion):
                index = missing[position]
                if not is_request_error(completion.finish):  # a failed request is asked again next run
                    self.cache.put(keys[index], completion)
                self._count(requests=1, completion=completion)

            fresh = self.backend.complete([prompts[i] for i in missing], sampling, stop, on_result=store)
            for index, completion in zip(missing, fresh):
                results[index] = completion
        return results

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        """One request through the cache (the tool loop's way in); `sample_index` as in `complete`'s key."""
        key = request_key(self.identity, prompt, sampling, stop, sample_index)
        cached = self.cache.get(key)
        if cached is not None:
            self._count(hits=1)
            callback(cached)
            return

        def store(result):
            if not isinstance(result, BaseException):
                if not is_request_error(result.finish):  # a failed request is asked again next run
                    self.cache.put(key, result)
                self._count(requests=1, completion=result)
            callback(result)

        submitter(self.backend).submit(prompt, sampling, stop, store, index=index, sample_index=sample_index)

    def _count(self, hits=0, requests=0, completion=None):
        with self._usage_lock:
            self._count_unlocked(hits, requests, completion)

    def _count_unlocked(self, hits, requests, completion):
        step = self.usage.by_step.setdefault(self.step, {"requests": 0, "cache_hits": 0, "prompt_tokens": 0,
                                                         "completion_tokens": 0})
        for target in (self.usage.__dict__, step):
            target["cache_hits"] += hits
            target["requests"] += requests
            if completion is not None:
                target["prompt_tokens"] += completion.prompt_tokens
                target["completion_tokens"] += completion.completion_tokens

    server = None  # a `mumath.server.ManagedServer` this teacher started, stopped by `close`

    def close(self):
        self.cache.close()
        if self.server is not None:
            self.server.stop()


def make_teacher(run_dir, backend="transformers", model="embedded", base_url=None, api_model=None,
                 api_key_env="OPENAI_API_KEY", tokenizer=None, batch_size=16, max_concurrency=None, max_retries=3,
                 cache_path=None, price_per_1m_prompt=None, price_per_1m_completion=None, progress=True,
                 server=None, log_dir=None):
    """The teacher a step's parameters ask for; its cache defaults to <run_dir>/cache/teacher.jsonl.

    `server` (a `mumath.server.ServerSpec` dict) starts that server now and talks to it (backend
    ``openai`` with its model's tokenizer); `Teacher.close` stops it, and so does the end of this process.
    Its log goes to <log_dir>/server.log (default <run_dir>/cache/). `max_concurrency` None: the
    server engine's default (512 for vLLM / SGLang), else 16.
    """
    managed = None
    if server:
        from .server import ManagedServer

        managed = ManagedServer(server, Path(log_dir or Path(run_dir) / "cache") / "server.log").start()
        client = managed.client_settings()
        backend = "openai-chat" if backend == "openai-chat" else "openai"
        base_url, api_model = client["base_url"], client["api_model"]
        tokenizer, model = tokenizer or managed.spec.model, managed.spec.model
        max_concurrency = max_concurrency or client["max_concurrency"]
    try:
        engine = make_backend(backend, model, base_url=base_url, api_model=api_model, batch_size=batch_size,
                              max_concurrency=max_concurrency or 16, api_key_env=api_key_env, progress=progress,
                              tokenizer=tokenizer, max_retries=max_retries,
                              context_length=managed.spec.max_model_len if managed else None)
        cache_path = cache_path or Path(run_dir) / "cache" / "teacher.jsonl"
        teacher = Teacher(engine, cache_path, price_per_1m_prompt, price_per_1m_completion)
    except BaseException:
        if managed is not None:
            managed.stop()
        raise
    teacher.server = managed
    return teacher
