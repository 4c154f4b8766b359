"""Generation backends: a local transformers model, any OpenAI-compatible server, or a chat API.

Each turns chat messages into its kind of prompt (`format_prompt`) and completes prompts, returning one
`Completion` per prompt, cut before the first stop string. `finish` says why generation ended: ``stop``
(a stop string), ``eos`` (end of turn) or ``length`` (token budget).

Two ways in:
- ``submit(prompt, sampling, stop, callback, index=0, sample_index=0)`` starts one request and returns at
  once; ``callback(completion)`` (or ``callback(exception)``) is called from another thread when it is
  done. The tool loop (`tir.run_tool_loop`) drives every backend this way, so a trajectory's next step
  goes out the moment its previous one ends. ``index`` varies the seed per trajectory; ``sample_index``
  tells identical prompts apart (k samples of one question).
- ``complete(prompts, sampling, stop)``: a list in, a list out (augmentation, the teacher benchmark).

Backends: ``transformers`` (`engine.Engine`: our continuous-batching engine with prefix reuse on the
model's ordinary forward, the default local backend), ``transformers-generate`` (`TransformersBackend`:
batched `generate`, the fallback and the naive baseline), ``openai`` / ``openai-chat`` (servers: vLLM,
SGLang, llama.cpp, `transformers serve`, or the OpenAI API), with up to ``max_concurrency`` requests in
flight.
"""
import asyncio
import os
import threading
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

# the completion primitives live in `completions` (the engine uses them too); re-exported for callers
from .completions import Completion, complete_with_submit, cut_at_stop, eos_token_ids  # noqa: F401
from .prompts import apply_prompt_format, encode_prompt, render_prompt


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class TransformersBackend:
    """Batched `generate` with left padding; prompts are length-sorted so batches carry little padding.

    The fallback local backend and the naive baseline: a row that stopped keeps computing until its batch is done,
    and every call re-encodes its prompts. It has no `submit`; the tool loop drives it through
    `BatchSubmitter`, which batches whatever requests are waiting whenever the model is free.
    """

    name = "transformers-generate"

    def __init__(self, model, tokenizer, batch_size=16, progress=True):
        self.identity = f"transformers:{getattr(model, 'name_or_path', '') or model.config.name_or_path}"
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        self.tokenizer.padding_side = "left"

    def format_prompt(self, messages):
        return render_prompt(self.tokenizer, messages)

    def complete(self, prompts, sampling, stop=(), on_result=None):
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        results = [None] * len(prompts)
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", disable=not self.progress or len(batches) < 2, leave=False):
            for index, completion in zip(batch, self.generate_batch([prompts[i] for i in batch], sampling, stop)):
                results[index] = completion
                if on_result is not None:
                    on_result(index, completion)
        return results

    def generate_batch(self, prompts, sampling, stop):
        import torch

        ids = [encode_prompt(self.tokenizer, prompt) for prompt in prompts]  # the one BOS rule
        encoded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.model.device)
        kwargs = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self.model.generate(**encoded, **kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        eos_ids = self._eos_ids()
        completions = []
        for row, prompt_mask in zip(new_tokens, encoded["attention_mask"]):
            ids = row.tolist()
            ended = next((position for position, token in enumerate(ids) if token in eos_ids), None)
            used = ids[:ended] if ended is not None else ids
            text, stopped = cut_at_stop(self.tokenizer.decode(used, skip_special_tokens=True), stop)
            finish = "stop" if stopped else ("eos" if ended is not None else "length")
            completions.append(Completion(text, finish, int(prompt_mask.sum()), len(used)))
        return completions

    def _eos_ids(self):
        return eos_token_ids(self.model, self.tokenizer)


class BatchSubmitter:
    """`submit` for a backend that only has `complete`: a worker thread batches whatever is waiting.

    Requests that arrive while a batch runs wait for the next one, so there is no round barrier, but a
    batch still ends with its slowest request (the `generate` fallback's nature).
    """

    def __init__(self, backend):
        self.backend = backend
        self._waiting = []
        self._ready = threading.Condition()
        threading.Thread(target=self._work, daemon=True, name="mumath-batch-submitter").start()

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        with self._ready:
            self._waiting.append((prompt, sampling, tuple(stop), callback))
            self._ready.notify()

    def _work(self):
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._waiting)
                sampling, stop = self._waiting[0][1], self._waiting[0][2]
                batch = [item for item in self._waiting if item[1] == sampling and item[2] == stop]
                self._waiting = [item for item in self._waiting if not (item[1] == sampling and item[2] == stop)]
            try:
                completions = self.backend.complete([item[0] for item in batch], sampling, list(stop))
            except Exception as error:  # handed to every waiting caller, raised in the tool loop
                completions = [error] * len(batch)
            for item, completion in zip(batch, completions):
                item[3](completion)


def submitter(backend):
    """The object to `submit` requests to: the backend itself, or a `BatchSubmitter` kept on it."""
    if hasattr(backend, "submit"):
        return backend
    if getattr(backend, "_batch_submitter", None) is None:
        backend._batch_submitter = BatchSubmitter(backend)
    return backend._batch_submitter


class OpenAIBackend:
    """Any OpenAI-compatible `/v1/completions` server (vLLM, SGLang, llama.cpp, ...), many requests in flight.

    The API key is read from the environment variable named by `api_key_env` and is never stored.
    Retries with backoff on 429, 5xx and timeouts are the openai client's own (`max_retries`).
    """

    name = "openai"

    def __init__(self, base_url, model, api_key_env="OPENAI_API_KEY", max_concurrency=16, timeout=600.0,
                 max_retries=3, progress=True, tokenizer=None, context_length=None):
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries
        self.progress, self.tokenizer = progress, tokenizer
        # The served model's context window (prompt + new tokens); None: asked once from the server
        # (vLLM lists `max_model_len` in /v1/models), else unknown and max_tokens is sent as given.
        self.context_length, self._context_asked = context_length, context_length is not None
        self.identity = f"{self.name}:{base_url or 'api.openai.com'}:{model}"

    def format_prompt(self, messages):
        if self.tokenizer is None:
            raise ValueError("the openai completions backend formats chat prompts with a tokenizer: set "
                             "parameter 'tokenizer' (or use backend 'openai-chat')")
        return render_prompt(self.tokenizer, messages)

    def _client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                           timeout=self.timeout, max_retries=self.max_retries)

    def complete(self, prompts, sampling, stop=(), on_result=None):
        return run_coroutine(self._complete_all(prompts, sampling, list(stop), on_result))

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        """One request on the backend's own event loop thread; at most `max_concurrency` in flight."""
        loop = self._event_loop()
        future = asyncio.run_coroutine_threadsafe(self._submitted(prompt, sampling, list(stop), index), loop)
        future.add_done_callback(lambda done: callback(done.exception() or done.result()))

    async def _submitted(self, prompt, sampling, stop, index):
        if self._async_client is None:
            self._async_client = self._client()
            self._in_flight = asyncio.Semaphore(self.max_concurrency)
        async with self._in_flight:
            return await self._guarded_request(self._async_client, prompt, sampling, stop, sampling.seed + index)

    async def _guarded_request(self, client, prompt, sampling, stop, seed):
        """One request whose rejection is that request's result, not everyone's failure.

        `max_tokens` is clamped to the context left after the prompt where both are known (a prompt that
        leaves no room ends with finish ``length`` and no request). A request the server rejects (400, 413,
        422, ...), or that still fails after the client's retries (5xx, timeouts), comes back as an empty
        completion with finish ``error: <status> <message>``; its trajectory ends there, the others go on.
        Configuration errors still raise: no server (connection refused), a wrong key or model (401, 403, 404).
        """
        import openai

        if self.tokenizer is not None:
            self._learn_context_length()
        room = self._room(prompt)
        if room is not None and room[1] <= 0:
            return Completion("", "length", room[0], 0)
        if room is not None and room[1] < sampling.max_new_tokens:
            sampling = replace(sampling, max_new_tokens=room[1])
        try:
            return await self._request(client, prompt, sampling, stop, seed)
        except openai.APIStatusError as error:
            if error.status_code in (401, 403, 404):
                raise
            return Completion("", f"error: {error.status_code} {request_error_message(error)}")
        except openai.APITimeoutError as error:
            return Completion("", f"error: timeout {error}"[:500])

    def _room(self, prompt):
        """(prompt tokens, new tokens that still fit) when the context length and a tokenizer are known."""
        if self.context_length is None or self.tokenizer is None or not isinstance(prompt, str):
            return None
        used = len(encode_prompt(self.tokenizer, prompt))
        return used, self.context_length - used

    def _learn_context_length(self):
        """Ask the server once for the model's context window (blocking, once per backend)."""
        with _CONTEXT_LOCK:
            if self._context_asked:
                return
            self._context_asked = True
            from openai import OpenAI

            try:
                client = OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                                timeout=10.0, max_retries=0)
                entries = client.models.list().data
            except Exception:  # not every server lists its models: the window stays unknown
                return
            for entry in entries:
                length = (getattr(entry, "model_extra", None) or {}).get("max_model_len")
                if entry.id == self.model and isinstance(length, int):
                    self.context_length = length

    def _event_loop(self):
        with _LOOP_LOCK:
            if getattr(self, "_loop", None) is None:
                self._loop, self._async_client = asyncio.new_event_loop(), None
                threading.Thread(target=self._loop.run_forever, daemon=True, name="mumath-requests").start()
        return self._loop

    async def _request(self, client, prompt, sampling, stop, seed):
        response = await client.completions.create(
            model=self.model, prompt=prompt, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, stop=stop or None, seed=seed)
        return self._to_completion(response, stop)

    async def _complete_all(self, prompts, sampling, stop, on_result=None):
        client = self._client()
        limit = asyncio.Semaphore(self.max_concurrency)
        bar = tqdm(total=len(prompts), desc="requests", disable=not self.progress or len(prompts) < 2,
                   leave=False)

        async def one(index, prompt):
            async with limit:
                completion = await self._guarded_request(client, prompt, sampling, stop, sampling.seed + index)
            bar.update()
            if on_result is not None:
                on_result(index, completion)
            return completion

        try:
            return await asyncio.gather(*(one(index, prompt) for index, prompt in enumerate(prompts)))
        finally:
            bar.close()
            await client.close()

    @staticmethod
    def _to_completion(response, stop):
        choice = response.choices[0]
        text, stopped = cut_at_stop(choice.text, stop)
        if choice.finish_reason == "length":
            finish = "length"
        elif stopped or getattr(choice, "stop_reason", None) in stop:  # vLLM names the stop string
            finish = "stop"
        elif choice.finish_reason == "stop" and stop and ends_with_unexecuted_code(text):
            # Servers that drop the matched stop string and do not name it (llama.cpp): a turn that
            # ends right after a closed python block stopped at the output marker.
            finish = "stop"
        else:
            finish = "eos"
        usage = response.usage
        return Completion(text, finish, getattr(usage, "prompt_tokens", 0) or 0,
                          getattr(usage, "completion_tokens", 0) or 0)


class ChatPrompt:
    """Chat messages plus the assistant's partial reply so far; `prompt + text` extends the partial reply.

    This is what the tool loop hands a chat-only API: it concatenates generations onto prompts, and this
    makes that mean "continue the assistant turn".
    """

    def __init__(self, messages, partial=""):
        self.messages, self.partial = [dict(m) for m in messages], partial

    def __add__(self, text):
        return ChatPrompt(self.messages, self.partial + text)

    def __len__(self):
        return sum(len(m["content"]) for m in self.messages) + len(self.partial)

    def to_messages(self):
        return self.messages + ([{"role": "assistant", "content": self.partial}] if self.partial else [])

    def cache_text(self):
        import json

        return json.dumps(self.to_messages(), ensure_ascii=False)


class OpenAIChatBackend(OpenAIBackend):
    """`/v1/chat/completions` (the OpenAI API, or a server's chat endpoint).

    A partial assistant reply goes back as the last assistant message; `continue_final_message` asks
    vLLM / SGLang to continue it in place, and other servers (and OpenAI) answer with its continuation.
    """

    name = "openai-chat"

    def __init__(self, *args, continue_final_message=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.continue_final_message = continue_final_message

    def format_prompt(self, messages):
        return ChatPrompt(messages)

    async def _request(self, client, prompt, sampling, stop, seed):
        extra = {}
        if prompt.partial and self.continue_final_message:
            extra = {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}}
        response = await client.chat.completions.create(
            model=self.model, messages=prompt.to_messages(), max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature, top_p=sampling.top_p, stop=stop or None, seed=seed, **extra)
        choice = response.choices[0]
        choice.text = choice.message.content or ""
        return self._to_completion(response, stop)


_LOOP_LOCK = threading.Lock()
_CONTEXT_LOCK = threading.Lock()


def request_error_message(error):
    """The server's own reason for rejecting a request (vLLM: the context-length message), kept short."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if message:
            return str(message)[:400]
    return str(getattr(error, "message", error))[:400]


def is_request_error(finish):
    """Whether a finish reason records a failed request (``error: ...``), not the model's own ending."""
    return isinstance(finish, str) and finish.startswith("error")


def ends_with_unexecuted_code(text):
    stripped = text.rstrip()
    last_code = stripped.rfind("```python")
    return stripped.endswith("```") and last_code > stripped.rfind("```output") and last_code != -1 \
        and stripped.count("```", last_code) >= 2


def run_coroutine(coroutine):
    """asyncio.run that also works inside Jupyter, where an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box = {}

    def target():
        try:
            box["result"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


BACKENDS = ["transformers", "transformers-generate", "openai", "openai-chat"]


def make_backend(backend="transformers", model="embedded", base_url=None, api_model=None, batch_size=16,
                 max_concurrency=16, api_key_env="OPENAI_API_KEY", dtype="auto", progress=True, tokenizer=None,
                 max_retries=3, kv_cache_tokens=32768, max_prefill_tokens=2048, prompt_format="chat",
                 context_length=None):
    """The backend a run's parameters ask for.

    For ``transformers`` (the engine, default) `batch_size` caps the requests decoded together,
    `kv_cache_tokens` bounds the prefix store and `max_prefill_tokens` one admission's prefill; for
    ``transformers-generate`` `batch_size` is the `generate` batch. `dtype`: ``auto`` (fp32 on CPU, bf16
    on GPU) or a torch dtype name (``bfloat16`` is ~1.8x faster on CPUs with avx512_bf16, but its greedy
    outputs differ from fp32's). `prompt_format` (`mumath.prompts.PROMPT_FORMATS`) sets the chat template
    the prompts are formatted with; `context_length` is the served model's window for the ``openai``
    backend (None: asked from the server), which clamps each request's ``max_tokens``.
    """
    if backend in ("transformers", "transformers-generate"):
        from .models import load_model

        loaded, tokenizer = load_model(model, dtype=dtype)
        apply_prompt_format(tokenizer, prompt_format)
        if backend == "transformers-generate":
            return TransformersBackend(loaded, tokenizer, batch_size=batch_size, progress=progress)
        from .engine import Engine

        return Engine(loaded, tokenizer, max_batch_requests=batch_size, max_prefill_tokens=max_prefill_tokens,
                      kv_cache_tokens=kv_cache_tokens, progress=progress)
    if backend in ("openai", "openai-chat"):
        if not base_url and not os.environ.get("OPENAI_BASE_URL") and not os.environ.get(api_key_env):
            raise ValueError(f"backend '{backend}' needs parameter 'base_url' (a server) or the environment "
                             f"variable {api_key_env} (the OpenAI API)")
        if backend == "openai-chat":
            if prompt_format != "chat":
                raise ValueError(f"parameter 'prompt_format' is '{prompt_format}', but backend 'openai-chat' "
                                 "formats prompts on the server; use backend 'openai' (completions)")
            return OpenAIChatBackend(base_url or os.environ.get("OPENAI_BASE_URL"), api_model or model,
                                     api_key_env=api_key_env, max_concurrency=max_concurrency, progress=progress,
                                     max_retries=max_retries)
        from .models import load_tokenizer

        return OpenAIBackend(base_url or os.environ.get("OPENAI_BASE_URL"), api_model or model,
                             api_key_env=api_key_env, max_concurrency=max_concurrency, progress=progress,
                             tokenizer=apply_prompt_format(load_tokenizer(tokenizer or model), prompt_format),
                             max_retries=max_retries, context_length=context_length)
    raise ValueError(f"parameter 'backend': '{backend}' is not one of {BACKENDS}")
