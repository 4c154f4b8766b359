"""What every generation backend returns, and the helpers the backends and the engine share.

`Completion` is one prompt's result; `cut_at_stop` cuts a text before its first stop string;
`complete_with_submit` turns a backend's `submit` into a list-in, list-out `complete`. They live apart
from `backends` so that the engine (a backend itself, built by `backends.make_backend`) needs nothing of it.
"""
import threading
from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass
class Completion:
    text: str
    finish: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def cut_at_stop(text, stop):
    """Text before the earliest stop string, and whether one was found."""
    cuts = [text.find(marker) for marker in stop if marker and marker in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def eos_token_ids(model, tokenizer):
    """Token ids that end a turn: the generation config's and the tokenizer's end-of-sequence ids."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return ids


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
