"""The OpenAI-compatible backend against a real llama.cpp server on loopback (no HTTP mock)."""
import json

import pytest

from mumath.backends import OpenAIBackend, Sampling
from mumath.executor import SandboxPool
from mumath.models import load_tokenizer
from mumath.params import resolve
from mumath.prompts import build_messages
from mumath.steps import run_evaluate
from mumath.tir import run_tool_loop

pytestmark = pytest.mark.server


def test_completions_with_stop_and_usage(llama_server):
    backend = OpenAIBackend(llama_server.base_url, "embedded", max_concurrency=4, progress=False)
    prompts = ["Count: one, two, three,", "The capital of France is"]
    counted, capital = backend.complete(prompts, Sampling(max_new_tokens=16), stop=[","])
    assert "," not in counted.text and counted.finish != "length" and 0 < counted.completion_tokens < 16
    assert "," not in capital.text and capital.finish == "length" and capital.completion_tokens == 16


def test_length_finish(llama_server):
    backend = OpenAIBackend(llama_server.base_url, "embedded", progress=False)
    [completion] = backend.complete(["Once upon a time, there was a dragon who"], Sampling(max_new_tokens=4))
    assert completion.finish == "length" and completion.completion_tokens == 4


def test_many_requests_in_flight(llama_server):
    backend = OpenAIBackend(llama_server.base_url, "embedded", max_concurrency=8, progress=False)
    completions = backend.complete([f"Once upon a time, {i} dragons" for i in range(8)], Sampling(max_new_tokens=4))
    assert len(completions) == 8 and all(c.completion_tokens > 0 for c in completions)


# A raw prompt the 135M model continues with a code block and the output marker (greedy, seed 0), so the
# loop's stop, execute and append path is exercised for sure, not only when the model happens to write code.
CODE_PATTERN = "".join(f"```python\nprint({a} * {b})\n```\n```output\n{a * b}\n```\n\n" for a, b in [(2, 3), (4, 5), (6, 7)])


def test_tool_loop_through_the_server(llama_server):
    backend = OpenAIBackend(llama_server.base_url, "embedded", progress=False)
    with SandboxPool(workers=1, timeout=5) as pool:
        [t] = run_tool_loop(backend, [CODE_PATTERN], pool, Sampling(max_new_tokens=48), max_rounds=1)
        assert len(t.executions) == 1 and t.rounds == 2 and t.completion_tokens > 0
        [execution] = t.executions
        assert f"```output\n{execution['output']}\n```" in t.generation and not execution["error"]
        assert pool.execute(execution["code"]).as_output() == execution["output"]


def test_evaluation_with_the_openai_backend(llama_server, data_dir, tmp_path):
    config = resolve("evaluate", overrides={
        "run_dir": str(tmp_path), "model": "embedded", "backend": "openai", "base_url": llama_server.base_url,
        "data_dir": str(data_dir), "sandbox": {"workers": 1}, "evaluation": {
            "benchmarks": ["gsm8k"], "limit": 2, "modes": ["tir"], "few_shot": 2, "max_rounds": 1,
            "generation": {"max_new_tokens": 64}}}, runner_fields_ok=True)
    results = run_evaluate(config, progress=False)
    assert results[0]["n"] == 2 and results[0]["completion_tokens"] > 0
    rows = [json.loads(line) for line in open(tmp_path / "evaluate" / "gsm8k" / "tir" / "trajectories.jsonl")]
    assert len(rows) == 2 and all("generation" in row for row in rows)


def test_openai_backend_needs_a_server_or_key(monkeypatch):
    from mumath.backends import make_backend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="base_url"):
        make_backend("openai", "gpt-4o-mini")
