"""The server backends against a server that batches: `transformers serve --continuous-batching` on loopback.

Checks correctness under concurrency and that concurrent requests really are served together (their
token streams interleave), without any timing assertion.
"""
import asyncio

import pytest

from mumath.backends import OpenAIBackend, Sampling, run_coroutine
from mumath.executor import SandboxPool
from mumath.models import load_tokenizer
from mumath.prompts import build_messages
from mumath.tir import run_tool_loop

pytestmark = pytest.mark.server

PROMPTS = [f"Once upon a time, {n} dragons lived in a cave. One day" for n in range(2, 10)]


def model_name(server):
    return server.model_dir  # the server is pinned to this folder and accepts only its name


@pytest.mark.slow
def test_concurrent_answers_equal_one_at_a_time(batching_server):
    """Greedy answers do not depend on how many requests share the engine."""
    sampling = Sampling(max_new_tokens=8)
    one = OpenAIBackend(batching_server.base_url, model_name(batching_server), max_concurrency=1, progress=False)
    many = OpenAIBackend(batching_server.base_url, model_name(batching_server), max_concurrency=8, progress=False)
    alone = one.complete(PROMPTS[:4], sampling)
    together = many.complete(PROMPTS[:4], sampling)
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.completion_tokens > 0 and c.finish in ("eos", "length") for c in together)


def test_concurrent_requests_are_served_together(batching_server):
    """Stream four requests at once: a server that batches interleaves their tokens; one that serves a
    request at a time (llama-cpp-python's) sends each stream whole before the next starts."""
    from openai import AsyncOpenAI

    async def stream_all():
        client = AsyncOpenAI(base_url=batching_server.base_url, api_key="EMPTY")
        arrivals = []

        async def one(index):
            stream = await client.completions.create(model=model_name(batching_server), prompt=PROMPTS[index],
                                                     max_tokens=16, temperature=0.0, stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    arrivals.append(index)

        try:
            await asyncio.gather(*(one(index) for index in range(4)))
        finally:
            await client.close()
        return arrivals

    arrivals = run_coroutine(stream_all())
    first = {index: arrivals.index(index) for index in set(arrivals)}
    last = {index: len(arrivals) - 1 - arrivals[::-1].index(index) for index in set(arrivals)}
    assert len(first) == 4, "every request streamed text"
    overlapping = [(a, b) for a in first for b in first if a != b and first[a] < first[b] < last[a]]
    assert overlapping, f"no two streams interleaved: {arrivals}"


@pytest.mark.slow
def test_tool_loop_event_driven_through_the_server(batching_server):
    """Trajectories go through the server one request per step, up to max_concurrency in flight; the
    server has no stop strings, so the client cuts at the output marker."""
    tokenizer = load_tokenizer("embedded")
    backend = OpenAIBackend(batching_server.base_url, model_name(batching_server), max_concurrency=4,
                            progress=False, tokenizer=tokenizer)
    questions = ["What is 12 * 7?", "Tom has 3 apples and buys 5 more. How many apples does he have?"]
    prompts = [backend.format_prompt(build_messages(q, "tir", few_shot=2)) for q in questions]
    finished = []
    with SandboxPool(workers=2, timeout=5) as pool:
        trajectories = run_tool_loop(backend, prompts, pool, Sampling(max_new_tokens=96), max_rounds=2,
                                     on_finish=lambda index, t: finished.append(index))
    assert sorted(finished) == [0, 1]
    for t in trajectories:
        assert t.rounds >= 1 and t.completion_tokens > 0 and t.finish
        assert t.generation.count("```output") == len(t.executions)
        for execution in t.executions:
            assert f"```output\n{execution['output']}\n```" in t.generation
