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

Backends: ``transformers`` (`TransformersBackend`: batched `generate`, the default and the naive baseline),
``transformers-cb`` (`ContinuousBatchingBackend`: transformers' continuous batching, one persistent engine
with a paged KV cache and prefix sharing; identical greedy outputs, but slower on CPU as measured), ``openai`` / ``openai-chat`` (servers: vLLM, SGLang,
llama.cpp, `transformers serve`, or the OpenAI API), with up to ``max_concurrency`` requests in flight.
"""
import asyncio
import math
import os
import threading
from dataclasses import dataclass, field

from tqdm.auto import tqdm


@dataclass
class Completion:
    text: str
    finish: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def cut_at_stop(text, stop):
    """Text before the earliest stop string, and whether one was found."""
    cuts = [text.find(marker) for marker in stop if marker and marker in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class TransformersBackend:
    """Batched `generate` with left padding; prompts are length-sorted so batches carry little padding.

    The default local backend and the naive baseline: a row that stopped keeps computing until its batch is done,
    and every call re-encodes its prompts. It has no `submit`; the tool loop drives it through
    `BatchSubmitter`, which batches whatever requests are waiting whenever the model is free.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size=16, progress=True):
        self.identity = f"transformers:{getattr(model, 'name_or_path', '') or model.config.name_or_path}"
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        self.tokenizer.padding_side = "left"

    def format_prompt(self, messages):
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

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

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = encoded.to(self.model.device)
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
        return _eos_ids(self.model, self.tokenizer)


def stop_token_ids(tokenizer, stop):
    """Vocabulary tokens that can end a stop string: the engine halts a request on any of them.

    A token qualifies when its text ends with the stop string's last token as the tokenizer writes it
    (``output`` for ```` ```output ````), or holds the whole stop string. Such a token can also appear
    elsewhere ("the output is"): the host then checks the text and resumes (`ContinuousBatchingBackend`).
    A stop written in unusual pieces is still caught on the host when the request ends (and cut there).
    """
    if not stop:
        return frozenset()
    ids = set()
    vocabulary = tokenizer.get_vocab()
    texts = {token_id: tokenizer.convert_tokens_to_string([token]) for token, token_id in vocabulary.items()}
    for marker in stop:
        pieces = tokenizer(marker, add_special_tokens=False)["input_ids"]
        tail = tokenizer.decode(pieces[-1:]) if pieces else marker
        tail = tail if tail and tail in marker else marker
        ids |= {token_id for token_id, text in texts.items()
                if text.endswith(tail) or marker in text}
    return frozenset(ids - set(tokenizer.all_special_ids))


@dataclass
class _Step:
    """One generation step of the continuous batching backend: a prompt, generated until a real stop."""

    prompt_ids: list
    max_new_tokens: int
    stop: tuple
    callback: object
    generated: list = field(default_factory=list)
    resumes: int = 0


class ContinuousBatchingBackend:
    """transformers' continuous batching (`ContinuousBatchingManager`): one engine for the whole run.

    A background thread steps every request in flight together; a request joins the next step the moment
    it is submitted, and one that ends leaves at once (no batch waits for its slowest row). The paged KV
    cache shares prefix blocks between requests and keeps finished requests' blocks for reuse, so the
    few-shot prompt, and a trajectory's own text when it comes back after an execution, are not
    recomputed. The cache is sized explicitly (`kv_cache_tokens`; the engine's own default takes most
    of the free memory).

    The engine has no stop strings: a request stops on any token that can end one (`stop_token_ids`);
    the host then decodes and checks the text, and resumes generation from the same tokens when the
    stop string is not there (a *false stop*, counted in `false_stops`).

    One sampling setting at a time: the engine's logits processors are fixed when it starts, so a call
    with another temperature/top-p waits for the requests in flight and restarts the engine.
    """

    name = "transformers-cb"

    def __init__(self, model, tokenizer, max_batch_requests=32, kv_cache_tokens=32768, page_size=32,
                 max_batch_tokens=512, progress=True):
        self.identity = f"transformers-cb:{getattr(model, 'name_or_path', '') or model.config.name_or_path}"
        self.model, self.tokenizer, self.progress = model, tokenizer, progress
        self.max_batch_requests, self.page_size, self.max_batch_tokens = max_batch_requests, page_size, max_batch_tokens
        self.num_blocks = math.ceil(kv_cache_tokens / page_size)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.false_stops = 0
        self._manager, self._sampling_key = None, None
        self._steps = {}  # request id -> _Step
        self._stop_ids = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counter = 0
        self._closed = False
        _at_exit(self.close)

    def format_prompt(self, messages):
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def kv_cache_bytes(self):
        config = self.model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize
        return self.num_blocks * self.page_size * per_token

    # -- requests ----------------------------------------------------------------------------------------

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        step = _Step(prompt_ids, sampling.max_new_tokens, tuple(stop), callback)
        self._add(step, sampling)

    def complete(self, prompts, sampling, stop=(), on_result=None):
        return complete_with_submit(self, prompts, sampling, stop, on_result, self.progress)

    def _add(self, step, sampling=None):
        with self._lock:
            if sampling is not None:
                self._ensure_engine(sampling)
            self._counter += 1
            request_id = f"mumath-{self._counter}"
            self._steps[request_id] = step
            eos = sorted(self.eos_ids | self._stop_token_ids(step.stop))
            added = self._manager.add_request(step.prompt_ids + step.generated, request_id=request_id,
                                              max_new_tokens=step.max_new_tokens - len(step.generated),
                                              eos_token_id=eos)
        if added is None:
            self._finish(request_id, RuntimeError("the continuous batching engine refused a request (stopped?)"))

    def _stop_token_ids(self, stop):
        if stop not in self._stop_ids:
            self._stop_ids[stop] = stop_token_ids(self.tokenizer, stop)
        return self._stop_ids[stop]

    def _on_output(self, output):
        """Called on the dispatcher thread with each finished request."""
        with self._lock:
            step = self._steps.get(output.request_id)
        if step is None:
            return
        if output.error is not None:
            self._finish(output.request_id, RuntimeError(f"generation failed: {output.error}"))
            return
        step.generated += list(output.generated_tokens)
        last = step.generated[-1] if step.generated else None
        ended = last in self.eos_ids
        used = step.generated[:-1] if ended else step.generated
        text, stopped = cut_at_stop(self.tokenizer.decode(used, skip_special_tokens=True), step.stop)
        if not stopped and not ended and last in self._stop_token_ids(step.stop) \
                and len(step.generated) < step.max_new_tokens:
            # A false stop: the token can end the stop string but the text does not hold it; go on from here.
            step.resumes += 1
            with self._lock:
                self.false_stops += 1
                del self._steps[output.request_id]
            self._add(step)
            return
        finish = "stop" if stopped else ("eos" if ended else "length")
        self._finish(output.request_id, Completion(text, finish, len(step.prompt_ids), len(used)))

    def _finish(self, request_id, result):
        with self._lock:
            step = self._steps.pop(request_id)
            self._idle.notify_all()
        step.callback(result)

    # -- the engine --------------------------------------------------------------------------------------

    def _ensure_engine(self, sampling):
        """Start the engine for this sampling setting (called with the lock held)."""
        if self._closed:
            raise RuntimeError("the continuous batching backend is closed")
        key = (sampling.temperature, sampling.top_p, sampling.seed if sampling.temperature > 0 else None)
        if self._manager is not None and key == self._sampling_key:
            return
        if self._manager is not None:
            self._idle.wait_for(lambda: not self._steps)
            self._stop_engine()
        from transformers import ContinuousBatchingConfig, GenerationConfig

        do_sample = sampling.temperature > 0
        generation_config = GenerationConfig(
            do_sample=do_sample, temperature=sampling.temperature if do_sample else None,
            top_p=sampling.top_p if do_sample else None, top_k=None, max_new_tokens=sampling.max_new_tokens,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id)
        engine_config = ContinuousBatchingConfig(
            page_size=self.page_size, num_blocks=self.num_blocks, max_batch_tokens=self.max_batch_tokens,
            max_requests_per_batch=self.max_batch_requests, allow_block_sharing=True,
            seed=sampling.seed if do_sample else None)
        self._manager = self.model.init_continuous_batching(generation_config=generation_config,
                                                            continuous_batching_config=engine_config)
        self._manager.start()
        self._sampling_key = key
        manager = self._manager
        threading.Thread(target=self._dispatch, args=(manager,), daemon=True, name="mumath-cb-dispatch").start()

    def _dispatch(self, manager):
        while manager is self._manager or not manager.output_router.output_queue.empty():
            output = manager.get_result(timeout=0.2)
            if output is not None and output.is_finished():
                self._on_output(output)
            elif output is None and not manager.is_running() and manager is self._manager:
                error = manager.background_thread_status.fatal_error or "the engine stopped"
                with self._lock:
                    pending = list(self._steps)
                for request_id in pending:
                    self._finish(request_id, RuntimeError(f"continuous batching engine died: {error}"))
                return

    def _stop_engine(self):
        manager, self._manager = self._manager, None
        if manager is not None:
            # A hard stop fails what is still in flight (nobody waits for it any more) after the current step.
            manager.stop(block=True, hard_stop=True)
            manager.destroy()

    def close(self):
        with self._lock:
            self._closed = True
            self._stop_engine()


def _eos_ids(model, tokenizer):
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return ids


def _at_exit(function):
    """Run `function` at interpreter exit, before non-daemon threads are joined (the engine's thread is one)."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        import atexit

        atexit.register(function)
    else:
        try:
            register(function)
        except RuntimeError:  # already shutting down
            pass


def complete_with_submit(backend, prompts, sampling, stop=(), on_result=None, progress=False):
    """`complete` for a backend that has `submit`: everything in flight at once, results in order."""
    results = [None] * len(prompts)
    done = threading.Semaphore(0)
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress or len(prompts) < 2, leave=False)
    lock = threading.Lock()

    def receive(index, result):
        results[index] = result
        if on_result is not None and not isinstance(result, BaseException):
            with lock:
                on_result(index, result)
        done.release()

    seen = {}
    for index, prompt in enumerate(prompts):
        text = prompt.cache_text() if hasattr(prompt, "cache_text") else prompt
        seen[text] = seen.get(text, -1) + 1
        backend.submit(prompt, sampling, stop, lambda result, index=index: receive(index, result), index=index,
                       sample_index=seen[text])
    for _ in prompts:
        done.acquire()
        bar.update()
    bar.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


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
                 max_retries=3, progress=True, tokenizer=None):
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries
        self.progress, self.tokenizer = progress, tokenizer
        self.identity = f"{self.name}:{base_url or 'api.openai.com'}:{model}"

    def format_prompt(self, messages):
        if self.tokenizer is None:
            raise ValueError("the openai completions backend formats chat prompts with a tokenizer: set "
                             "parameter 'tokenizer' (or use backend 'openai-chat')")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

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
            return await self._request(self._async_client, prompt, sampling, stop, sampling.seed + index)

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
                completion = await self._request(client, prompt, sampling, stop, sampling.seed + index)
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


BACKENDS = ["transformers", "transformers-cb", "openai", "openai-chat"]


def make_backend(backend="transformers", model="embedded", base_url=None, api_model=None, batch_size=16,
                 max_concurrency=16, api_key_env="OPENAI_API_KEY", dtype="auto", progress=True, tokenizer=None,
                 max_retries=3, kv_cache_tokens=32768):
    """The backend a run's parameters ask for.

    For ``transformers`` (batched `generate`, the default: on CPU it measured faster than continuous
    batching, see README "Numbers") `batch_size` is the `generate` batch; for ``transformers-cb``
    (continuous batching) it caps the requests in one engine step and `kv_cache_tokens` sizes the paged
    KV cache.
    """
    if backend in ("transformers", "transformers-cb"):
        from .models import load_model

        loaded, tokenizer = load_model(model, dtype=dtype)
        if backend == "transformers":
            return TransformersBackend(loaded, tokenizer, batch_size=batch_size, progress=progress)
        return ContinuousBatchingBackend(loaded, tokenizer, max_batch_requests=batch_size,
                                         kv_cache_tokens=kv_cache_tokens, progress=progress)
    if backend in ("openai", "openai-chat"):
        if not base_url and not os.environ.get("OPENAI_BASE_URL") and not os.environ.get(api_key_env):
            raise ValueError(f"backend '{backend}' needs parameter 'base_url' (a server) or the environment "
                             f"variable {api_key_env} (the OpenAI API)")
        if backend == "openai-chat":
            return OpenAIChatBackend(base_url or os.environ.get("OPENAI_BASE_URL"), api_model or model,
                                     api_key_env=api_key_env, max_concurrency=max_concurrency, progress=progress,
                                     max_retries=max_retries)
        from .models import load_tokenizer

        return OpenAIBackend(base_url or os.environ.get("OPENAI_BASE_URL"), api_model or model,
                             api_key_env=api_key_env, max_concurrency=max_concurrency, progress=progress,
                             tokenizer=load_tokenizer(tokenizer or model), max_retries=max_retries)
    raise ValueError(f"parameter 'backend': '{backend}' is not one of {BACKENDS}")
