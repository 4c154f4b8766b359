"""The teacher: disk cache (re-runs pay nothing), accounting, and real-server behaviour incl. a crash."""
import json
import threading
import time

import pytest

from mumath.augment import augment
from mumath.backends import OpenAIBackend, OpenAIChatBackend, Sampling
from mumath.executor import SandboxPool
from mumath.models import load_tokenizer
from mumath.teacher import Teacher
from mumath.tir import run_tool_loop
from tests.conftest import LlamaServer, free_port
from tests.test_tir import ScriptedBackend


class CountingBackend(ScriptedBackend):
    identity = "scripted:test"

    def __init__(self):
        super().__init__({})
        self.prompts = []

    def complete(self, prompts, sampling, stop=(), on_result=None):
        from mumath.backends import Completion

        self.prompts += list(prompts)
        out = []
        for index, prompt in enumerate(prompts):
            out.append(Completion(f"reply {len(self.prompts) - len(prompts) + index}", "eos", 7, 3))
            if on_result:
                on_result(index, out[-1])
        return out


def test_rerun_makes_zero_calls(tmp_path):
    backend = CountingBackend()
    teacher = Teacher(backend, tmp_path / "cache.jsonl", price_per_1m_prompt=1.0, price_per_1m_completion=2.0)
    first = teacher.complete(["a", "b", "a"], Sampling(temperature=0.7))
    assert [c.text for c in first] == ["reply 0", "reply 1", "reply 2"], "two samples of 'a' are two requests"
    assert teacher.usage.requests == 3 and teacher.usage.prompt_tokens == 21
    assert teacher.usage.cost == pytest.approx((21 * 1.0 + 9 * 2.0) / 1e6)
    teacher.close()

    again = Teacher(CountingBackend(), tmp_path / "cache.jsonl")
    second = again.complete(["a", "b", "a"], Sampling(temperature=0.7))
    assert [c.text for c in second] == [c.text for c in first]
    assert again.usage.requests == 0 and again.usage.cache_hits == 3 and again.backend.prompts == []


def test_key_covers_sampling_and_stop(tmp_path):
    teacher = Teacher(CountingBackend(), tmp_path / "cache.jsonl")
    teacher.complete(["a"], Sampling(temperature=0.7))
    teacher.complete(["a"], Sampling(temperature=0.8))
    teacher.complete(["a"], Sampling(temperature=0.7), stop=["x"])
    teacher.complete(["a"], Sampling(temperature=0.7, max_new_tokens=5))
    assert teacher.usage.requests == 4 and teacher.usage.cache_hits == 0


def test_torn_cache_line_is_ignored(tmp_path):
    path = tmp_path / "cache.jsonl"
    teacher = Teacher(CountingBackend(), path)
    teacher.complete(["a", "b"], Sampling())
    teacher.close()
    with open(path, "a") as handle:
        handle.write('{"key": "abc", "completion": {"te')  # killed mid-write
    again = Teacher(CountingBackend(), path)
    again.complete(["a", "b", "c"], Sampling())
    assert again.usage.cache_hits == 2 and again.usage.requests == 1
    again.close()
    lines = path.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith('{"key"') and line.endswith("}}")) == 3


@pytest.mark.server
def test_server_teacher_rerun_is_free(llama_server, tmp_path):
    backend = OpenAIBackend(llama_server.base_url, "embedded", max_concurrency=4, progress=False)
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(4)]
    first = Teacher(backend, tmp_path / "c.jsonl").complete(prompts, Sampling(max_new_tokens=8))
    teacher = Teacher(backend, tmp_path / "c.jsonl")
    assert [c.text for c in teacher.complete(prompts, Sampling(max_new_tokens=8))] == [c.text for c in first]
    assert teacher.usage.requests == 0


def chat_code_examples(question):
    """Solved turns the 135M model copies (greedy): it answers with a code block and the output marker."""
    messages = []
    for a, b in [(2, 3), (4, 5), (6, 7)]:
        messages += [{"role": "user", "content": f"Compute {a} * {b} with Python."},
                     {"role": "assistant", "content": f"```python\nprint({a} * {b})\n```\n```output\n{a * b}\n```\n"
                                                      f"The answer is {a * b}."}]
    return messages + [{"role": "user", "content": question}]


@pytest.mark.server
def test_chat_backend_drives_the_tool_loop(llama_server):
    backend = OpenAIChatBackend(llama_server.base_url, "embedded", progress=False)
    prompt = backend.format_prompt(chat_code_examples("Compute 8 * 9 with Python."))
    with SandboxPool(workers=1, timeout=5) as pool:
        [t] = run_tool_loop(backend, [prompt], pool, Sampling(max_new_tokens=64), max_rounds=1)
    assert t.completion_tokens > 0 and len(t.executions) == 1 and t.rounds == 2
    assert t.executions[0]["output"] == "72" and "```output\n72\n```" in t.generation


def test_chat_backend_continues_the_partial_reply_in_place():
    """`continue_final_message`: the partial reply goes back as the last assistant message, and vLLM /
    SGLang are asked to continue it rather than to start a new turn."""
    import asyncio
    from types import SimpleNamespace

    sent = []

    async def create(**kwargs):
        sent.append(kwargs)
        message = SimpleNamespace(content=" 42.")
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")],
                               usage=SimpleNamespace(prompt_tokens=3, completion_tokens=2))

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    question = [{"role": "user", "content": "What is 6*7?"}]
    for flag in (True, False):
        backend = OpenAIChatBackend("http://127.0.0.1:1/v1", "m", continue_final_message=flag, progress=False)
        partial = backend.format_prompt(question) + "It is"
        completion = asyncio.run(backend._request(client, partial, Sampling(), [], 0))
        assert completion.text == " 42." and completion.completion_tokens == 2
        assert sent[-1]["messages"][-1] == {"role": "assistant", "content": "It is"}
        assert sent[-1].get("extra_body") == ({"continue_final_message": True, "add_generation_prompt": False}
                                              if flag else None)
    asyncio.run(backend._request(client, backend.format_prompt(question), Sampling(), [], 0))
    assert sent[-1]["messages"] == question and "extra_body" not in sent[-1], "nothing to continue: a new turn"


@pytest.mark.server
def test_server_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    from mumath.models import embedded_gguf_path

    server = LlamaServer(embedded_gguf_path(), free_port()).start()
    seeds = [{"id": f"s{i}", "question": f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?",
              "answer": str(2 * i + 5)} for i in range(10)]
    cache = tmp_path / "teacher.jsonl"
    sampling = Sampling(max_new_tokens=40, temperature=0.7)
    outcome = {}

    def first_run():
        # generous timeouts: on a loaded machine the CPU server can take minutes per request, and a timed-out
        # request would end the first run before any response is cached
        backend = OpenAIBackend(server.base_url, "embedded", max_concurrency=2, max_retries=0, timeout=300,
                                progress=False, tokenizer=load_tokenizer("embedded"))
        try:
            outcome["records"] = augment(seeds, Teacher(backend, cache), {"rephrase": 1}, sampling)
        except Exception as error:
            outcome["error"] = error

    try:
        thread = threading.Thread(target=first_run)
        thread.start()
        deadline = time.time() + 900
        while time.time() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 3):
            time.sleep(0.05)
        server.stop()  # the crash
        thread.join(60)
        assert "error" in outcome, "the run must notice the dead server"
        finished = len([line for line in cache.read_text().splitlines() if line.strip()])
        assert 3 <= finished < 10

        server.start()  # same port
        backend = OpenAIBackend(server.base_url, "embedded", max_concurrency=2, progress=False,
                                tokenizer=load_tokenizer("embedded"))
        teacher = Teacher(backend, cache)
        records, rejected = augment(seeds, teacher, {"rephrase": 1}, sampling)
    finally:
        server.stop()
    assert teacher.usage.cache_hits == finished and teacher.usage.requests == 10 - finished
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines() if line.strip()]
    assert len(keys) == len(set(keys)) == 10, "every request answered once, none twice"
    assert len(records) + len(rejected) == 10
    assert len({r["id"] for r in records}) == len(records)
