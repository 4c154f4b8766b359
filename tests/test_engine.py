"""The generation engine (`mumath/engine.py`) on the embedded model: greedy outputs equal batched `generate`'s
(also for a continuation from a stored prefix and for a request admitted mid-decode), stop strings that
span tokens, reproducible sampling, a bounded prefix store, a clean shutdown."""
import threading
import time

import pytest
import torch

from mumath.backends import Sampling, TransformersBackend
from mumath.engine import Engine, PrefixStore
from mumath.executor import SandboxPool
from mumath.prompts import build_messages
from mumath.tir import OUTPUT_MARKER, reference_tool_loop, run_tool_loop

QUESTIONS = [
    "What is 12 * 7?",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
]


@pytest.fixture(scope="module")
def engine(embedded):
    model, tokenizer = embedded
    backend = Engine(model, tokenizer, max_batch_requests=8, kv_cache_tokens=8192, progress=False)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def naive(embedded):
    return TransformersBackend(*embedded, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def prompts(naive):
    """Two 2-shot TIR prompts (~440 tokens, sharing the examples) and a short chat prompt."""
    chat = naive.format_prompt([{"role": "user", "content": "Name three prime numbers."}])
    return [naive.format_prompt(build_messages(q, "tir", few_shot=2)) for q in QUESTIONS[1:]] + [chat]


def test_greedy_equals_generate_and_a_continuation_reuses_the_prefix(engine, naive, prompts):
    sampling = Sampling(max_new_tokens=40)
    expected = naive.generate_batch(prompts, sampling, [OUTPUT_MARKER])
    assert engine.complete(prompts, sampling, [OUTPUT_MARKER]) == expected
    # After execution the tool loop sends prompt + generation + output: only the new text is prefilled.
    follow = [prompt + completion.text + f"{OUTPUT_MARKER}\n42\n```\n" for prompt, completion in
              zip(prompts[:2], expected)]
    before = dict(engine.stats)
    assert engine.complete(follow, sampling, [OUTPUT_MARKER]) == naive.generate_batch(follow, sampling,
                                                                                         [OUTPUT_MARKER])
    reused = engine.stats["reused_tokens"] - before["reused_tokens"]
    prefilled = engine.stats["prefill_tokens"] - before["prefill_tokens"]
    assert reused > 2 * 440 and prefilled < 2 * 40, (reused, prefilled)


def test_a_request_admitted_while_others_decode(engine, naive, prompts):
    """A request that arrives mid-decode joins the running batch (KV and mask left-padded to merge)."""
    long, short = Sampling(max_new_tokens=48), Sampling(max_new_tokens=24)
    results, done = {}, threading.Semaphore(0)

    def receive(name):
        return lambda result: (results.__setitem__(name, result), done.release())

    steps = engine.stats["decode_steps"]
    engine.submit(prompts[0], long, [OUTPUT_MARKER], receive("first"))
    while engine.stats["decode_steps"] < steps + 8:
        time.sleep(0.01)
    engine.submit(prompts[2], short, [], receive("second"))
    done.acquire()
    done.acquire()
    assert results["first"] == naive.generate_batch(prompts[:1], long, [OUTPUT_MARKER])[0]
    assert results["second"] == naive.generate_batch(prompts[2:], short, [])[0]


def test_stop_strings_spanning_tokens_and_false_stops(embedded, engine, naive):
    """A stop string is found in the decoded text even when it spans tokens, and its last token
    appearing elsewhere does not stop generation ('output' in prose is no marker)."""
    _, tokenizer = embedded
    prompt = naive.format_prompt([{"role": "user", "content": "Explain in two sentences what the output of "
                                                              "a computer program is."}])
    free = Sampling(max_new_tokens=40)
    [plain] = engine.complete([prompt], free, [OUTPUT_MARKER])
    assert "output" in plain.text and plain.finish != "stop"
    assert plain == naive.generate_batch([prompt], free, [OUTPUT_MARKER])[0]
    ids = tokenizer(plain.text, add_special_tokens=False)["input_ids"]
    boundary = len(tokenizer.decode(ids[:12]))  # a stop string straddling the 12th/13th token boundary
    stop = plain.text[boundary - 3:boundary + 3]
    assert len(tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    [cut] = engine.complete([prompt], free, [stop])
    assert cut.finish == "stop" and cut.text == plain.text[:plain.text.find(stop)]
    assert cut == naive.generate_batch([prompt], free, [stop])[0]


def test_sampling_is_reproducible_per_seed_and_index(engine, prompts):
    sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = engine.complete([prompts[2]] * 3, sampling)
    assert engine.complete([prompts[2]] * 3, sampling) == first
    assert len({completion.text for completion in first}) > 1, "the samples of one prompt differ by index"


def test_prefix_store_keeps_longest_prefix_within_budget():
    def kv(n):
        return [(torch.full((1, 1, n, 2), float(n)), torch.zeros(1, 1, n, 2))]

    store = PrefixStore(budget_tokens=10)
    store.put([1, 2, 3], kv(3))
    store.put([1, 2, 3, 4, 5], kv(5))  # holds the first: the first is dropped
    assert list(store.entries) == [(1, 2, 3, 4, 5)]
    assert store.longest_prefix([1, 2, 3, 9]) == ((1, 2, 3, 4, 5), 3)
    assert store.kv((1, 2, 3, 4, 5), 3)[0][0].shape[2] == 3
    store.put([7, 8, 9, 10], kv(4))
    store.put([5, 5], kv(2))  # 11 tokens > 10: the least recently used entry goes
    assert (1, 2, 3, 4, 5) not in store.entries and store.tokens == 6


def test_close_stops_the_thread(embedded):
    model, tokenizer = embedded
    engine = Engine(model, tokenizer, progress=False)
    assert engine.complete(["a"], Sampling(max_new_tokens=2))[0].completion_tokens == 2
    engine.close(timeout=60)
    assert not engine._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit("b", Sampling(max_new_tokens=2), [], lambda result: None)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=5) as sandbox:
        yield sandbox


def test_the_tool_loop_on_the_engine_equals_the_naive_loop(engine, naive, pool):
    """The event-driven loop on the engine gives the naive round-by-round `generate` loop's trajectories,
    token for token, under greedy decoding."""
    prompts = [naive.format_prompt(build_messages(q, "tir", few_shot=2)) for q in QUESTIONS[:2]]
    sampling = Sampling(max_new_tokens=64)
    new = run_tool_loop(engine, prompts, pool, sampling, max_rounds=1)
    old = reference_tool_loop(naive, prompts, pool, sampling, max_rounds=1)
    def comparable(trajectory):  # everything but the sandbox's timings
        row = trajectory.to_dict()
        row["executions"] = [{k: v for k, v in run.items() if k != "seconds"} for run in row["executions"]]
        return row

    assert [comparable(t) for t in new] == [comparable(t) for t in old]
    assert sum(len(t.executions) for t in new) > 0, "the check should cover at least one execution"


def test_buffered_layer_equals_concatenation_and_grows_rarely():
    """The engine's KV buffer returns what DynamicLayer's concatenation returns, without a copy per step."""
    from transformers.cache_utils import DynamicLayer

    from mumath.engine import BufferedLayer

    generator = torch.Generator().manual_seed(0)
    buffered, plain = BufferedLayer(), DynamicLayer()
    buffers = set()
    for columns in [100] + [1] * 300:  # a prefill, then 300 decode steps
        keys, values = (torch.randn(2, 3, columns, 4, generator=generator) for _ in range(2))
        got, expected = buffered.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        buffers.add(buffered._key_buffer.data_ptr())
    assert buffered.get_seq_length() == plain.get_seq_length() == 400
    assert len(buffers) <= 5, f"{len(buffers)} reallocations for 300 one-column steps"
    # The engine's row selection (`_select`): keys first, then values, each read from the layer itself.
    buffered.keys = buffered.keys[[1], :, 7:]
    buffered.values = buffered.values[[1], :, 7:]
    assert torch.equal(buffered.keys, plain.keys[[1], :, 7:]) and torch.equal(buffered.values, plain.values[[1], :, 7:])
    assert buffered.get_seq_length() == 393
    step = torch.ones(1, 3, 1, 4)
    assert torch.equal(buffered.update(step, step)[0][:, :, -1:], step)
