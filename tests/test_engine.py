"""The continuous batching backend on the embedded model: same greedy outputs as the naive loop, stop
tokens checked on the host (false stops resumed), one persistent engine."""
import pytest

from mumath.backends import ContinuousBatchingBackend, Sampling, TransformersBackend, stop_token_ids
from mumath.executor import SandboxPool
from mumath.prompts import build_messages
from mumath.tir import OUTPUT_MARKER, reference_tool_loop, run_tool_loop

QUESTIONS = [
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "What is 12 * 7?",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
]


@pytest.fixture(scope="module")
def engine(embedded):
    model, tokenizer = embedded
    backend = ContinuousBatchingBackend(model, tokenizer, max_batch_requests=8, kv_cache_tokens=8192,
                                        progress=False)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=5) as sandbox:
        yield sandbox


def test_stop_tokens_end_the_marker(embedded):
    _, tokenizer = embedded
    ids = stop_token_ids(tokenizer, [OUTPUT_MARKER])
    for text in ["```python\nprint(1)\n```\n```output", "x = 2\n```\n```output"]:
        assert tokenizer(text, add_special_tokens=False)["input_ids"][-1] in ids
    assert not ids & set(tokenizer.all_special_ids)
    assert stop_token_ids(tokenizer, []) == frozenset()


@pytest.mark.slow
def test_greedy_outputs_equal_the_naive_loop(embedded, engine, pool):
    """The event-driven loop on continuous batching gives the naive round-by-round `generate` loop's
    trajectories, token for token, under greedy decoding."""
    model, tokenizer = embedded
    naive = TransformersBackend(model, tokenizer, batch_size=len(QUESTIONS), progress=False)
    prompts = [naive.format_prompt(build_messages(q, "tir", few_shot=2)) for q in QUESTIONS]
    sampling = Sampling(max_new_tokens=80)
    new = run_tool_loop(engine, prompts, pool, sampling, max_rounds=1)
    old = reference_tool_loop(naive, prompts, pool, sampling, max_rounds=1)
    assert [t.generation for t in new] == [t.generation for t in old]
    assert [(t.finish, t.rounds, len(t.executions)) for t in new] == \
           [(t.finish, t.rounds, len(t.executions)) for t in old]
    assert sum(len(t.executions) for t in new) > 0, "the check should cover at least one execution"


def test_a_false_stop_is_resumed(embedded, engine):
    """A stop token that does not end the stop string (here "output" in prose) halts the engine; the host
    sees no stop string and resumes, so the text is what `generate` with the stop string gives."""
    model, tokenizer = embedded
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain in two sentences what the output of a computer program is."}],
        tokenize=False, add_generation_prompt=True)
    sampling = Sampling(max_new_tokens=48)
    before = engine.false_stops
    [completion] = engine.complete([prompt], sampling, stop=[OUTPUT_MARKER])
    [expected] = TransformersBackend(model, tokenizer, progress=False).generate_batch([prompt], sampling,
                                                                                      [OUTPUT_MARKER])
    assert completion.text == expected.text and completion.finish == expected.finish
    assert completion.completion_tokens == expected.completion_tokens
    assert engine.false_stops > before, "the prompt should make the model write 'output' in prose"


def test_stop_string_cut_and_finish(engine):
    [completion] = engine.complete(["Count: one, two, three,"], Sampling(max_new_tokens=12), stop=[","])
    assert "," not in completion.text and completion.finish in ("stop", "length", "eos")
    [length] = engine.complete(["Once upon a time"], Sampling(max_new_tokens=3))
    assert length.finish == "length" and length.completion_tokens == 3


def test_one_persistent_engine(engine):
    engine.complete(["a"], Sampling(max_new_tokens=2))
    first = engine._manager
    engine.complete(["b", "c"], Sampling(max_new_tokens=2))
    assert engine._manager is first, "the engine lives across calls"
    engine.complete(["d"], Sampling(max_new_tokens=2, temperature=0.7))
    assert engine._manager is not first, "another sampling setting restarts it"
